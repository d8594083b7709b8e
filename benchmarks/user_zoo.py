"""A zoo of ports written the way people write them, against a few Keras references: the user-model mode must
align them by what they compute, not by what they are called.

References (Keras 3, built in the current float policy):

- ``keras_mini_xception``: an image model with SeparableConv2D residual blocks (mini_XCEPTION's shape, small);
- ``keras_conv_head``: ``Conv2D(activation="relu")``, ``ZeroPadding2D`` + a 'valid' Conv2D, Flatten, Dense;
- ``keras_two_input``: two images (target, search), one conv tower each, concatenated, a regression head;
- ``keras_mlp``: a non-image model (20 features -> Dense -> softmax).

Ports, each correct (every one must PASS), in the styles found in public PyTorch ports: named children with
any names (``dw``/``pw``, ``depthwise_conv``/``conv1x1``), ``nn.Sequential`` (nested), ``nn.ModuleDict`` /
``nn.ModuleList``, functional ``F.*`` calls in ``forward`` with the layers' modules defined in ``__init__``,
in-place activations (``nn.ReLU(inplace=True)`` inside a ``conv_bn_relu`` helper). :data:`ZOO` lists
(reference, port, input shapes) for the tests and the mutation suite.

Numbers in the ports are the Keras defaults they must reproduce, by name (``parity.core.conventions``).
"""
from __future__ import annotations

import time

from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS
from parity.core.spec import resolve
from parity.pairs import registry
from parity.user.align import align

#: mini_XCEPTION-shaped reference: a 27x27 grey image, 4 classes. 27 -> two 'valid' 3x3 convs -> 23 (odd:
#: a 3x3/2 'same' max-pool pads 1 on each side, as torch's padding=1 does) -> 12.
XCEPTION_INPUT = (27, 27, 1)
XCEPTION_CLASSES = 4
CONV_HEAD_INPUT = (10, 10, 3)
CONV_HEAD_OUTPUTS = 5
#: odd sizes: a 3x3/2 'same' conv then pads 1 on each side, as torch's padding=1 does (on 12x12 TF pads (0, 1))
TWO_INPUT_SHAPE = (13, 13, 3)
TWO_INPUT_OUTPUTS = 4
MLP_FEATURES = 20
MLP_CLASSES = 3


# --- references ------------------------------------------------------------------------------------------
def keras_mini_xception(input_shape=XCEPTION_INPUT, num_classes=XCEPTION_CLASSES):
    import keras
    from keras import layers

    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, use_bias=False, name="conv1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    x = layers.Conv2D(8, 3, use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.Activation("relu", name="relu2")(x)
    res = layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="res_conv")(x)
    res = layers.BatchNormalization(name="res_bn")(res)
    x = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep1")(x)
    x = layers.BatchNormalization(name="sep1_bn")(x)
    x = layers.Activation("relu", name="sep1_relu")(x)
    x = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep2")(x)
    x = layers.BatchNormalization(name="sep2_bn")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool")(x)
    x = layers.Add(name="add")([x, res])
    x = layers.Conv2D(num_classes, 3, padding="same", name="head")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Activation("softmax", name="probs")(x)
    return keras.Model(inp, out, name="mini_xception")


def keras_conv_head(input_shape=CONV_HEAD_INPUT, outputs=CONV_HEAD_OUTPUTS):
    import keras
    from keras import layers

    inp = keras.Input(input_shape)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = layers.ZeroPadding2D(1, name="pad")(x)
    x = layers.Conv2D(8, 3, strides=2, name="conv_b")(x)
    x = layers.Activation("relu", name="relu_b")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(outputs, name="out")(x)
    return keras.Model(inp, out, name="conv_head")


def keras_two_input(input_shape=TWO_INPUT_SHAPE, outputs=TWO_INPUT_OUTPUTS):
    import keras
    from keras import layers

    target = keras.Input(input_shape, name="target")
    image = keras.Input(input_shape, name="image")
    a = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="target_conv")(target)
    b = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="image_conv")(image)
    x = layers.Concatenate(name="concat")([a, b])
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, activation="relu", name="fc")(x)
    out = layers.Dense(outputs, name="box")(x)
    return keras.Model([target, image], out, name="two_input")


