"""GOTURN (Held, Thrun, Savarese 2016, "Learning to Track at 100 FPS with Deep Regression Networks"), the
Caffe tracker net of davheld/GOTURN @ae8df641 ``nets/tracker.prototxt`` + ``nets/solver.prototxt``, rebuilt in
Keras 3 with Caffe semantics (``reference_keras/goturn.py``) <-> ``ported_torch/goturn.py``.

This module is the pair's data: its named conventions (every number of the two models comes from here, each
with where it comes from), the Caffe geometry (pure Python, so the torch port can size ``fc6`` without
running anything) and the registration. It imports no framework.

Caffe facts the two sides must agree on (../shared/reference-facts.md, Caffe source semantics):

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

import parity.optim_caffe  # noqa: F401  (registers the "caffe_sgd" optimizer adapter)
from parity.registry import register
from parity.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap

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
"""GOTURN's training batch (../shared/reference-facts.md); ASUM makes the gradient scale with it."""

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
def _stream_taps(stream: str) -> list[Tap]:
    # The ChannelSlice layers (split_target / split_image) are not tapped: they have no weights and no
    # gradient path on the torch side (the input does not require grad); a wrong split shows at conv1.
    t = []
    for name, *_ in CONV_LAYERS:
        i = name[-1]
        t.append(Tap(f"{stream}/{name}", f"{stream}_{name}", f"{stream}.{name}", "conv2d"))
        t.append(Tap(f"{stream}/relu{i}", f"{stream}_relu{i}", f"{stream}.relu{i}", "activation"))
        if name in POOLED_AFTER:
            t.append(Tap(f"{stream}/pool{i}", f"{stream}_pool{i}", f"{stream}.pool{i}", "maxpool"))
        if name in LRN_AFTER:
            t.append(Tap(f"{stream}/norm{i}", f"{stream}_norm{i}", f"{stream}.norm{i}", "lrn"))
    return t


def taps(config: dict) -> list[Tap]:
    chw = concat_chw(tuple(config["input_shape"][:2]))
    t = []
    for stream in STREAMS:
        t += _stream_taps(stream)
    t += [
        Tap("concat", "concat", "concat", "concat"),
        # Keras Flatten is HWC, nn.Flatten CHW: the harness reorders the reference's flatten output and the
        # converter the rows of fc6's kernel (FLATTEN convention below).
        Tap("flatten", "flatten", "flatten", "flatten", flatten_chw=chw),
        Tap("fc6", "fc6", "fc6", "dense", flatten_chw=chw),
        Tap("relu6", "relu6", "relu6", "activation"),
        Tap("drop6", "drop6", "drop6", "dropout"),
        Tap("fc7", "fc7", "fc7", "dense"),
        Tap("relu7", "relu7", "relu7", "activation"),
        Tap("drop7", "drop7", "drop7", "dropout"),
        Tap("fc7b", "fc7b", "fc7b", "dense"),
        Tap("relu7b", "relu7b", "relu7b", "activation"),
        Tap("drop7b", "drop7b", "drop7b", "dropout"),
        Tap("fc8", "fc8", "fc8", "dense"),
    ]
    return t


def caffe_multipliers() -> tuple[dict[str, float], dict[str, float]]:
    """(lr_mult, decay_mult) keyed like :class:`parity.spec.OptimizerSpec`: ``"layer:kernel"``/``"layer:bias"``."""
    lr_mult, decay_mult = {}, {}
    for stream in STREAMS:
        for name, *_ in CONV_LAYERS:
            lr_mult[f"{stream}_{name}"] = CONV_LR_MULT
            decay_mult[f"{stream}_{name}:kernel"] = WEIGHT_DECAY_MULT
            decay_mult[f"{stream}_{name}:bias"] = BIAS_DECAY_MULT
    for fc in FC_LAYERS:
        lr_mult[f"{fc}:kernel"] = FC_WEIGHT_LR_MULT
        lr_mult[f"{fc}:bias"] = FC_BIAS_LR_MULT
        decay_mult[f"{fc}:kernel"] = WEIGHT_DECAY_MULT
        decay_mult[f"{fc}:bias"] = BIAS_DECAY_MULT
    return lr_mult, decay_mult


_LR_MULT, _DECAY_MULT = caffe_multipliers()

#: Fast (CI) size: 79x79 makes pool1 (18 -> 9, floor 8) and pool5 (4 -> 2) round up, so a port with floor
#: pooling diverges at target/pool1; 227 divides every pool exactly and cannot tell them apart. fc width
#: 512 keeps the float64 fast check at ~6.2 M parameters instead of 46.7 M (the layers and conventions are
#: the same; the full width runs in ``default_config``).
FAST_INPUT_SHAPE = (79, 79, STACKED_INPUT_CHANNELS)
FAST_FC_UNITS = 512

