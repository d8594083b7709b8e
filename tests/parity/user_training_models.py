"""Small Keras references compiled the way people compile them, a torch port written the way people write it,
and torch optimizer / loss factories: correct ones and ones with the training-configuration bugs ports have."""
from __future__ import annotations

L2_CONV = 0.01
"""keras.regularizers.l2(0.01) on the conv kernel (the mini_XCEPTION choice, oarriaga/face_classification)."""
L2_DENSE = 0.005
"""keras.regularizers.l2(0.005) on the dense kernel."""
LR = 0.05
MOMENTUM = 0.9
ADAM_LR = 1e-3
KERAS3_ADAM_EPS = 1e-7
CLIPNORM = 1e-3
"""Small enough that every gradient of the test models is clipped."""
ADAMW_DECAY = 0.004
"""keras.optimizers.AdamW's default weight_decay."""


def _body(softmax: bool = True, l2: bool = True):
    import keras

    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, kernel_regularizer=keras.regularizers.l2(L2_CONV) if l2 else None,
                            name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(3, kernel_regularizer=keras.regularizers.l2(L2_DENSE) if l2 else None,
                           name="fc")(x)
    out = keras.layers.Softmax(name="softmax")(x) if softmax else x
    return keras.Model(inp, out, name="small_cnn")


def keras_sgd():
    import keras

    m = _body()
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True), loss="categorical_crossentropy")
    return m


def keras_adam():
    import keras

    m = _body()
    m.compile(optimizer=keras.optimizers.Adam(ADAM_LR, epsilon=KERAS3_ADAM_EPS),
              loss=keras.losses.CategoricalCrossentropy())
    return m


def keras_sgd_logits_as_probabilities():
    import keras

    m = _body(softmax=False)  # ends in logits, compiled with from_logits=False (the default)
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True),
              loss=keras.losses.CategoricalCrossentropy())
    return m


def keras_adamw():
    import keras

    m = _body()
    m.compile(optimizer=keras.optimizers.AdamW(ADAM_LR, weight_decay=ADAMW_DECAY, epsilon=KERAS3_ADAM_EPS),
              loss="categorical_crossentropy")
    return m


def keras_adamw_no_l2():
    import keras

    m = _body(l2=False)
    m.compile(optimizer=keras.optimizers.AdamW(ADAM_LR, weight_decay=ADAMW_DECAY, epsilon=KERAS3_ADAM_EPS),
              loss="categorical_crossentropy")
    return m


def keras_sgd_clipnorm():
    import keras

    m = _body()
    m.compile(optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True, clipnorm=CLIPNORM),
              loss="categorical_crossentropy")
    return m


def keras_uncompiled():
    return _body()


def port():
    import torch.nn as nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3)
            self.bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.01)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.bn(self.conv(x)).relu()
            return self.fc(x.mean(dim=(2, 3)))

    return SmallCNN()


def _groups(model, conv_wd, fc_wd, rest_wd=0.0):
    rest = [p for n, p in model.named_parameters() if n not in ("conv.weight", "fc.weight")]
    return [{"params": [model.conv.weight], "weight_decay": conv_wd},
            {"params": [model.fc.weight], "weight_decay": fc_wd},
            {"params": rest, "weight_decay": rest_wd}]


# -- SGD ---------------------------------------------------------------------------------------------------------
def sgd_ok(model):
    import torch

    return torch.optim.SGD(_groups(model, 2 * L2_CONV, 2 * L2_DENSE), lr=LR, momentum=MOMENTUM, nesterov=True)


def sgd_ok_with_scheduler(model):
    import torch

    opt = sgd_ok(model)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def sgd_no_weight_decay(model):
    import torch

    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)


def sgd_lambda_not_2lambda(model):
    import torch

    return torch.optim.SGD(_groups(model, L2_CONV, L2_DENSE), lr=LR, momentum=MOMENTUM, nesterov=True)


def sgd_decay_everywhere(model):
    import torch

    return torch.optim.SGD(_groups(model, 2 * L2_CONV, 2 * L2_DENSE, rest_wd=2 * L2_CONV), lr=LR,
                           momentum=MOMENTUM, nesterov=True)


def sgd_lr(model):
    import torch

    return torch.optim.SGD(_groups(model, 2 * L2_CONV, 2 * L2_DENSE), lr=0.01, momentum=MOMENTUM, nesterov=True)


def sgd_momentum(model):
    import torch

    return torch.optim.SGD(_groups(model, 2 * L2_CONV, 2 * L2_DENSE), lr=LR, momentum=0.8, nesterov=True)


def sgd_no_nesterov(model):
    import torch

    return torch.optim.SGD(_groups(model, 2 * L2_CONV, 2 * L2_DENSE), lr=LR, momentum=MOMENTUM)


def sgd_decay_on_batchnorm(model):
    import torch

    bn = [model.bn.weight, model.bn.bias]
    rest = [model.conv.bias, model.fc.bias]
    return torch.optim.SGD([{"params": [model.conv.weight], "weight_decay": 2 * L2_CONV},
                            {"params": [model.fc.weight], "weight_decay": 2 * L2_DENSE},
                            {"params": bn, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}],
                           lr=LR, momentum=MOMENTUM, nesterov=True)


def sgd_fc_lr(model):
    """A smaller learning rate on the classifier only (a fine-tuning habit the reference does not have)."""
    import torch

    groups = _groups(model, 2 * L2_CONV, 2 * L2_DENSE)
    groups[1]["lr"] = LR / 10
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, nesterov=True)


def sgd_without_batchnorm(model):
    import torch

    groups = _groups(model, 2 * L2_CONV, 2 * L2_DENSE)
    groups[2]["params"] = [model.conv.bias, model.fc.bias]
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, nesterov=True)


def sgd_raises(model):
    raise RuntimeError("no optimizer today")


# -- Adam --------------------------------------------------------------------------------------------------------
def adam_ok(model):
    import torch

    return torch.optim.Adam(_groups(model, 2 * L2_CONV, 2 * L2_DENSE), lr=ADAM_LR, eps=KERAS3_ADAM_EPS)


def adam_torch_eps(model):
    import torch

    return torch.optim.Adam(_groups(model, 2 * L2_CONV, 2 * L2_DENSE), lr=ADAM_LR)  # torch's default eps 1e-8


def adamw_ok(model):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=ADAM_LR, eps=KERAS3_ADAM_EPS, weight_decay=ADAMW_DECAY)


def adam_coupled_decay(model):
    import torch

    return torch.optim.Adam(model.parameters(), lr=ADAM_LR, eps=KERAS3_ADAM_EPS, weight_decay=ADAMW_DECAY)


# -- losses ------------------------------------------------------------------------------------------------------
def ce_ok():
    import torch.nn as nn

    return nn.CrossEntropyLoss()


def ce_on_probabilities(out, target):
    import torch.nn.functional as F

    return F.cross_entropy(out.softmax(dim=1), target)


def ce_sum():
    import torch.nn as nn

    return nn.CrossEntropyLoss(reduction="sum")


def ce_label_smoothing():
    import torch.nn as nn

    return nn.CrossEntropyLoss(label_smoothing=0.1)


def loss_raises(out, target):
    raise ValueError("shapes do not match")


def loss_per_sample(out, target):
    import torch.nn.functional as F

    return F.cross_entropy(out, target, reduction="none")