def keras_mlp(features=MLP_FEATURES, classes=MLP_CLASSES):
    import keras
    from keras import layers

    inp = keras.Input((features,))
    x = layers.Dense(32, name="hidden")(inp)
    x = layers.BatchNormalization(name="hidden_bn")(x)
    x = layers.Activation("relu", name="hidden_relu")(x)
    x = layers.Dense(classes, name="logits")(x)
    out = layers.Activation("softmax", name="probs")(x)
    return keras.Model(inp, out, name="mlp")


# --- ports of keras_mini_xception ----------------------------------------------------------------------
def _bn(c):
    from torch import nn

    return nn.BatchNorm2d(c, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS)


def port_named_children():
    """Named children with their own names: a ``SepConv`` with ``dw`` / ``pw``, a ``Block``."""
    from torch import nn

    class SepConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pw = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pw(self.dw(x))

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
            self.shortcut_norm = _bn(cout)
            self.first = SepConv(cin, cout)
            self.first_norm = _bn(cout)
            self.act = nn.ReLU()
            self.second = SepConv(cout, cout)
            self.second_norm = _bn(cout)
            self.down = nn.MaxPool2d(3, stride=2, padding=1)

        def forward(self, x):
            r = self.shortcut_norm(self.shortcut(x))
            x = self.act(self.first_norm(self.first(x)))
            x = self.down(self.second_norm(self.second(x)))
            return x + r

    class MiniXception(nn.Module):
        def __init__(self, in_ch=1, classes=XCEPTION_CLASSES):
            super().__init__()
            self.stem1 = nn.Conv2d(in_ch, 8, 3, bias=False)
            self.stem1_bn = _bn(8)
            self.stem2 = nn.Conv2d(8, 8, 3, bias=False)
            self.stem2_bn = _bn(8)
            self.relu = nn.ReLU()
            self.relu2 = nn.ReLU()
            self.block = Block(8, 16)
            self.classifier = nn.Conv2d(16, classes, 3, padding=1)
            self.gap = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = self.relu(self.stem1_bn(self.stem1(x)))
            x = self.relu2(self.stem2_bn(self.stem2(x)))
            x = self.block(x)
            return self.gap(self.classifier(x)).flatten(1)

    return MiniXception()


def port_sequential():
    """Everything in ``nn.Sequential`` (the separable conv a nested Sequential of a grouped and a 1x1 conv);
    the residual branch the only code in ``forward``."""
    from torch import nn

    def sep(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), _bn(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, bias=False), _bn(8), nn.ReLU())
            self.residual = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), _bn(16))
            self.main = nn.Sequential(sep(8, 16), _bn(16), nn.ReLU(), sep(16, 16), _bn(16),
                                      nn.MaxPool2d(3, 2, 1))
            self.head = nn.Sequential(nn.Conv2d(16, XCEPTION_CLASSES, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())

        def forward(self, x):
            x = self.stem(x)
            return self.head(self.main(x) + self.residual(x))

    return Net()


def port_module_dict():
    """Layers in an ``nn.ModuleDict`` (separable parts named ``depthwise_conv`` / ``project``) and an
    ``nn.ModuleList`` of norms, indexed in ``forward``."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict({
                "conv_1": nn.Conv2d(1, 8, 3, bias=False), "conv_2": nn.Conv2d(8, 8, 3, bias=False),
                "skip": nn.Conv2d(8, 16, 1, stride=2, bias=False),
                "depthwise_conv": nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                "project": nn.Conv2d(8, 16, 1, bias=False),
                "depthwise_conv_2": nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                "project_2": nn.Conv2d(16, 16, 1, bias=False),
                "logits": nn.Conv2d(16, XCEPTION_CLASSES, 3, padding=1),
            })
            self.norms = nn.ModuleList([_bn(8), _bn(8), _bn(16), _bn(16), _bn(16)])
            self.act = nn.ReLU()
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        def forward(self, x):
            L, N = self.layers, self.norms
            x = self.act(N[0](L["conv_1"](x)))
            x = self.act(N[1](L["conv_2"](x)))
            skip = N[2](L["skip"](x))
            x = self.act(N[3](L["project"](L["depthwise_conv"](x))))
            x = self.pool(N[4](L["project_2"](L["depthwise_conv_2"](x))))
            x = L["logits"](x + skip)
            return x.mean(dim=(2, 3))

    return Net()


def port_functional():
    """Modules for the weights only; ``forward`` in ``F.*`` (relu, max_pool2d, adaptive_avg_pool2d) and
    ``torch.flatten``; the separable conv as ``depthwise_conv`` + ``conv1x1``."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
            self.res, self.res_bn = nn.Conv2d(8, 16, 1, 2, bias=False), _bn(16)
            self.depthwise_conv1 = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
            self.conv1x1_1 = nn.Conv2d(8, 16, 1, bias=False)
            self.bn_s1 = _bn(16)
            self.depthwise_conv2 = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)
            self.conv1x1_2 = nn.Conv2d(16, 16, 1, bias=False)
            self.bn_s2 = _bn(16)
            self.out = nn.Conv2d(16, XCEPTION_CLASSES, 3, 1, 1)

        def forward(self, x):
            x = F.relu(self.b1(self.c1(x)))
            x = F.relu(self.b2(self.c2(x)))
            r = self.res_bn(self.res(x))
            x = F.relu(self.bn_s1(self.conv1x1_1(self.depthwise_conv1(x))))
            x = F.max_pool2d(self.bn_s2(self.conv1x1_2(self.depthwise_conv2(x))), 3, 2, 1)
            x = F.adaptive_avg_pool2d(self.out(x + r), 1)
            return torch.flatten(x, 1)

    return Net()


