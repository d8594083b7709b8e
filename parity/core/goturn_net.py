"""GOTURN (Held, Thrun, Savarese 2016, "Learning to Track at 100 FPS with Deep Regression Networks"), the
Caffe tracker net of davheld/GOTURN @ae8df641 ``nets/tracker.prototxt`` + ``nets/solver.prototxt``, rebuilt in
Keras 3 with Caffe semantics (``reference_keras/goturn.py``) <-> ``ported_torch/goturn.py``.

This module is the net's facts: its named conventions (every number of the two models comes from here, each
with where it comes from) and the Caffe geometry (pure Python, so the torch port can size ``fc6`` without
running anything). It imports nothing; the registration is ``parity/pairs/goturn.py``.

Caffe facts the two sides must agree on (BVLC/caffe ``src/caffe/layers/*.cpp`` semantics):

- Pooling rounds its output size *up* (``caffe/src/caffe/layers/pooling_layer.cpp``:
  ``pooled_height_ = ceil((height_ + 2 * pad_h_ - kernel_h_) / stride_h_) + 1``): torch ``ceil_mode=True``;
  Keras has no such mode, the reference pads bottom/right with -inf first. At 227x227 every pool divides
  exactly (55 -> 27 -> 13 -> 6), so only another input size (``fast_config``) can catch a floor-pooling port.
- LRN across channels divides ``alpha`` by ``local_size`` (``lrn_layer.cpp``: ``scale = k + alpha / n * sum``),
  exactly like ``torch.nn.LocalResponseNorm``; ``tf.nn.local_response_normalization`` uses a per-element
  alpha (``alpha_tf = alpha / n``, ``depth_radius = (n - 1) / 2``).
- ``InnerProduct`` flattens C, H, W; Keras ``Flatten`` flattens H, W, C.
- The loss is ``Reduction`` ASUM of ``fc8 - bbox``: a *sum* over batch and outputs, so its gradient grows
  with the batch size (GOTURN trained with batch 50; the check uses ``default_batch`` 2).
- The solver is Caffe SGD: ``history = momentum * history + lr * lr_mult * (g + weight_decay * decay_mult * w)``,
  ``w -= history`` (``sgd_solver.cpp``), with lr applied *before* momentum: not torch.optim.SGD once lr changes.
"""
from __future__ import annotations


# --- Architecture: nets/tracker.prototxt -------------------------------------------------------------------
STREAMS = ("target", "image")
"""tracker.prototxt inputs ``target`` (previous frame crop) and ``image`` (current frame search region);
the target stream's layers are ``conv1..pool5``, the image stream's ``conv1_p..pool5_p``; ``concat`` takes
``pool5`` first, then ``pool5_p``."""
STREAM_CHANNELS = 3
"""Each stream takes a 3-channel (BGR) image: tracker.prototxt ``input_dim: 3``."""
STACKED_INPUT_CHANNELS = len(STREAMS) * STREAM_CHANNELS
"""Parity convention, not Caffe's: the harness feeds one array, so both models take target and image stacked
on the channel axis, (H, W, 6) = target channels 0:3, image channels 3:6, and split it inside the model."""
STREAM_SLICES = {"target": (0, STREAM_CHANNELS), "image": (STREAM_CHANNELS, 2 * STREAM_CHANNELS)}
"""Channel range of each stream in the stacked input (see ``STACKED_INPUT_CHANNELS``)."""
GOTURN_INPUT_HW = (227, 227)
"""tracker.prototxt ``input_dim: 227`` (CaffeNet's crop size)."""

