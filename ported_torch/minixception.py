"""PyTorch port of mini_XCEPTION (oarriaga/face_classification ``src/models/cnn.py``), faithful to the Keras
reference in ``reference_keras/minixception.py``:

- TF "same" padding for the 1x1/2 residual convs, the separable convs and the 3x3/2 max-pools
  (:mod:`ported_torch.layers`); the base convs are "valid" (64 -> 62 -> 60);
- BatchNorm with Keras' eps 1e-3 and momentum 0.99 translated to torch's 0.01
  (``parity.core.conventions.KERAS_BN_EPSILON``, ``TORCH_BN_MOMENTUM_FROM_KERAS``);
- no biases except on the head conv, exactly like the reference;
- the model returns **logits**: the reference's final softmax belongs to ``F.cross_entropy`` here.

The keyword arguments exist so that a user's variant (or a planted bug) is built through the same public
constructor: ``MiniXception(bn_eps=1e-5)`` is the classic mistake the parity check must catch.
"""
from __future__ import annotations

from torch import nn

from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS
from ported_torch.layers import Add, Conv2dSame, GlobalAvgPool2d, MaxPool2dSame, SeparableConv2d

MODULE_FILTERS = (16, 32, 64, 128)
BASE_FILTERS = 8


class _Options:
    def __init__(self, bn_eps, bn_momentum, symmetric_pool, conv_bias):
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum
        self.symmetric_pool, self.conv_bias = symmetric_pool, conv_bias

    def bn(self, c):
        return nn.BatchNorm2d(c, eps=self.bn_eps, momentum=self.bn_momentum)

    def pool(self):
        if self.symmetric_pool:  # the classic mistake: pads top/left too
            return nn.MaxPool2d(3, 2, padding=1)
        return MaxPool2dSame(3, 2)


class Base(nn.Module):
    def __init__(self, in_channels, o: _Options):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, BASE_FILTERS, 3, bias=o.conv_bias)
        self.bn1 = o.bn(BASE_FILTERS)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(BASE_FILTERS, BASE_FILTERS, 3, bias=o.conv_bias)
        self.bn2 = o.bn(BASE_FILTERS)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class XceptionModule(nn.Module):
    """residual = BN(conv1x1/2 'same'); x = BN(sep(relu(BN(sep(x))))) -> maxpool 3/2 'same'; x + residual."""

    def __init__(self, in_channels, filters, o: _Options):
        super().__init__()
        self.residual_conv = Conv2dSame(in_channels, filters, 1, stride=2, bias=o.conv_bias)
        self.residual_bn = o.bn(filters)
        self.sepconv1 = SeparableConv2d(in_channels, filters, 3, bias=o.conv_bias)
        self.sepconv1_bn = o.bn(filters)
        self.sepconv1_relu = nn.ReLU()
        self.sepconv2 = SeparableConv2d(filters, filters, 3, bias=o.conv_bias)
        self.sepconv2_bn = o.bn(filters)
        self.pool = o.pool()
        self.add = Add()

    def forward(self, x):
        residual = self.residual_bn(self.residual_conv(x))
        x = self.sepconv1_relu(self.sepconv1_bn(self.sepconv1(x)))
        x = self.pool(self.sepconv2_bn(self.sepconv2(x)))
        return self.add(x, residual)


class MiniXception(nn.Module):
    def __init__(self, num_classes=7, in_channels=1, *, bn_eps=KERAS_BN_EPSILON,
                 bn_momentum=TORCH_BN_MOMENTUM_FROM_KERAS, symmetric_pool=False, conv_bias=False,
                 softmax_output=False):
        super().__init__()
        o = _Options(bn_eps, bn_momentum, symmetric_pool, conv_bias)
        self.base = Base(in_channels, o)
        chans = (BASE_FILTERS,) + MODULE_FILTERS
        for i in range(len(MODULE_FILTERS)):
            setattr(self, f"block{i + 1}", XceptionModule(chans[i], chans[i + 1], o))
        self.head_conv = Conv2dSame(MODULE_FILTERS[-1], num_classes, 3, bias=True)
        self.head_gap = GlobalAvgPool2d()
        # A port that ends in softmax and then trains with CrossEntropyLoss applies softmax twice.
        self.softmax = nn.Softmax(dim=1) if softmax_output else None

    def forward(self, x):
        x = self.base(x)
        for i in range(len(MODULE_FILTERS)):
            x = getattr(self, f"block{i + 1}")(x)
        x = self.head_gap(self.head_conv(x))
        return self.softmax(x) if self.softmax is not None else x


def mini_xception(input_shape=(64, 64, 1), num_classes=7, **kwargs):
    """Builder with the reference's signature (``input_shape`` is NHWC, as in Keras)."""
    kwargs.pop("l2_regularization", None)
    return MiniXception(num_classes=num_classes, in_channels=input_shape[-1], **kwargs)