def port_inplace():
    """A ``conv_bn_relu`` helper with ``nn.ReLU(inplace=True)``, the separable conv a class with
    ``depthwise`` / ``pointwise`` children, ``+=`` for the residual add."""
    from torch import nn

    def conv_bn_relu(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False), _bn(cout), nn.ReLU(inplace=True))

    class SeparableConv2D(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv_bn_relu(1, 8)
            self.conv2 = conv_bn_relu(8, 8)
            self.residual = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), _bn(16))
            self.sep1 = nn.Sequential(SeparableConv2D(8, 16), _bn(16), nn.ReLU(inplace=True))
            self.sep2 = nn.Sequential(SeparableConv2D(16, 16), _bn(16), nn.MaxPool2d(3, 2, 1))
            self.conv3 = nn.Conv2d(16, XCEPTION_CLASSES, 3, padding=1)
            self.gap = nn.AdaptiveAvgPool2d((1, 1))

        def forward(self, x):
            x = self.conv2(self.conv1(x))
            r = self.residual(x)
            x = self.sep2(self.sep1(x))
            x += r
            x = self.gap(self.conv3(x))
            return x.view(x.size(0), -1)

    return Net()


# --- ports of the other references ---------------------------------------------------------------------
def port_conv_head():
    """``Conv2d(padding=1)`` for ZeroPadding2D + Conv2D, conv + ``nn.ReLU`` for ``Conv2D(activation='relu')``,
    ``x.view(x.size(0), -1)`` for Flatten (torch's CHW order: the converter reorders the Dense rows)."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
            self.relu_a = nn.ReLU()
            self.conv_b = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.fc = nn.Linear(8 * 5 * 5, CONV_HEAD_OUTPUTS)

        def forward(self, x):
            x = F.relu(self.conv_b(self.relu_a(self.conv_a(x))))
            return self.fc(x.view(x.size(0), -1))

    return Net()


def port_two_input():
    """``forward(target, image)``: one tower each, ``torch.cat`` on channels, ``nn.Flatten``."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.towers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(inplace=True))
                                         for _ in range(2)])
            self.flat = nn.Flatten()
            self.fc = nn.Sequential(nn.Linear(8 * 7 * 7, 16), nn.ReLU(inplace=True), nn.Linear(16, TWO_INPUT_OUTPUTS))

        def forward(self, target, image):
            x = torch.cat([self.towers[0](target), self.towers[1](image)], dim=1)
            return self.fc(self.flat(x))

    return Net()


def port_mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(MLP_FEATURES, 32), nn.BatchNorm1d(32, eps=KERAS_BN_EPSILON,
                                                                    momentum=TORCH_BN_MOMENTUM_FROM_KERAS),
                         nn.ReLU(inplace=True), nn.Linear(32, MLP_CLASSES))


