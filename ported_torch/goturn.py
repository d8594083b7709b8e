"""PyTorch port of GOTURN's tracker net (davheld/GOTURN ``nets/tracker.prototxt``), faithful to Caffe and to the
Keras reference in ``reference_keras/goturn.py``:

- one (N, 6, H, W) input: target = channels 0:3, image = 3:6, split by :class:`ported_torch.layers.ChannelSlice`
  (``parity.core.goturn_net.STACKED_INPUT_CHANNELS``); two CaffeNet streams with separate weights;
- ``nn.MaxPool2d(3, 2, ceil_mode=True)``: Caffe rounds pooled sizes up (``CAFFE_POOL_CEIL``);
- ``nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1)``: torch divides alpha by size, like Caffe
  (``CAFFE_LRN_ALPHA``);
- grouped convs ``nn.Conv2d(groups=2)``; ``nn.Flatten`` flattens C, H, W like Caffe's InnerProduct;
- every tapped op is its own module (ReLU not inplace), named as the reference's layers with ``.``.

The keyword arguments exist so that a user's variant (or a planted bug) is built through the same public
constructor: ``Goturn(lrn_alpha=5e-4)`` (alpha multiplied by n, a TF-style reading) and
``Goturn(ceil_mode=False)`` (floor pooling, invisible at 227x227) are the classic mistakes.

``fc6``'s input size follows Caffe's geometry for ``input_shape`` (like a port that hard-codes 256*6*6*2), not
the pools actually built, so a floor-pooling port still loads the reference's weights and diverges at pool1.
"""
from __future__ import annotations

from torch import nn

from parity.core.goturn_net import (CAFFE_LRN_ALPHA, CAFFE_LRN_BETA, CAFFE_LRN_K, CAFFE_LRN_SIZE, CAFFE_POOL_CEIL,
                                 CAFFE_POOL_KERNEL, CAFFE_POOL_STRIDE, CAFFENET_CONV_WEIGHT_STD, CONV_LAYERS,
                                 GOTURN_FC8_BIAS, GOTURN_FC8_WEIGHT_STD, GOTURN_FC_BIAS, GOTURN_FC_UNITS,
                                 GOTURN_FC_WEIGHT_STD, GOTURN_INPUT_HW, GOTURN_OUTPUTS, LRN_AFTER,
                                 PARITY_DROPOUT_RATE, POOLED_AFTER, STACKED_INPUT_CHANNELS, STREAM_CHANNELS,
                                 STREAM_SLICES, STREAMS, concat_chw)
from ported_torch.layers import ChannelSlice, Concat


class CaffeNetStream(nn.Module):
    """conv1 .. pool5 of CaffeNet; modules ``conv1, relu1, pool1, norm1, conv2, ..., relu5, pool5``."""

    def __init__(self, in_channels=STREAM_CHANNELS, *, lrn_size=CAFFE_LRN_SIZE, lrn_alpha=CAFFE_LRN_ALPHA,
                 lrn_beta=CAFFE_LRN_BETA, lrn_k=CAFFE_LRN_K, ceil_mode=CAFFE_POOL_CEIL):
        super().__init__()
        self.order = []
        c = in_channels
        for name, filters, kernel, stride, pad, groups, bias in CONV_LAYERS:
            i = name[-1]
            conv = nn.Conv2d(c, filters, kernel, stride=stride, padding=pad, groups=groups)
            nn.init.normal_(conv.weight, std=CAFFENET_CONV_WEIGHT_STD)
            nn.init.constant_(conv.bias, bias)
            self._add(name, conv)
            self._add(f"relu{i}", nn.ReLU())
            if name in POOLED_AFTER:
                self._add(f"pool{i}", nn.MaxPool2d(CAFFE_POOL_KERNEL, CAFFE_POOL_STRIDE, ceil_mode=ceil_mode))
            if name in LRN_AFTER:
                self._add(f"norm{i}", nn.LocalResponseNorm(lrn_size, alpha=lrn_alpha, beta=lrn_beta, k=lrn_k))
            c = filters

    def _add(self, name, module):
        self.add_module(name, module)
        self.order.append(name)

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return x


class Goturn(nn.Module):
    """GOTURN tracker net. Input (N, 6, H, W) (target 0:3, image 3:6); output fc8 (N, 4)."""

    def __init__(self, input_hw=GOTURN_INPUT_HW, fc_units=GOTURN_FC_UNITS, num_outputs=GOTURN_OUTPUTS,
                 dropout=PARITY_DROPOUT_RATE, *, lrn_size=CAFFE_LRN_SIZE, lrn_alpha=CAFFE_LRN_ALPHA,
                 lrn_beta=CAFFE_LRN_BETA, lrn_k=CAFFE_LRN_K, ceil_mode=CAFFE_POOL_CEIL, flatten_features=None):
        super().__init__()
        stream_kw = dict(lrn_size=lrn_size, lrn_alpha=lrn_alpha, lrn_beta=lrn_beta, lrn_k=lrn_k, ceil_mode=ceil_mode)
        for s in STREAMS:
            setattr(self, f"split_{s}", ChannelSlice(*STREAM_SLICES[s]))
            setattr(self, s, CaffeNetStream(STREAM_CHANNELS, **stream_kw))
        self.concat = Concat(dim=1)
        self.flatten = nn.Flatten()  # C, H, W: Caffe InnerProduct order
        if flatten_features is None:
            c, h, w = concat_chw(tuple(input_hw))
            flatten_features = c * h * w
        self.fc6 = self._fc(flatten_features, fc_units, GOTURN_FC_WEIGHT_STD, GOTURN_FC_BIAS)
        self.relu6, self.drop6 = nn.ReLU(), nn.Dropout(dropout)
        self.fc7 = self._fc(fc_units, fc_units, GOTURN_FC_WEIGHT_STD, GOTURN_FC_BIAS)
        self.relu7, self.drop7 = nn.ReLU(), nn.Dropout(dropout)
        self.fc7b = self._fc(fc_units, fc_units, GOTURN_FC_WEIGHT_STD, GOTURN_FC_BIAS)
        self.relu7b, self.drop7b = nn.ReLU(), nn.Dropout(dropout)
        self.fc8 = self._fc(fc_units, num_outputs, GOTURN_FC8_WEIGHT_STD, GOTURN_FC8_BIAS)

    @staticmethod
    def _fc(n_in, n_out, std, bias):
        fc = nn.Linear(n_in, n_out)
        nn.init.normal_(fc.weight, std=std)
        nn.init.constant_(fc.bias, bias)
        return fc

    def forward(self, x):
        pooled = [getattr(self, s)(getattr(self, f"split_{s}")(x)) for s in STREAMS]
        x = self.flatten(self.concat(*pooled))
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        x = self.drop7b(self.relu7b(self.fc7b(x)))
        return self.fc8(x)


def goturn(input_shape=GOTURN_INPUT_HW + (STACKED_INPUT_CHANNELS,), fc_units=GOTURN_FC_UNITS,
           num_outputs=GOTURN_OUTPUTS, dropout=PARITY_DROPOUT_RATE, **kwargs):
    """Builder with the reference's signature (``input_shape`` is NHWC (H, W, 6), as in Keras)."""
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != STACKED_INPUT_CHANNELS:
        raise ValueError(f"goturn: expected input_shape (H, W, {STACKED_INPUT_CHANNELS}) with target in channels "
                         f"0:3 and image in 3:6. Received: {input_shape}. Stack the two crops on the channel axis.")
    return Goturn(input_shape[:2], fc_units=fc_units, num_outputs=num_outputs, dropout=dropout, **kwargs)
