"""GOTURN's tracker net (davheld/GOTURN @ae8df641 ``nets/tracker.prototxt``) as a Keras 3 model with Caffe's
semantics, and stable layer names. Never imports torch.

Two CaffeNet streams with separate weights, ``target`` and ``image``, each::

    conv1 96 11x11/4 -> relu1 -> pool1 3/2 -> norm1 LRN(5, 1e-4, 0.75)
    conv2 256 5x5 pad 2 group 2 -> relu2 -> pool2 -> norm2
    conv3 384 3x3 pad 1 -> relu3 -> conv4 384 3x3 pad 1 group 2 -> relu4
    conv5 256 3x3 pad 1 group 2 -> relu5 -> pool5

then ``concat`` (target first, channel axis) -> ``flatten`` -> fc6 -> relu6 -> drop6 -> fc7 -> relu7 -> drop7 ->
fc7b -> relu7b -> drop7b -> fc8 (4 outputs). Names: ``{stream}_{caffe name}`` for the streams (Caffe calls the
image stream's layers ``conv1_p``...), ``fc6``/``fc7``/``fc7b``/``fc8`` for ``fc6-new``/``fc7-new``/``fc7-newb``/
``fc8-shapes``. 113,748,740 parameters at 227x227.

Where Keras differs from Caffe, and what this model does about it (conventions in ``parity.core.goturn_net``):

- one stacked input (H, W, 6), split by :class:`ChannelSlice` layers (``STACKED_INPUT_CHANNELS``);
- :class:`CaffeMaxPool2D`: Caffe rounds pooled sizes up (``CAFFE_POOL_CEIL``); Keras pooling rounds down;
- :class:`CaffeLRN`: Caffe's across-channel LRN, ``alpha`` divided by ``size`` like Caffe and torch.
  ``tf.nn.local_response_normalization`` would need ``alpha / size`` and ``depth_radius = (size - 1) / 2``
  (``TF_LRN_ALPHA``, ``TF_LRN_DEPTH_RADIUS``) and has no float64 kernel, so the sum is written out;
- Caffe ``pad = (k - 1) / 2`` at stride 1 is TF ``"same"`` (symmetric for odd kernels) (:data:`CAFFE_PAD_AS_SAME`);
- grouped convs are ``Conv2D(groups=2)``: kernel (kh, kw, in/2, out), forward and backward checked on TF CPU
  in float64 against split -> two convs -> concat (max relative difference 2e-15);
- ``Flatten`` stays HWC (Keras' own); the converter reorders fc6's kernel rows (``Tap.flatten_chw``);
- dropout defaults to rate 0 (``PARITY_DROPOUT_RATE``; GOTURN's is 0.5).
"""
from __future__ import annotations

import keras
from keras import layers, ops

from parity.core.goturn_net import (CAFFE_LRN_ALPHA, CAFFE_LRN_BETA, CAFFE_LRN_K, CAFFE_LRN_SIZE, CAFFE_POOL_CEIL,
                                 CAFFE_POOL_KERNEL, CAFFE_POOL_STRIDE, CAFFENET_CONV_WEIGHT_STD, CONV_LAYERS,
                                 GOTURN_FC8_BIAS, GOTURN_FC8_WEIGHT_STD, GOTURN_FC_BIAS, GOTURN_FC_UNITS,
                                 GOTURN_FC_WEIGHT_STD, GOTURN_INPUT_HW, GOTURN_OUTPUTS, LRN_AFTER,
                                 PARITY_DROPOUT_RATE, POOLED_AFTER, STACKED_INPUT_CHANNELS, STREAM_SLICES, STREAMS,
                                 caffe_pool_out)

CAFFE_PAD_AS_SAME = ("Caffe pad (k-1)/2 at stride 1 == TF padding='same' for odd k (pad_total = k-1, split "
                     "evenly); pad 0 == 'valid'")
NEG_INF = float("-inf")
"""Pooling pad value: -inf never wins a max, so padded cells never reach the output or the gradient."""


def _const(value: float, dtype):
    """A Python float as a tensor of ``dtype``, exactly: ``keras.ops.cast(0.9, "float64")`` goes through float32
    (0.9 -> 0.8999999762, measured with Keras 3.15 / TF 2.21); ``convert_to_tensor(..., dtype)`` does not."""
    return ops.convert_to_tensor(value, dtype=dtype)


@keras.saving.register_keras_serializable(package="parity")
class ChannelSlice(layers.Layer):
    """``x[..., start:stop]``: one stream's channels of the stacked input (``STACKED_INPUT_CHANNELS``)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.stop - self.start,)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="parity")
class CaffeMaxPool2D(layers.Layer):
    """Caffe max pooling (no pad): output ``ceil((H - k) / s) + 1`` (``CAFFE_POOL_CEIL``). Pads the bottom/right
    edge with -inf up to ``(out - 1) * s + k`` and pools 'valid'. ``ceil_mode=False`` gives Keras' floor."""

    def __init__(self, pool_size: int = CAFFE_POOL_KERNEL, strides: int = CAFFE_POOL_STRIDE,
                 ceil_mode: bool = CAFFE_POOL_CEIL, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides, self.ceil_mode = int(pool_size), int(strides), bool(ceil_mode)

    def _out_and_pad(self, n: int) -> tuple[int, int]:
        out = caffe_pool_out(n, self.pool_size, self.strides, ceil=self.ceil_mode)
        return out, max((out - 1) * self.strides + self.pool_size - n, 0)

    def call(self, x):
        _, ph = self._out_and_pad(int(x.shape[1]))
        _, pw = self._out_and_pad(int(x.shape[2]))
        if ph or pw:
            x = ops.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]], constant_values=NEG_INF)
        return ops.max_pool(x, self.pool_size, self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, self._out_and_pad(h)[0], self._out_and_pad(w)[0], c)

    def get_config(self):
        return {**super().get_config(), "pool_size": (self.pool_size, self.pool_size),
                "strides": (self.strides, self.strides), "padding": "valid", "ceil_mode": self.ceil_mode}