#: (reference, port) builder names in this module; every pair is a correct port (the tests expect PASSED)
ZOO = (
    ("keras_mini_xception", "port_named_children"),
    ("keras_mini_xception", "port_sequential"),
    ("keras_mini_xception", "port_module_dict"),
    ("keras_mini_xception", "port_functional"),
    ("keras_mini_xception", "port_inplace"),
    ("keras_conv_head", "port_conv_head"),
    ("keras_two_input", "port_two_input"),
    ("keras_mlp", "port_mlp"),
    ("keras_mini_xception", "port_mini_xception_ordered_dict"),
    ("keras_conv_head", "port_conv_head_hwc_flatten"),
    ("keras_two_input", "port_two_input_helper"),
    ("keras_tabular_conv1d", "port_tabular_conv1d"),
    ("keras_face_mini_xception", "port_face_timm_same"),
    ("keras_face_mini_xception", "port_face_ceil_mode"),
    ("keras_encoder_decoder", "port_unet_negative_pad"),
    ("keras_seq1d", "port_seq1d_modules"),
    ("keras_volume", "port_volume_functional"),
    ("keras_mlp", "port_mlp_probabilities"),
)


# --- planted bugs in the zoo's styles (the mutation suite runs them next to the project's own ports) -----------
def _set(module, path: str, new) -> None:
    parent, _, name = path.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    if isinstance(owner, (list, tuple)) or name.isdigit():
        owner[int(name)] = new
    elif hasattr(owner, "__getitem__") and not hasattr(owner, name):
        owner[name] = new
    else:
        setattr(owner, name, new)


def zoo_bn_eps_default():
    """Named children: one BatchNorm at torch's default eps (1e-5 for Keras' 1e-3)."""
    from torch import nn

    port = port_named_children()
    port.stem1_bn = nn.BatchNorm2d(8, momentum=TORCH_BN_MOMENTUM_FROM_KERAS)
    return port


def zoo_bn_momentum_keras():
    """nn.Sequential: Keras' momentum 0.99 passed to torch as is (torch's momentum is 1 - Keras')."""
    from torch import nn

    port = port_sequential()
    port.stem[1] = nn.BatchNorm2d(8, eps=KERAS_BN_EPSILON, momentum=0.99)
    return port


def zoo_conv_bias():
    """ModuleDict: a conv with a bias the reference does not have (the bias keeps its random values)."""
    from torch import nn

    port = port_module_dict()
    port.layers["conv_1"] = nn.Conv2d(1, 8, 3, bias=True)
    return port


def zoo_head_stride2():
    """Functional forward: the head conv built with stride 2."""
    from torch import nn

    port = port_functional()
    port.out = nn.Conv2d(16, XCEPTION_CLASSES, 3, 2, 1)
    return port


def zoo_leaky_relu():
    """In-place activations: LeakyReLU(inplace=True) where the reference has ReLU."""
    from torch import nn

    port = port_inplace()
    port.conv1[2] = nn.LeakyReLU(0.1, inplace=True)
    return port


def zoo_symmetric_stride2_conv():
    """A 3x3/2 'same' conv on an even size ported as padding=1 (TF pads bottom/right only)."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
            self.relu_a = nn.ReLU()
            self.conv_b = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.fc = nn.Linear(8 * 5 * 5, CONV_HEAD_OUTPUTS)

        def forward(self, x):
            x = self.relu_a(self.conv_a(x))
            x = F.relu(self.conv_b(F.pad(x, (1, 1, 1, 1))[:, :, 1:-1, 1:-1]))
            return self.fc(x.flatten(1))

    return Net()


def zoo_mlp_bn_eps():
    from torch import nn

    port = port_mlp()
    port[1] = nn.BatchNorm1d(32, momentum=TORCH_BN_MOMENTUM_FROM_KERAS)
    return port


def zoo_two_input_no_relu():
    """Two inputs: the search image's tower without its ReLU (the reference fuses activation='relu')."""
    from torch import nn

    port = port_two_input()
    port.towers[1][1] = nn.Identity()
    return port


