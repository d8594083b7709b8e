"""Xception (``keras.applications.Xception``, stable names) <-> ported_torch.xception."""
from __future__ import annotations

from parity.core.conventions import KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, TORCH_BN_MOMENTUM_FROM_KERAS
from parity.pairs.registry import register
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap

#: Blocks with a 1x1/2 conv shortcut, and the torch module holding each (entry and exit flows).
DOWN_BLOCKS = ((2, "entry"), (3, "entry"), (4, "entry"), (13, "exit"))
#: Keras blocks 5..12 of the middle flow <-> torch ``middle.0`` .. ``middle.7``.
MIDDLE_BLOCKS = tuple(range(5, 13))

XCEPTION_SGD_LR = 0.045
"""Chollet 2017, sec. 4.3 (ImageNet): SGD, momentum 0.9, initial learning rate 0.045, x0.94 every 2 epochs
(a CIFAR-10 variant trained with this schedule reaches 85-87 %)."""
XCEPTION_SGD_MOMENTUM = 0.9
XCEPTION_WEIGHT_DECAY = 1e-5
"""Chollet 2017, sec. 4.3: "weight decay (L2 regularization) rate" 1e-5 for Xception. keras.applications
carries no regulariser, so it is offered as torch's coupled ``weight_decay`` (OptimizerSpec.weight_decay)."""


def _tap(path_prefix: str, ref_prefix: str, port_prefix: str, suffix: str, kind: str, **kw) -> Tap:
    """``suffix`` is the Keras layer suffix (``sepconv1_bn``); the path id spells it with slashes."""
    return Tap(f"{path_prefix}/{suffix.replace('_', '/')}", f"{ref_prefix}_{suffix}", f"{port_prefix}.{suffix}",
               kind, **kw)


def _sepconv(path, ref, port, k: int, act_first: bool) -> list[Tap]:
    """Keras ``sepconv{k}_act`` (ReLU *before* the conv in blocks 2..13), ``sepconv{k}``, ``sepconv{k}_bn``."""
    act = _tap(path, ref, port, f"sepconv{k}_act", "activation")
    conv_bn = [_tap(path, ref, port, f"sepconv{k}", "separable_conv2d"),
               _tap(path, ref, port, f"sepconv{k}_bn", "batchnorm")]
    return ([act] if act_first else []) + conv_bn


def taps(config: dict) -> list[Tap]:
    """Every layer of the reference, in its topological order (Keras ``model.layers``), which the port's
    forward follows too. Path ids: ``{entry|middle|exit}/block{n}/{keras suffix with /}``; note that in
    Keras (and here) ``sepconvK/act`` is the ReLU applied *before* ``sepconvK`` except in block14."""
    t: list[Tap] = []
    if config.get("upsample"):
        t.append(Tap("input/upsample", "upsample", "upsample", "other"))
    p, r, m = "entry/block1", "block1", "entry.block1"
    for k in (1, 2):
        t += [_tap(p, r, m, f"conv{k}", "conv2d"), _tap(p, r, m, f"conv{k}_bn", "batchnorm"),
              _tap(p, r, m, f"conv{k}_act", "activation")]

    def down_block(n: int, flow: str) -> list[Tap]:
        p, r, m = f"{flow}/block{n}", f"block{n}", f"{flow}.block{n}"
        return (_sepconv(p, r, m, 1, act_first=n != 2) + _sepconv(p, r, m, 2, act_first=True) + [
            _tap(p, r, m, "residual_conv", "conv2d"),
            _tap(p, r, m, "pool", "maxpool"),
            _tap(p, r, m, "residual_bn", "batchnorm"),
            _tap(p, r, m, "add", "add"),
        ])

    for n, flow in DOWN_BLOCKS[:3]:
        t += down_block(n, flow)
    for i, n in enumerate(MIDDLE_BLOCKS):
        p, r, m = f"middle/block{n}", f"block{n}", f"middle.{i}"
        for k in (1, 2, 3):
            t += _sepconv(p, r, m, k, act_first=True)
        t.append(_tap(p, r, m, "add", "add"))
    t += down_block(*DOWN_BLOCKS[3])
    p, r, m = "exit/block14", "block14", "exit.block14"
    for k in (1, 2):  # block14: ReLU *after* BN
        t += _sepconv(p, r, m, k, act_first=False) + [_tap(p, r, m, f"sepconv{k}_act", "activation")]
    if config.get("include_top", True):
        t.append(Tap("top/avg_pool", "avg_pool", "avg_pool", "gap"))
        # The reference's Dense carries the softmax; in the port it belongs to F.cross_entropy.
        softmax = config.get("classifier_activation", "softmax") == "softmax"
        t.append(Tap("top/predictions", "predictions", "predictions", "dense",
                     port_transform="softmax" if softmax else None))
    elif config.get("pooling") == "avg":
        t.append(Tap("top/avg_pool", "avg_pool", "avg_pool", "gap"))
    return t


