"""A user's own models, unknown to parity: Keras references and hand-written torch ports with their own
attribute names, for the user-model mode (``parity check --reference benchmarks.user_models:keras_cnn --port
benchmarks.user_models:torch_cnn``) and for ``parity.compare``. Variants add an extra layer on one side or plant
a bug."""
from __future__ import annotations

from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS

NUM_CLASSES = 5
INPUT_SHAPE = (16, 16, 3)


def keras_cnn(input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, extra_linear=False):
    """conv-bn-relu, a stride-2 'same' conv (asymmetric TF padding on 16x16), a 1x1 shortcut from the input,
    add, max-pool, flatten, two Dense, softmax."""
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    if extra_linear:
        x = layers.Activation("linear", name="noop")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="conv2")(x)
    x = layers.Activation("relu", name="relu2")(x)
    r = layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="shortcut")(inp)
    x = layers.Add(name="add")([x, r])
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, name="fc1")(x)
    x = layers.Activation("relu", name="fc1_relu")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    out = layers.Activation("softmax", name="probs")(x)
    return keras.Model(inp, out, name="user_cnn")


def keras_cnn_extra_linear(**kw):
    """The reference with an extra ``Activation('linear')`` the port does not have."""
    return keras_cnn(extra_linear=True, **kw)


def _torch_cnn_class():
    from torch import nn

    from ported_torch.layers import Add, Conv2dSame

    class TorchCNN(nn.Module):
        """The port, with its own names: ``features`` (Sequential), ``down``, ``skip``, ``merge``, ``hidden``,
        ``classifier``. Returns logits (softmax belongs to the loss)."""

        def __init__(self, num_classes=NUM_CLASSES, in_channels=3, *, extra_identity=False, extra_dropout=0.0,
                     symmetric_pad=False):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),  # 3x3/1: padding 1 == TF 'same'
                nn.BatchNorm2d(8, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS),
                nn.ReLU(),
            )
            self.extra = nn.Identity() if extra_identity else None
            # 3x3/2 on 16x16: TF 'same' pads (0, 1); padding=1 pads (1, 1) (the planted bug)
            self.down = (nn.Conv2d(8, 16, 3, stride=2, padding=1) if symmetric_pad
                         else Conv2dSame(8, 16, 3, stride=2))
            self.down_act = nn.ReLU()
            self.skip = Conv2dSame(in_channels, 16, 1, stride=2, bias=False)
            self.merge = Add()
            self.pool = nn.MaxPool2d(2)
            self.flat = nn.Flatten()
            self.drop = nn.Dropout(extra_dropout) if extra_dropout else None
            self.hidden = nn.Linear(16 * 4 * 4, 32)
            self.hidden_act = nn.ReLU()
            self.classifier = nn.Linear(32, num_classes)

        def forward(self, x):
            y = self.features(x)
            if self.extra is not None:
                y = self.extra(y)
            y = self.down_act(self.down(y))
            y = self.merge(y, self.skip(x))
            y = self.flat(self.pool(y))
            if self.drop is not None:
                y = self.drop(y)
            y = self.hidden_act(self.hidden(y))
            return self.classifier(y)

    return TorchCNN


def torch_cnn(**kw):
    return _torch_cnn_class()(**kw)


def torch_cnn_extra_identity(**kw):
    """An extra ``nn.Identity`` the reference does not have (harmless)."""
    return _torch_cnn_class()(extra_identity=True, **kw)


def torch_cnn_extra_dropout(**kw):
    """An extra ``nn.Dropout(0.25)`` the reference does not have: identity in eval, random in training."""
    return _torch_cnn_class()(extra_dropout=0.25, **kw)


def torch_cnn_symmetric_pad(**kw):
    return _torch_cnn_class()(symmetric_pad=True, **kw)


# --- a Sequential pair with automatic layer names and no softmax (regression: MSE) ----------------------------
SEQ_INPUT = (12, 12, 1)
SEQ_OUTPUTS = 6


def keras_sequential():
    import keras
    from keras import layers

    return keras.Sequential([
        # no conv bias before the BatchNorm: its gradient is 0 +- rounding (see test_user_pair's xfail)
        keras.Input(SEQ_INPUT), layers.Conv2D(4, 3, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(SEQ_OUTPUTS),
    ])


def torch_sequential():
    from torch import nn


    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 5, SEQ_OUTPUTS),
    )