#: planted bugs: (name, reference, port, summary, expected stage, expected layer, expected cause)
ZOO_MUTATIONS = (
    ("zoo_bn_eps_default", "keras_mini_xception", "zoo_bn_eps_default", "named children: BatchNorm eps 1e-5",
     "forward_eval", "bn1", "bn_eps"),
    ("zoo_bn_momentum_keras", "keras_mini_xception", "zoo_bn_momentum_keras", "Sequential: BN momentum 0.99 as is",
     "forward_train", "bn1", "bn_momentum"),
    ("zoo_conv_bias", "keras_mini_xception", "zoo_conv_bias", "ModuleDict: conv bias in the port only",
     "forward_eval", "conv1", "conv_bias"),
    ("zoo_head_stride2", "keras_mini_xception", "zoo_head_stride2", "functional: head conv with stride 2",
     "forward_eval", "head", "stride"),
    ("zoo_leaky_relu", "keras_mini_xception", "zoo_leaky_relu", "in-place: LeakyReLU for ReLU",
     "forward_eval", "relu1", "activation"),
    ("zoo_mlp_bn_eps", "keras_mlp", "zoo_mlp_bn_eps", "non-image: BatchNorm1d eps 1e-5",
     "forward_eval", "hidden_bn", "bn_eps"),
    ("zoo_two_input_no_relu", "keras_two_input", "zoo_two_input_no_relu", "two inputs: a tower without its ReLU",
     "forward_eval", "image_conv", "activation"),
)


# --- more ports in other people's styles (each correct: every one must PASS) ------------------------------------
#: a Keras "tabular" Conv1D model: 12 features -> Reshape((12, 1)) -> Conv1D -> Flatten (LC order) -> Dense
TABULAR_FEATURES = 12
TABULAR_CLASSES = 3


def keras_tabular_conv1d(features=TABULAR_FEATURES, classes=TABULAR_CLASSES):
    import keras
    from keras import layers

    inp = keras.Input((features,))
    x = layers.Reshape((features, 1), name="as_sequence")(inp)
    x = layers.Conv1D(4, 3, activation="relu", name="conv")(x)
    x = layers.MaxPooling1D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(8, activation="relu", name="fc")(x)
    out = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="tabular_conv1d")


def keras_face_mini_xception():
    """The published mini_XCEPTION (reference_keras.minixception) at 64x64x1, 7 classes: its pools see 60, 30,
    15 and 8 (TF 'same' pads (0, 1) on the even sizes, (1, 1) on 15)."""
    from reference_keras.minixception import mini_xception

    return mini_xception()


def keras_encoder_decoder():
    from reference_keras.encdec import encoder_decoder

    return encoder_decoder()


def keras_seq1d():
    from reference_keras.seq1d import seq1d_net

    return seq1d_net()


def keras_volume():
    from reference_keras.volume import volume_cnn

    return volume_cnn()


def _face_bn(c):
    from torch import nn

    return nn.BatchNorm2d(c, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS)