SPEC = register(PairSpec(
    name="xception",
    summary="Xception (Chollet 2017, keras.applications), Keras -> PyTorch",
    reference="reference_keras.xception:xception",
    port="ported_torch.xception:xception",
    taps=taps,
    input_shape=lambda c: tuple(c["input_shape"]),
    target=lambda c: ("onehot", c["num_classes"]),
    loss=LossSpec("categorical_crossentropy", "mean"),
    optimizer=OptimizerSpec(kind="sgd", lr=XCEPTION_SGD_LR, momentum=XCEPTION_SGD_MOMENTUM),
    optimizers={
        "sgd_weight_decay": OptimizerSpec(kind="sgd", lr=XCEPTION_SGD_LR, momentum=XCEPTION_SGD_MOMENTUM,
                                          weight_decay=XCEPTION_WEIGHT_DECAY),
    },
    conventions=(
        Convention("BatchNorm epsilon", f"{KERAS_BN_EPSILON} (Keras default)", f"eps={KERAS_BN_EPSILON}",
                   "keras BatchNormalization default; torch default 1e-5"),
        Convention("BatchNorm momentum", f"{KERAS_BN_MOMENTUM} (weight of old value)",
                   f"momentum={TORCH_BN_MOMENTUM_FROM_KERAS:g} (weight of new value)", "torch m = 1 - keras m"),
        Convention("padding", "MaxPooling2D 3/2 'same' (TF: extra pixel bottom/right)",
                   "MaxPool2dSame / Conv2dSame / SeparableConv2d('same')",
                   "tensorflow nn_ops 'same'; at 299 block3 pools 74 -> 37, where MaxPool2d(3, 2, padding=1) "
                   "shifts every window"),
        Convention("softmax", "Dense(classes, activation='softmax') 'predictions'",
                   "nn.Linear 'predictions' (logits), softmax in F.cross_entropy",
                   "categorical_crossentropy on probabilities == cross_entropy on logits"),
        Convention("layer names", "keras.applications.Xception with counter names replaced "
                   "(blockN_residual_conv/_bn, blockN_add, image)", "modules named after the Keras layers",
                   "reference_keras.xception.stable_names"),
        Convention("middle flow", "8 distinct blocks (block5..block12)", "middle.0 .. middle.7, 8 modules",
                   "Chollet 2017 fig. 5; a shared block is caught by ported_torch.inspect.find_shared_modules"),
    ),
    default_config={"input_shape": (299, 299, 3), "num_classes": 1000, "include_top": True,
                    "classifier_activation": "softmax"},
    # 75x75: the smallest input >= keras.applications' minimum of 71 whose pools see the same TF-'same'
    # padding as at 299 (block2 odd, block3 EVEN, block4 odd, block13 odd: 35, 18, 9, 5 vs 147, 74, 37,
    # 19). At 71 (33, 17, 9, 5) every pool input is odd, 'same' pads symmetrically and the classic
    # MaxPool2d(3, 2, padding=1) mistake would pass unseen.
    fast_config={"input_shape": (75, 75, 3), "num_classes": 10, "include_top": True,
                 "classifier_activation": "softmax"},
    default_batch=2,
    published_params={"total": 22910480, "trainable": 22855952, "non_trainable": 54528},
))