@keras.saving.register_keras_serializable(package="parity")
class CaffeLRN(layers.Layer):
    """Caffe ``LRN`` (``ACROSS_CHANNELS``), lrn_layer.cpp: ``out = x * (k + alpha / size * sum(x^2))^-beta``, the
    sum over ``size`` channels centred on each channel (zero-padded: ``(size - 1) / 2`` before, the rest after),
    exactly ``torch.nn.LocalResponseNorm(size, alpha, beta, k)``. ``alpha`` is Caffe's (divided by ``size`` here)."""

    def __init__(self, size: int = CAFFE_LRN_SIZE, alpha: float = CAFFE_LRN_ALPHA, beta: float = CAFFE_LRN_BETA,
                 k: float = CAFFE_LRN_K, **kwargs):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def call(self, x):
        channels = int(x.shape[-1])
        before = (self.size - 1) // 2
        sq = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [before, self.size - 1 - before]])
        window = sq[..., 0:channels]
        for i in range(1, self.size):
            window = window + sq[..., i:i + channels]
        scale = ops.add(_const(self.k, x.dtype), ops.multiply(_const(self.alpha / self.size, x.dtype), window))
        return ops.multiply(x, ops.power(scale, _const(-self.beta, x.dtype)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


def _padding(kernel: int, stride: int, pad: int) -> str:
    if pad == 0:
        return "valid"
    if stride == 1 and kernel % 2 == 1 and pad == (kernel - 1) // 2:
        return "same"  # CAFFE_PAD_AS_SAME
    raise ValueError(f"expected Caffe pad 0 or (k-1)/2 at stride 1. Received: kernel {kernel}, stride {stride}, "
                     f"pad {pad}; add explicit ZeroPadding2D for this layer.")


def caffenet_stream(x, stream: str, ceil_mode: bool = CAFFE_POOL_CEIL):
    """conv1 .. pool5 of one CaffeNet stream, layers named ``{stream}_{caffe name}``."""
    for name, filters, kernel, stride, pad, groups, bias in CONV_LAYERS:
        i = name[-1]
        x = layers.Conv2D(filters, kernel, strides=stride, padding=_padding(kernel, stride, pad), groups=groups,
                          kernel_initializer=keras.initializers.RandomNormal(stddev=CAFFENET_CONV_WEIGHT_STD),
                          bias_initializer=keras.initializers.Constant(bias), name=f"{stream}_{name}")(x)
        x = layers.Activation("relu", name=f"{stream}_relu{i}")(x)
        if name in POOLED_AFTER:
            x = CaffeMaxPool2D(ceil_mode=ceil_mode, name=f"{stream}_pool{i}")(x)
        if name in LRN_AFTER:
            x = CaffeLRN(name=f"{stream}_norm{i}")(x)
    return x


def goturn(input_shape=GOTURN_INPUT_HW + (STACKED_INPUT_CHANNELS,), fc_units=GOTURN_FC_UNITS,
           num_outputs=GOTURN_OUTPUTS, dropout=PARITY_DROPOUT_RATE):
    """Build the reference. ``input_shape`` (H, W, 6): target in channels 0:3, image in 3:6. Returns fc8
    (the box regression, no activation). ``fc_units``/``dropout``: GOTURN uses 4096 / 0.5."""
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != STACKED_INPUT_CHANNELS:
        raise ValueError(f"goturn: expected input_shape (H, W, {STACKED_INPUT_CHANNELS}) with target in channels "
                         f"0:3 and image in 3:6. Received: {input_shape}. Stack the two crops on the channel axis.")
    frames = keras.Input(input_shape, name="target_image")
    pooled = [caffenet_stream(ChannelSlice(*STREAM_SLICES[s], name=f"split_{s}")(frames), s) for s in STREAMS]
    x = layers.Concatenate(axis=-1, name="concat")(pooled)
    x = layers.Flatten(name="flatten")(x)
    fc_init = keras.initializers.RandomNormal(stddev=GOTURN_FC_WEIGHT_STD)
    for fc, drop in (("fc6", "6"), ("fc7", "7"), ("fc7b", "7b")):
        x = layers.Dense(fc_units, kernel_initializer=fc_init,
                         bias_initializer=keras.initializers.Constant(GOTURN_FC_BIAS), name=fc)(x)
        x = layers.Activation("relu", name=f"relu{drop}")(x)
        x = layers.Dropout(dropout, name=f"drop{drop}")(x)
    out = layers.Dense(num_outputs, kernel_initializer=keras.initializers.RandomNormal(stddev=GOTURN_FC8_WEIGHT_STD),
                       bias_initializer=keras.initializers.Constant(GOTURN_FC8_BIAS), name="fc8")(x)
    return keras.Model(frames, out, name="GOTURN")