#: CaffeNet convolutions as in tracker.prototxt: (name, num_output, kernel_size, stride, pad, group,
#: bias_filler value). weight_filler is gaussian std ``CAFFENET_CONV_WEIGHT_STD`` for all five.
CONV_LAYERS = (
    ("conv1", 96, 11, 4, 0, 1, 0.0),
    ("conv2", 256, 5, 1, 2, 2, 1.0),
    ("conv3", 384, 3, 1, 1, 1, 0.0),
    ("conv4", 384, 3, 1, 1, 2, 1.0),
    ("conv5", 256, 3, 1, 1, 2, 1.0),
)
CAFFENET_CONV_WEIGHT_STD = 0.01
"""tracker.prototxt conv1..conv5 ``weight_filler { type: "gaussian" std: 0.01 }`` (in training the convs come
from pretrained CaffeNet and stay frozen, ``lr_mult: 0``)."""
POOLED_AFTER = ("conv1", "conv2", "conv5")
"""Max pooling (``pool1``, ``pool2``, ``pool5``) follows the ReLU of these convs."""
LRN_AFTER = ("conv1", "conv2")
"""LRN (``norm1``, ``norm2``) follows ``pool1`` and ``pool2``."""
CAFFE_POOL_KERNEL = 3
"""tracker.prototxt ``pooling_param { pool: MAX kernel_size: 3 stride: 2 }`` (pool1, pool2, pool5)."""
CAFFE_POOL_STRIDE = 2
CAFFE_POOL_CEIL = True
"""Caffe pooling output size: ``ceil((H + 2 * pad - k) / s) + 1`` (pooling_layer.cpp), clipped so the last
window starts inside the (left-padded) input. torch: ``nn.MaxPool2d(ceil_mode=True)`` (same clip); Keras:
pad bottom/right with -inf, then a 'valid' pool. ``ceil_mode=False`` (floor) is the classic port mistake."""

CAFFE_LRN_SIZE = 5
"""tracker.prototxt norm1/norm2 ``lrn_param { local_size: 5 ... }``."""
CAFFE_LRN_ALPHA = 1e-4
"""``lrn_param alpha: 0.0001``. Caffe divides it by ``local_size`` (lrn_layer.cpp ``scale = k + alpha / n *
sum(a^2)``), and so does ``torch.nn.LocalResponseNorm``: pass 1e-4, not ``1e-4 * 5``."""
CAFFE_LRN_BETA = 0.75
"""``lrn_param beta: 0.75``."""
CAFFE_LRN_K = 1.0
"""``LRNParameter.k`` default 1 (caffe.proto); tracker.prototxt does not set it."""
TF_LRN_ALPHA = CAFFE_LRN_ALPHA / CAFFE_LRN_SIZE
"""``tf.nn.local_response_normalization`` multiplies each squared element by its ``alpha``: alpha_tf = alpha / n."""
TF_LRN_DEPTH_RADIUS = (CAFFE_LRN_SIZE - 1) // 2
"""``tf.nn.local_response_normalization(depth_radius=2)`` sums 2 * 2 + 1 = 5 channels, centred."""
TF_LRN_BIAS = CAFFE_LRN_K
"""TF's ``bias`` is Caffe's ``k``."""

FC_LAYERS = ("fc6", "fc7", "fc7b", "fc8")
"""Reference/port layer names of tracker.prototxt ``fc6-new``, ``fc7-new``, ``fc7-newb``, ``fc8-shapes``."""
CAFFE_FC_NAMES = {"fc6": "fc6-new", "fc7": "fc7-new", "fc7b": "fc7-newb", "fc8": "fc8-shapes"}
"""Caffe layer name of each fully connected layer (tracker.prototxt), as keys of a Caffe weight dict."""
GOTURN_FC_UNITS = 4096
"""``fc6-new``/``fc7-new``/``fc7-newb`` ``num_output: 4096``."""
GOTURN_OUTPUTS = 4
"""``fc8-shapes`` ``num_output: 4``: the box (x1, y1, x2, y2) of the target in the search region."""
GOTURN_FC_WEIGHT_STD = 0.005
"""fc6-new/fc7-new/fc7-newb ``weight_filler { gaussian std: 0.005 }``, ``bias_filler { constant value: 1 }``."""
GOTURN_FC_BIAS = 1.0
GOTURN_FC8_WEIGHT_STD = 0.01
"""fc8-shapes ``weight_filler { gaussian std: 0.01 }``, ``bias_filler { constant value: 0 }``."""
GOTURN_FC8_BIAS = 0.0
GOTURN_DROPOUT_RATIO = 0.5
"""tracker.prototxt drop6/drop7/drop7b ``dropout_ratio: 0.5``."""
PARITY_DROPOUT_RATE = 0.0
"""Parity config: dropout off. Two frameworks cannot draw the same dropout mask, so the check keeps the
Dropout layers (tapped, kind ``dropout``) with rate 0 in both models; pass ``dropout=0.5`` for training."""

GOTURN_PARAMS = 113_748_740
"""Parameters of the tracker net at 227x227 (two conv streams of 2,334,080 each + fc6..fc8)."""

