"""A Keras reference with two outputs (a shared trunk, a softmax classification head and a linear regression
head), compiled the way people compile them, and torch ports of it written the way people write them: correct
ones (a tuple, a dict) and ones with the bugs multi-output ports have."""
from __future__ import annotations

CLASSES = 3
"""Width of the classification head (softmax)."""
BOXES = 2
"""Width of the regression head (linear)."""
LOSS_WEIGHTS = {"cls": 1.0, "reg": 0.5}
"""``model.compile(loss_weights=...)``: Keras' total loss is ``1.0 * ce + 0.5 * mse``."""
LR = 0.05
MOMENTUM = 0.9


def _keras(dict_outputs: bool = False, boxes: int = BOXES):
    import keras

    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="trunk")(inp)
    cls = keras.layers.Dense(CLASSES, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(boxes, name="reg")(h)
    outputs = {"cls": cls, "reg": reg} if dict_outputs else [cls, reg]
    return keras.Model(inp, outputs, name="two_heads")


def keras_two_heads():
    """Compiled with a loss per output and loss_weights (keyed by the output layers' names)."""
    import keras

    m = _keras()
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
              loss={"cls": "categorical_crossentropy", "reg": "mse"}, loss_weights=LOSS_WEIGHTS)
    return m


def keras_two_heads_list():
    """Compiled with lists (in the model's output order)."""
    import keras

    m = _keras()
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
              loss=["categorical_crossentropy", "mse"], loss_weights=[LOSS_WEIGHTS["cls"], LOSS_WEIGHTS["reg"]])
    return m


def keras_two_heads_dict_outputs():
    import keras

    m = _keras(dict_outputs=True)
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
              loss={"cls": "categorical_crossentropy", "reg": "mse"}, loss_weights=LOSS_WEIGHTS)
    return m


def keras_two_heads_uncompiled():
    return _keras()


def keras_equal_heads():
    """Both outputs of width 3 (classes and three regression values): an order mistake keeps the shapes."""
    import keras

    m = _keras(boxes=CLASSES)
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
              loss={"cls": "categorical_crossentropy", "reg": "mse"}, loss_weights=LOSS_WEIGHTS)
    return m


def _torch(order=("cls", "reg"), as_dict=False, softmax_cls=False, boxes=BOXES):
    import torch.nn as nn

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(6, 8)
            self.cls = nn.Linear(8, CLASSES)
            self.reg = nn.Linear(8, boxes)

        def forward(self, x):
            h = self.trunk(x).relu()
            out = {"cls": self.cls(h), "reg": self.reg(h)}
            if softmax_cls:
                out["cls"] = out["cls"].softmax(dim=1)
            return out if as_dict else tuple(out[k] for k in order)

    return TwoHeads()


def port():
    """Correct: returns (class logits, regression values), the Keras model's output order."""
    return _torch()


def port_dict():
    """Correct: returns a dict keyed by the Keras output names."""
    return _torch(as_dict=True)


def port_wrong_order():
    """Returns (regression, class logits): the reverse of the Keras model's order."""
    return _torch(order=("reg", "cls"))


def port_equal_heads():
    return _torch(boxes=CLASSES)


def port_equal_heads_wrong_order():
    """Returns (regression, class logits) where both are of width 3."""
    return _torch(order=("reg", "cls"), boxes=CLASSES)


def port_softmax_head():
    """Applies softmax to the classification head before CrossEntropyLoss (a double softmax on one head)."""
    return _torch(softmax_cls=True)


# -- the user's training step ---------------------------------------------------------------------------------------
def sgd_ok(model):
    import torch

    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def loss_ok(outputs, targets):
    """(outputs, targets) as tuples in the Keras output order: class indices for the softmax head."""
    import torch.nn.functional as F

    (cls, reg), (labels, values) = outputs, targets
    return LOSS_WEIGHTS["cls"] * F.cross_entropy(cls, labels) + LOSS_WEIGHTS["reg"] * F.mse_loss(reg, values)


def loss_unweighted(outputs, targets):
    """The loss_weights of model.compile ignored: the heads summed with weight 1."""
    import torch.nn.functional as F

    (cls, reg), (labels, values) = outputs, targets
    return F.cross_entropy(cls, labels) + F.mse_loss(reg, values)