def port_face_timm_same():
    """mini_XCEPTION at 64x64 in the timm/pretrainedmodels Xception style: a ``SeparableConv2d`` with ``conv1``
    (the depthwise conv) and ``pointwise``; TF 'same' max-pooling by a ``MaxPool2dSame`` subclass of
    ``nn.MaxPool2d`` that pads with -inf in ``forward`` (computed from the input size); ``.squeeze(-1)`` twice."""
    import math

    import torch.nn.functional as F
    from torch import nn

    class MaxPool2dSame(nn.MaxPool2d):
        def forward(self, x):
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / self.stride) - 1) * self.stride + self.kernel_size - ih, 0)
            pw = max((math.ceil(iw / self.stride) - 1) * self.stride + self.kernel_size - iw, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
            return F.max_pool2d(x, self.kernel_size, self.stride)

    class SeparableConv2d(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)

        def forward(self, x):
            return self.pointwise(self.conv1(x))

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.skip = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
            self.skipbn = _face_bn(cout)
            self.sep1 = SeparableConv2d(cin, cout)
            self.bn1 = _face_bn(cout)
            self.sep2 = SeparableConv2d(cout, cout)
            self.bn2 = _face_bn(cout)
            self.pool = MaxPool2dSame(3, 2)

        def forward(self, inp):
            x = F.relu(self.bn1(self.sep1(inp)))
            x = self.pool(self.bn2(self.sep2(x)))
            return x + self.skipbn(self.skip(inp))

    class MiniXception(nn.Module):
        def __init__(self, num_classes=7):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
            self.bn1 = _face_bn(8)
            self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
            self.bn2 = _face_bn(8)
            self.block1, self.block2 = Block(8, 16), Block(16, 32)
            self.block3, self.block4 = Block(32, 64), Block(64, 128)
            self.conv3 = nn.Conv2d(128, num_classes, 3, padding=1)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            x = self.block4(self.block3(self.block2(self.block1(x))))
            x = F.adaptive_avg_pool2d(self.conv3(x), 1)
            return x.squeeze(-1).squeeze(-1)

    return MiniXception()


def port_face_ceil_mode():
    """mini_XCEPTION at 64x64 written with ``nn.MaxPool2d(3, 2, padding=p, ceil_mode=True)`` (p 0 on the even
    sizes 60, 30, 8: the window sticking out on the right is TF's (0, 1) pad; p 1 on 15), ``padding='same'``
    strings on the stride-1 convs, blocks in an ``nn.ModuleList``, ``nn.ReLU(inplace=True)``, a Kaiming
    ``self.apply(init)`` (the check converts the reference's weights over it), ``x.mean([2, 3])``."""
    from torch import nn

    def init(m):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    class Residual(nn.Module):
        def __init__(self, cin, cout, pool_pad):
            super().__init__()
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=2, bias=False), _face_bn(cout))
            self.body = nn.Sequential(
                nn.Conv2d(cin, cin, 3, padding="same", groups=cin, bias=False),
                nn.Conv2d(cin, cout, 1, bias=False), _face_bn(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding="same", groups=cout, bias=False),
                nn.Conv2d(cout, cout, 1, bias=False), _face_bn(cout),
                nn.MaxPool2d(3, 2, padding=pool_pad, ceil_mode=True))

        def forward(self, x):
            return self.body(x) + self.shortcut(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), _face_bn(8), nn.ReLU(inplace=True),
                                          nn.Conv2d(8, 8, 3, bias=False), _face_bn(8), nn.ReLU(inplace=True))
            self.blocks = nn.ModuleList([Residual(cin, cout, p) for cin, cout, p in
                                         ((8, 16, 0), (16, 32, 0), (32, 64, 1), (64, 128, 0))])
            self.classifier = nn.Conv2d(128, 7, 3, padding="same")
            self.apply(init)

        def forward(self, x):
            x = self.features(x)
            for block in self.blocks:
                x = block(x)
            return self.classifier(x).mean([2, 3])

    return Net()


def port_unet_negative_pad():
    """The encoder-decoder as a U-Net port: a ``conv_relu`` helper with ``padding='same'``, ``nn.Upsample``
    (nearest), ``nn.ConvTranspose2d(3, stride=2)`` with no padding cropped by a negative ``F.pad`` (TF's 'same'
    keeps the first 2H rows of the 2H+1), ``torch.cat`` for the skips, ``view`` after adaptive pooling."""
    from collections import OrderedDict

    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv_relu(cin, cout):
        return nn.Sequential(OrderedDict([("conv", nn.Conv2d(cin, cout, 3, padding="same")),
                                          ("relu", nn.ReLU(inplace=True))]))

    class UNet(nn.Module):
        def __init__(self, cin=3, w=8, classes=3):
            super().__init__()
            self.inc = conv_relu(cin, w)
            self.down1 = nn.Sequential(nn.MaxPool2d(2), conv_relu(w, 2 * w))
            self.down2 = nn.Sequential(nn.MaxPool2d(2), conv_relu(2 * w, 2 * w))
            self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv_up2 = conv_relu(4 * w, 2 * w)
            self.up1 = nn.ConvTranspose2d(2 * w, w, 3, stride=2)
            self.conv_up1 = conv_relu(2 * w, w)
            self.fc = nn.Linear(w, classes)

        def forward(self, x):
            e1 = self.inc(x)
            e2 = self.down1(e1)
            b = self.down2(e2)
            d2 = self.conv_up2(torch.cat([self.up2(b), e2], dim=1))
            u1 = F.pad(self.up1(d2), [0, -1, 0, -1])
            d1 = self.conv_up1(torch.cat([u1, e1], dim=1))
            return self.fc(F.adaptive_avg_pool2d(d1, 1).view(d1.size(0), -1))

    return UNet()