# --- Solver: nets/solver.prototxt + per-layer param {} of tracker.prototxt ---------------------------------
GOTURN_BASE_LR = 1e-6
"""solver.prototxt ``base_lr: 0.000001`` (``lr_policy: "step"``, ``gamma: 0.1``, ``stepsize: 100000``)."""
GOTURN_LR_STEP_GAMMA = 0.1
"""solver.prototxt ``gamma: 0.1``: the lr drops tenfold every ``stepsize`` iterations."""
GOTURN_MOMENTUM = 0.9
"""solver.prototxt ``momentum: 0.9``."""
GOTURN_WEIGHT_DECAY = 5e-4
"""solver.prototxt ``weight_decay: 0.0005`` (Caffe's coupled L2: added to the gradient, times decay_mult)."""
CONV_LR_MULT = 0.0
"""conv1..conv5 (both streams) ``param { lr_mult: 0 }``: the pretrained CaffeNet features stay frozen."""
FC_WEIGHT_LR_MULT = 10.0
"""fc layers ``param { lr_mult: 10 decay_mult: 1 }`` (weights)."""
FC_BIAS_LR_MULT = 20.0
"""fc layers ``param { lr_mult: 20 decay_mult: 0 }`` (biases)."""
WEIGHT_DECAY_MULT = 1.0
"""Every weight: ``decay_mult: 1``; every bias: ``decay_mult: 0`` (``BIAS_DECAY_MULT``)."""
BIAS_DECAY_MULT = 0.0
GOTURN_BATCH = 50
"""GOTURN's training batch (davheld/GOTURN ``nets/solver.prototxt`` / ``train.cpp``); ASUM makes the gradient scale with it."""

# --- Data ---------------------------------------------------------------------------------------------------
GOTURN_INPUT_RANGE = (-128.0, 128.0)
"""GOTURN feeds 8-bit BGR crops minus the mean (104, 117, 123), unscaled (src/network/regressor.cpp ``SetMean``
and ``Preprocess``): values within about +-150. Generated parity inputs are uniform in this range, so the LRN
term ``alpha / n * sum(a^2)`` is far from negligible and an alpha mistake shows."""


# --- Caffe geometry (pure Python) -------------------------------------------------------------------------
def caffe_conv_out(n: int, kernel: int, stride: int = 1, pad: int = 0) -> int:
    """Caffe convolution output size: ``(n + 2 * pad - kernel) // stride + 1`` (floor, conv_layer.cpp)."""
    return (n + 2 * pad - kernel) // stride + 1


def caffe_pool_out(n: int, kernel: int = CAFFE_POOL_KERNEL, stride: int = CAFFE_POOL_STRIDE, pad: int = 0,
                   ceil: bool = CAFFE_POOL_CEIL) -> int:
    """Caffe pooling output size (``CAFFE_POOL_CEIL``); ``ceil=False`` gives the floor rule of torch's default
    and of Keras/TF 'valid' pooling."""
    span = n + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= n + pad:
        out -= 1
    return out


def stream_sizes(input_hw: tuple[int, int], ceil: bool = CAFFE_POOL_CEIL) -> dict[str, tuple[int, int]]:
    """Spatial size after every layer of one CaffeNet stream: ``{"conv1": (h, w), "pool1": ..., "pool5": ...}``."""
    h, w = input_hw
    sizes = {}
    for name, _, k, s, p, _, _ in CONV_LAYERS:
        h, w = caffe_conv_out(h, k, s, p), caffe_conv_out(w, k, s, p)
        sizes[name] = (h, w)
        if name in POOLED_AFTER:
            h, w = caffe_pool_out(h, ceil=ceil), caffe_pool_out(w, ceil=ceil)
            sizes[f"pool{name[-1]}"] = (h, w)
    return sizes


def concat_chw(input_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(C, H, W) of ``pool5_concat``, the tensor ``fc6`` flattens: 2 x conv5 channels, pool5's size."""
    h, w = stream_sizes(input_hw)["pool5"]
    return len(STREAMS) * CONV_LAYERS[-1][1], h, w


def pool_remainders(input_hw: tuple[int, int]) -> list[str]:
    """The pools whose window does not tile the input exactly (where ceil and floor pooling differ)."""
    sizes = stream_sizes(input_hw)
    return [f"pool{name[-1]}" for name in POOLED_AFTER
            if any(caffe_pool_out(n) != caffe_pool_out(n, ceil=False) for n in sizes[name])]


# --- Taps -----------------------------------------------------------------------------------------------