SPEC = register(PairSpec(
    name="goturn",
    summary="GOTURN tracker (Held et al. 2016), Caffe semantics in Keras -> PyTorch",
    reference="reference_keras.goturn:goturn",
    port="ported_torch.goturn:goturn",
    taps=taps,
    input_shape=lambda c: tuple(c["input_shape"]),
    target=lambda c: ("regression", c.get("num_outputs", GOTURN_OUTPUTS)),
    loss=LossSpec("l1_sum", "sum"),
    optimizer=OptimizerSpec(kind="caffe_sgd", lr=GOTURN_BASE_LR, momentum=GOTURN_MOMENTUM,
                            weight_decay=GOTURN_WEIGHT_DECAY, lr_mult=_LR_MULT, decay_mult=_DECAY_MULT),
    optimizers={
        # The naive port: torch.optim.SGD-style (and Keras SGD) with the solver's numbers, no multipliers.
        "sgd": OptimizerSpec(kind="sgd", lr=GOTURN_BASE_LR, momentum=GOTURN_MOMENTUM,
                             weight_decay=GOTURN_WEIGHT_DECAY),
        # Caffe SGD across an lr step (lr_policy "step", gamma 0.1, compressed to one step): where Caffe's
        # lr-before-momentum rule and torch.optim.SGD's lr-after-momentum rule part ways.
        "caffe_sgd_lr_step": OptimizerSpec(kind="caffe_sgd", lr=GOTURN_BASE_LR, momentum=GOTURN_MOMENTUM,
                                           weight_decay=GOTURN_WEIGHT_DECAY, lr_mult=_LR_MULT,
                                           decay_mult=_DECAY_MULT,
                                           lr_schedule=(GOTURN_BASE_LR, GOTURN_BASE_LR * GOTURN_LR_STEP_GAMMA)),
    },
    conventions=(
        Convention("stacked input", "one (H, W, 6) input, split: target = channels 0:3, image = 3:6",
                   "one (N, 6, H, W) input, ChannelSlice 0:3 / 3:6",
                   "parity convention (tracker.prototxt has two inputs); STACKED_INPUT_CHANNELS"),
        Convention("pooling rounding", "CaffeMaxPool2D: -inf pad bottom/right to ceil size, then 'valid'",
                   "nn.MaxPool2d(3, 2, ceil_mode=True)", "caffe pooling_layer.cpp: ceil((H - k) / s) + 1"),
        Convention("LRN alpha", f"CaffeLRN(size={CAFFE_LRN_SIZE}, alpha={CAFFE_LRN_ALPHA:g}) = tf LRN "
                   f"depth_radius {TF_LRN_DEPTH_RADIUS}, alpha {TF_LRN_ALPHA:g}",
                   f"nn.LocalResponseNorm({CAFFE_LRN_SIZE}, alpha={CAFFE_LRN_ALPHA:g}, beta={CAFFE_LRN_BETA}, "
                   f"k={CAFFE_LRN_K:g})", "caffe lrn_layer.cpp: scale = k + alpha / n * sum(a^2)"),
        Convention("flatten order", "Flatten (HWC) of the (H, W, 512) concat; fc6 kernel rows in HWC order",
                   "nn.Flatten (CHW, as Caffe InnerProduct); fc6 rows reordered HWC -> CHW by the converter",
                   "Tap.flatten_chw on flatten and fc6"),
        Convention("grouped convs", "Conv2D(groups=2), kernel (kh, kw, in/2, out)",
                   "nn.Conv2d(groups=2), weight (out, in/2, kh, kw)", "tracker.prototxt group: 2 (conv2, 4, 5)"),
        Convention("dropout", f"Dropout(rate={PARITY_DROPOUT_RATE}) (published {GOTURN_DROPOUT_RATIO})",
                   f"nn.Dropout(p={PARITY_DROPOUT_RATE})", "masks cannot match across frameworks"),
        Convention("loss", "sum |fc8 - bbox| over batch and outputs (ASUM)", "(pred - y).abs().sum()",
                   f"tracker.prototxt Reduction operation 2; gradient scales with batch ({GOTURN_BATCH} in GOTURN)"),
        Convention("optimizer", "CaffeSGD: h = mu*h + lr*lr_mult*(g + wd*decay_mult*w); w -= h",
                   "CaffeSGD (same rule, per-group lr_mult/decay_mult)",
                   "caffe sgd_solver.cpp; torch.optim.SGD applies lr after momentum"),
        Convention("lr_mult / decay_mult", f"convs lr_mult {CONV_LR_MULT:g} (frozen); fc weights "
                   f"{FC_WEIGHT_LR_MULT:g}, biases {FC_BIAS_LR_MULT:g}; decay_mult 1 weights, 0 biases",
                   "same, per param group", "tracker.prototxt param {}"),
    ),
    default_config={"input_shape": GOTURN_INPUT_HW + (STACKED_INPUT_CHANNELS,), "fc_units": GOTURN_FC_UNITS,
                    "num_outputs": GOTURN_OUTPUTS, "dropout": PARITY_DROPOUT_RATE},
    fast_config={"input_shape": FAST_INPUT_SHAPE, "fc_units": FAST_FC_UNITS, "num_outputs": GOTURN_OUTPUTS,
                 "dropout": PARITY_DROPOUT_RATE},
    default_batch=2,
    published_params={"total": GOTURN_PARAMS, "trainable": GOTURN_PARAMS, "non_trainable": 0},
    weights_format="caffe",
    weights_loader="weight_converters.caffe:load_goturn_weights",
    randomize_bn=False,
    input_range=GOTURN_INPUT_RANGE,
))