def port_seq1d_modules():
    """The 1-D network with a module for everything: ``nn.ConstantPad1d((0, 1), 0)`` before the stride-2 conv
    in an ``nn.Sequential``, ``padding='same'`` strings, the separable conv as two convs in a Sequential with its
    ReLU, ``nn.Upsample(scale_factor=2)`` on (N, C, L), ``nn.ZeroPad1d`` is ``padding=1`` of the next conv,
    Cropping1D as a slice, GlobalMaxPooling1D as ``torch.max(x, 2).values``."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, c=4, f=6, classes=3):
            super().__init__()
            self.down = nn.Sequential(nn.ConstantPad1d((0, 1), 0.0), nn.Conv1d(c, f, 3, stride=2), nn.ReLU())
            self.dw = nn.Conv1d(f, 2 * f, 3, padding="same", groups=f)
            self.sep = nn.Sequential(nn.Conv1d(2 * f, 4 * f, 3, padding="same", groups=2 * f, bias=False),
                                     nn.Conv1d(4 * f, 2 * f, 1), nn.ReLU())
            self.grouped = nn.Conv1d(2 * f, 2 * f, 3, padding="same", groups=3)
            self.tconv = nn.ConvTranspose1d(2 * f, f, 4, stride=2, padding=1)
            self.up = nn.Upsample(scale_factor=2)
            self.conv = nn.Conv1d(f, f, 3, padding=1)
            self.classifier = nn.Linear(f, classes)

        def forward(self, x):
            x = self.grouped(self.sep(self.dw(self.down(x))))
            x = self.up(torch.relu(self.tconv(x)))
            x = self.conv(x)[:, :, 1:-2]
            return self.classifier(torch.max(x, 2).values)

    return Net()


def port_volume_functional():
    """The 3-D CNN with ``padding='same'`` on the stride-1 Conv3d, ``F.pad(x, (0, 1) * 3)`` before the stride-2
    one (TF pads after on even sizes), ``x.mean(dim=(2, 3, 4))`` for GlobalAveragePooling3D."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv3d(1, 4, 3, padding="same")
            self.conv2 = nn.Conv3d(4, 8, 3, stride=2)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(F.pad(x, (0, 1) * 3)))
            return self.fc(x.mean(dim=(2, 3, 4)))

    return Net()


