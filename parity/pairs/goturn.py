"""The GOTURN pair's registration: taps, Caffe solver multipliers and the :class:`PairSpec`. The net's facts
(architecture, Caffe conventions, geometry) are :mod:`parity.core.goturn_net`, imported by both models."""
from __future__ import annotations

import parity.optim.caffe  # noqa: F401  (registers the "caffe_sgd" optimizer adapter)
from parity.core.goturn_net import (BIAS_DECAY_MULT, CAFFENET_CONV_WEIGHT_STD, CAFFE_FC_NAMES, CAFFE_LRN_ALPHA, CAFFE_LRN_BETA, CAFFE_LRN_K, CAFFE_LRN_SIZE, CAFFE_POOL_CEIL, CAFFE_POOL_KERNEL, CAFFE_POOL_STRIDE, CONV_LAYERS, CONV_LR_MULT, FC_BIAS_LR_MULT, FC_LAYERS, FC_WEIGHT_LR_MULT, GOTURN_BASE_LR, GOTURN_BATCH, GOTURN_DROPOUT_RATIO, GOTURN_FC8_BIAS, GOTURN_FC8_WEIGHT_STD, GOTURN_FC_BIAS, GOTURN_FC_UNITS, GOTURN_FC_WEIGHT_STD, GOTURN_INPUT_HW, GOTURN_INPUT_RANGE, GOTURN_LR_STEP_GAMMA, GOTURN_MOMENTUM, GOTURN_OUTPUTS, GOTURN_PARAMS, GOTURN_WEIGHT_DECAY, LRN_AFTER, PARITY_DROPOUT_RATE, POOLED_AFTER, STACKED_INPUT_CHANNELS, STREAMS, STREAM_CHANNELS, STREAM_SLICES, TF_LRN_ALPHA, TF_LRN_BIAS, TF_LRN_DEPTH_RADIUS, WEIGHT_DECAY_MULT, caffe_conv_out, caffe_pool_out, concat_chw, pool_remainders, stream_sizes)  # noqa: F401  (the net's facts, re-exported for the pair's users)
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap
from parity.pairs.registry import register


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
    """(lr_mult, decay_mult) keyed like :class:`parity.core.spec.OptimizerSpec`: ``"layer:kernel"``/``"layer:bias"``."""
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
    weights_loader="weight_converters.goturn:load_goturn_weights",
    randomize_bn=False,
    input_range=GOTURN_INPUT_RANGE,
))
