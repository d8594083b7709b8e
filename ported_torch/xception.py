"""PyTorch port of Xception (Chollet 2017), faithful to ``keras.applications.Xception`` (the reference,
``reference_keras/xception.py``):

- entry flow: block1 = conv 3x3/2 'valid' (32) + BN + ReLU, conv 3x3 'valid' (64) + BN + ReLU; blocks 2, 3,
  4 (128, 256, 728) = [ReLU] sepconv + BN, ReLU, sepconv + BN, max-pool 3/2 'same', plus a 1x1/2 conv + BN
  shortcut (block 2 has no ReLU before its first sepconv: it follows block1's ReLU);
- middle flow: blocks 5..12, **eight distinct** blocks of 3 x (ReLU, sepconv 728, BN) plus the identity;
- exit flow: block13 (728, 1024) like the entry blocks; block14 = sepconv 1536 + BN + ReLU, sepconv 2048 +
  BN + ReLU; top: global average pool + Linear (the reference's Dense + softmax: the softmax belongs to
  ``F.cross_entropy``, the port returns **logits**).

Conventions (named in :mod:`parity.core.conventions`): no biases on convs (``use_bias=False`` everywhere in the
reference); BatchNorm eps ``KERAS_BN_EPSILON`` = 1e-3 and momentum ``TORCH_BN_MOMENTUM_FROM_KERAS`` = 0.01;
TF 'same' (``TF_SAME_PADDING``) through :mod:`ported_torch.layers`: ``MaxPool2dSame`` pads the extra pixel
bottom/right (299 -> 147 -> **74** -> 37 in block3 is where ``nn.MaxPool2d(3, 2, padding=1)`` differs),
``Conv2dSame`` for the 1x1/2 shortcut convs, ``SeparableConv2d`` for the depthwise + pointwise pairs.
ReLUs are modules and never inplace (tapped tensors must not be overwritten); residual sums are ``Add``
modules. Module names follow the Keras layer names (``entry.block2.sepconv1_bn`` <-> ``block2_sepconv1_bn``).

Each block runs its operations in the reference's topological order (Keras' ``model.layers``: main path,
shortcut conv, pool, shortcut BN, add), so hooks fire in the same order as the reference's layers.

Keyword arguments build the port mistakes public Xception ports are known for through this public constructor, as a user's port would have them: ``shared_middle=True`` (``[MiddleBlock()] * 8``: one block's
parameters, eight calls), ``conv_bias=True``, ``missing_bn=`` (BN modules replaced by ``nn.Identity``),
``symmetric_pool=True`` (``nn.MaxPool2d(3, 2, padding=1)``), ``bn_eps=1e-5``.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS
from ported_torch.layers import Add, Conv2dSame, GlobalAvgPool2d, MaxPool2dSame, SeparableConv2d

STEM_FILTERS = (32, 64)
#: (block, filters of sepconv1, filters of sepconv2) of the blocks with a 1x1/2 conv shortcut.
ENTRY_BLOCKS = ((2, 128, 128), (3, 256, 256), (4, 728, 728))
EXIT_BLOCK = (13, 728, 1024)
MIDDLE_FILTERS = 728
#: Keras block numbers of the middle flow (torch ``middle.0`` .. ``middle.7``).
MIDDLE_BLOCKS = tuple(range(5, 13))
EXIT_SEPCONV_FILTERS = (1536, 2048)
#: ``missing_bn=True`` drops this BN (one after a separable conv, as in a known port).
DEFAULT_MISSING_BN = "entry.block3.sepconv2_bn"


class _Options:
    def __init__(self, bn_eps, bn_momentum, symmetric_pool, conv_bias):
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum
        self.symmetric_pool, self.conv_bias = symmetric_pool, conv_bias

    def bn(self, c):
        return nn.BatchNorm2d(c, eps=self.bn_eps, momentum=self.bn_momentum)

    def pool(self):
        if self.symmetric_pool:  # the classic mistake: pads top/left too (differs on even inputs)
            return nn.MaxPool2d(3, 2, padding=1)
        return MaxPool2dSame(3, 2)

    def sep(self, cin, cout):
        return SeparableConv2d(cin, cout, 3, padding="same", bias=self.conv_bias)


class Stem(nn.Module):
    """Keras block1: ``block1_conv1`` (3x3/2 valid) ``_bn`` ``_act``, ``block1_conv2`` (3x3 valid) ``_bn`` ``_act``."""

    def __init__(self, in_channels, o: _Options):
        super().__init__()
        c1, c2 = STEM_FILTERS
        self.conv1 = nn.Conv2d(in_channels, c1, 3, stride=2, bias=o.conv_bias)
        self.conv1_bn = o.bn(c1)
        self.conv1_act = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, bias=o.conv_bias)
        self.conv2_bn = o.bn(c2)
        self.conv2_act = nn.ReLU()

    def forward(self, x):
        x = self.conv1_act(self.conv1_bn(self.conv1(x)))
        return self.conv2_act(self.conv2_bn(self.conv2(x)))


class DownBlock(nn.Module):
    """Keras blocks 2, 3, 4, 13: ``[sepconv1_act]`` sepconv1 ``_bn``, ``sepconv2_act`` sepconv2 ``_bn``, pool;
    shortcut ``residual_conv`` (1x1/2 'same') ``residual_bn``; ``add``. ``first=True`` (block2) has no
    ReLU before sepconv1 (Keras' block2 input is already block1's ReLU output)."""

    def __init__(self, cin, c1, c2, o: _Options, first=False):
        super().__init__()
        self.sepconv1_act = None if first else nn.ReLU()
        self.sepconv1 = o.sep(cin, c1)
        self.sepconv1_bn = o.bn(c1)
        self.sepconv2_act = nn.ReLU()
        self.sepconv2 = o.sep(c1, c2)
        self.sepconv2_bn = o.bn(c2)
        self.residual_conv = Conv2dSame(cin, c2, 1, stride=2, bias=o.conv_bias)
        self.pool = o.pool()
        self.residual_bn = o.bn(c2)
        self.add = Add()

    def forward(self, x):
        shortcut = x
        if self.sepconv1_act is not None:
            x = self.sepconv1_act(x)
        x = self.sepconv1_bn(self.sepconv1(x))
        x = self.sepconv2_bn(self.sepconv2(self.sepconv2_act(x)))
        residual = self.residual_conv(shortcut)  # Keras order: shortcut conv, pool, shortcut BN, add
        x = self.pool(x)
        residual = self.residual_bn(residual)
        return self.add(x, residual)


class MiddleBlock(nn.Module):
    """Keras blocks 5..12: 3 x (``sepconvK_act``, ``sepconvK``, ``sepconvK_bn``) then ``add`` the input."""

    def __init__(self, o: _Options, channels=MIDDLE_FILTERS):
        super().__init__()
        for k in (1, 2, 3):
            setattr(self, f"sepconv{k}_act", nn.ReLU())
            setattr(self, f"sepconv{k}", o.sep(channels, channels))
            setattr(self, f"sepconv{k}_bn", o.bn(channels))
        self.add = Add()

    def forward(self, x):
        residual = x
        for k in (1, 2, 3):
            x = getattr(self, f"sepconv{k}_act")(x)
            x = getattr(self, f"sepconv{k}_bn")(getattr(self, f"sepconv{k}")(x))
        return self.add(x, residual)


class ExitTail(nn.Module):
    """Keras block14: sepconv1 (1536) ``_bn`` ``_act``, sepconv2 (2048) ``_bn`` ``_act`` (ReLU *after* BN)."""

    def __init__(self, cin, o: _Options):
        super().__init__()
        c1, c2 = EXIT_SEPCONV_FILTERS
        self.sepconv1 = o.sep(cin, c1)
        self.sepconv1_bn = o.bn(c1)
        self.sepconv1_act = nn.ReLU()
        self.sepconv2 = o.sep(c1, c2)
        self.sepconv2_bn = o.bn(c2)
        self.sepconv2_act = nn.ReLU()

    def forward(self, x):
        x = self.sepconv1_act(self.sepconv1_bn(self.sepconv1(x)))
        return self.sepconv2_act(self.sepconv2_bn(self.sepconv2(x)))


class EntryFlow(nn.Module):
    def __init__(self, in_channels, o: _Options):
        super().__init__()
        self.block1 = Stem(in_channels, o)
        cin = STEM_FILTERS[-1]
        for n, c1, c2 in ENTRY_BLOCKS:
            setattr(self, f"block{n}", DownBlock(cin, c1, c2, o, first=(n == ENTRY_BLOCKS[0][0])))
            cin = c2

    def forward(self, x):
        x = self.block1(x)
        for n, _, _ in ENTRY_BLOCKS:
            x = getattr(self, f"block{n}")(x)
        return x


class ExitFlow(nn.Module):
    def __init__(self, o: _Options):
        super().__init__()
        n, c1, c2 = EXIT_BLOCK
        setattr(self, f"block{n}", DownBlock(MIDDLE_FILTERS, c1, c2, o))
        self.block14 = ExitTail(c2, o)

    def forward(self, x):
        return self.block14(getattr(self, f"block{EXIT_BLOCK[0]}")(x))


class Xception(nn.Module):
    """Xception returning logits (``include_top``), or without the top the block14 features (N, 2048, h, w)
    or, with ``pooling="avg"``, their spatial mean (N, 2048).

    ``upsample``: integer factor of a nearest-neighbour ``nn.Upsample`` before the stem (the reference's
    ``UpSampling2D`` for 32x32 CIFAR-10 inputs). See the module docstring for the bug switches.
    """

    def __init__(self, num_classes=1000, in_channels=3, include_top=True, *, pooling=None, upsample=None,
                 bn_eps=KERAS_BN_EPSILON, bn_momentum=TORCH_BN_MOMENTUM_FROM_KERAS, shared_middle=False,
                 conv_bias=False, missing_bn: bool | str | Iterable[str] = (), symmetric_pool=False):
        super().__init__()
        o = _Options(bn_eps, bn_momentum, symmetric_pool, conv_bias)
        self.upsample = nn.Upsample(scale_factor=int(upsample), mode="nearest") if upsample else None
        self.entry = EntryFlow(in_channels, o)
        if shared_middle:  # the list-multiplication bug: one MiddleBlock object at all eight positions
            self.middle = nn.ModuleList([MiddleBlock(o)] * len(MIDDLE_BLOCKS))
        else:
            self.middle = nn.ModuleList([MiddleBlock(o) for _ in MIDDLE_BLOCKS])
        self.exit = ExitFlow(o)
        if pooling not in (None, "avg"):
            raise ValueError(f"Xception port: pooling={pooling!r} is not ported. Expected None or 'avg'.")
        self.avg_pool = GlobalAvgPool2d() if include_top or pooling == "avg" else None
        self.predictions = nn.Linear(EXIT_SEPCONV_FILTERS[-1], num_classes) if include_top else None
        self._drop_bn(missing_bn)

    def _drop_bn(self, missing_bn) -> None:
        if missing_bn is True:
            missing_bn = (DEFAULT_MISSING_BN,)
        elif not missing_bn:
            return
        elif isinstance(missing_bn, str):
            missing_bn = (missing_bn,)
        for path in missing_bn:
            parent_path, _, name = path.rpartition(".")
            try:
                parent = self.get_submodule(parent_path)
                bn = getattr(parent, name)
            except AttributeError:
                bn = None
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError(f"missing_bn: expected the dotted path of a BatchNorm2d module "
                                 f"(e.g. {DEFAULT_MISSING_BN!r}). Received: {path!r}.")
            setattr(parent, name, nn.Identity())

    def forward(self, x):
        if self.upsample is not None:
            x = self.upsample(x)
        x = self.entry(x)
        for block in self.middle:
            x = block(x)
        x = self.exit(x)
        if self.avg_pool is not None:
            x = self.avg_pool(x)
        if self.predictions is not None:
            x = self.predictions(x)
        return x


def xception(input_shape=(299, 299, 3), num_classes=1000, include_top=True, classifier_activation="softmax",
             upsample=None, pooling=None, **kwargs):
    """Builder with the reference's signature (``input_shape`` is NHWC, as in Keras). The port always
    returns logits: ``classifier_activation`` is the reference's business (softmax goes to the loss).
    ``kwargs`` go to :class:`Xception` (``shared_middle``, ``bn_eps``, ...)."""
    return Xception(num_classes=num_classes, in_channels=input_shape[-1], include_top=include_top,
                    pooling=None if include_top else pooling, upsample=upsample, **kwargs)