def port_conv_head_hwc_flatten():
    """The conv head flattened in Keras' own HWC order (``x.permute(0, 2, 3, 1).reshape(n, -1)``, as ports that
    keep the Dense weights' row order do), ``nn.ZeroPad2d(1)`` + a 'valid' Conv2d as two modules, ``torch.relu``."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(3, 6, 3, padding="same")
            self.pad = nn.ZeroPad2d(1)
            self.conv_b = nn.Conv2d(6, 8, 3, stride=2)
            self.out = nn.Linear(5 * 5 * 8, CONV_HEAD_OUTPUTS)

        def forward(self, x):
            x = torch.relu(self.conv_a(x))
            x = torch.relu(self.conv_b(self.pad(x)))
            return self.out(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))

    return Net()


def port_two_input_helper():
    """Two towers from a ``make_tower`` helper as separate attributes, ``nn.Dropout(0.0)`` and ``nn.Identity``
    placeholders in the head, ``torch.flatten(torch.cat(...), start_dim=1)``."""
    import torch
    from torch import nn

    def make_tower():
        return nn.Sequential(nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1), nn.ReLU())

    class Tracker(nn.Module):
        def __init__(self):
            super().__init__()
            self.target_tower = make_tower()
            self.image_tower = make_tower()
            self.regressor = nn.Sequential(nn.Linear(2 * 4 * 7 * 7, 16), nn.ReLU(), nn.Dropout(0.0),
                                           nn.Linear(16, TWO_INPUT_OUTPUTS), nn.Identity())

        def forward(self, target, image):
            x = torch.cat((self.target_tower(target), self.image_tower(image)), 1)
            return self.regressor(torch.flatten(x, start_dim=1))

    return Tracker()


def port_mlp_probabilities():
    """The MLP returning probabilities like the reference (``F.softmax`` in ``forward``), layers in an
    ``nn.ModuleList``, Xavier ``self.apply(init)``."""
    import torch.nn.functional as F
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(MLP_FEATURES, 32),
                                         nn.BatchNorm1d(32, eps=KERAS_BN_EPSILON, momentum=TORCH_BN_MOMENTUM_FROM_KERAS),
                                         nn.Linear(32, MLP_CLASSES)])
            self.apply(lambda m: nn.init.xavier_uniform_(m.weight) if isinstance(m, nn.Linear) else None)

        def forward(self, x):
            x = F.relu(self.layers[1](self.layers[0](x)))
            return F.softmax(self.layers[2](x), dim=1)

    return MLP()


def port_tabular_conv1d():
    """The tabular Conv1D model: ``x.unsqueeze(1)`` for Reshape((12, 1)), ``F.max_pool1d``, ``x.flatten(1)`` on
    (N, C, L) (torch's CL order: the converter reorders the Dense rows), ``nn.Sequential`` head."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3)
            self.head = nn.Sequential(nn.Linear(4 * 5, 8), nn.ReLU(), nn.Linear(8, TABULAR_CLASSES))

        def forward(self, x):
            x = F.max_pool1d(F.relu(self.conv(x.unsqueeze(1))), 2)
            return self.head(x.flatten(1))

    return Net()


def port_mini_xception_ordered_dict():
    """The small mini_XCEPTION with ``nn.Sequential(OrderedDict(...))`` stages, the separable conv from a
    ``separable`` helper returning a Sequential, ``torch.add`` for the residual, ``torch.mean(x, (2, 3))``."""
    from collections import OrderedDict

    import torch
    from torch import nn

    def separable(cin, cout):
        return nn.Sequential(OrderedDict([("depthwise", nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)),
                                          ("pointwise", nn.Conv2d(cin, cout, 1, bias=False))]))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(OrderedDict([
                ("conv1", nn.Conv2d(1, 8, 3, bias=False)), ("bn1", _bn(8)), ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(8, 8, 3, bias=False)), ("bn2", _bn(8)), ("relu2", nn.ReLU())]))
            self.residual = nn.Sequential(OrderedDict([("conv", nn.Conv2d(8, 16, 1, stride=2, bias=False)),
                                                       ("bn", _bn(16))]))
            self.branch = nn.Sequential(OrderedDict([
                ("sep1", separable(8, 16)), ("bn1", _bn(16)), ("relu", nn.ReLU()),
                ("sep2", separable(16, 16)), ("bn2", _bn(16)), ("pool", nn.MaxPool2d(3, 2, 1))]))
            self.head = nn.Conv2d(16, XCEPTION_CLASSES, 3, padding=1)

        def forward(self, x):
            x = self.stem(x)
            x = torch.add(self.branch(x), self.residual(x))
            return torch.mean(self.head(x), (2, 3))

    return Net()


# --- an Xception-sized user port (the alignment's cost benchmark) ---------------------------------------------
def port_xception_user_style(**config):
    """The registered Xception port rewritten the way a user writes separable convs: every
    ``.depthwise``/``.pointwise`` unit replaced by an ``nn.Sequential`` of its two convs (no names), so the
    alignment must find the 34 SeparableConv2D groups by structure. Same weights layout, same numbers."""
    from torch import nn

    from ported_torch.xception import xception

    model = xception(**config)
    for path, m in list(model.named_modules()):
        if path and hasattr(m, "depthwise") and hasattr(m, "pointwise"):
            parent, _, name = path.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, name, nn.Sequential(m.depthwise, m.pointwise))
    return model


def align_cost(repeats: int = 2) -> list[float]:
    """Seconds :func:`parity.user.align.align` takes on the Xception-sized user-style pair at 299x299 (the
    registered pair's full size), per call: the port traced once at batch 2, 34 separable groups found."""
    pair = registry.get("xception")
    cfg = pair.config()
    km, tm = resolve(pair.reference)(**cfg), port_xception_user_style(**cfg)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        al = align(km, tm)
        out.append(time.perf_counter() - t)
        assert len(al.groups) == 34 and al.incomplete() is None
    return out


if __name__ == "__main__":  # .venv/bin/python -m benchmarks.user_zoo
    import parity.core.env  # noqa: F401  (environment before the frameworks)

    print("align xception user-style 299x299: " + ", ".join(f"{s:.2f} s" for s in align_cost()))
