"""Facial-keypoints CNN (Keras twin) <-> ported_torch.keypoints (the published PyTorch model)."""
from __future__ import annotations

from parity.core.conventions import KERAS_FLATTEN_ORDER, TORCH_FLATTEN_ORDER
from parity.pairs.registry import register
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap

SANDWICHES = 4
LAST_FILTERS = 256
NUM_OUTPUTS = 30

KEYPOINTS_SGD_LR = 0.01
"""Published training: ``optim.SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-6)``."""
KEYPOINTS_SGD_MOMENTUM = 0.9
KEYPOINTS_WEIGHT_DECAY = 1e-6
"""torch's *coupled* weight decay (``OptimizerSpec.weight_decay``): g <- g + wd * w *before* the momentum
buffer, so the decay passes through momentum (and Nesterov's look-ahead).

Keras has no coupled form: ``keras.optimizers.SGD(weight_decay=wd)`` is *decoupled*
(keras/src/backend/tensorflow/optimizer.py ``_apply_weight_decay``: w <- w - lr * wd * w, applied before
and outside the momentum update). The SGD adapter therefore adds wd * w to the Keras gradient
(``parity.optim.adapters.coupled_decay_keras``) and never sets Keras' ``weight_decay``. On a first Nesterov step
(buffer empty) the two rules differ by exactly lr * mu * wd * w (torch decays by lr * (1 + mu) * wd * w,
Keras by lr * wd * w): tests/ported_torch/test_keypoints_optim.py measures it."""
KERAS_NESTEROV_RULE = (
    "Keras 3 SGD Nesterov: m <- mu*m - lr*g; w <- w + mu*m - lr*g (keras/src/optimizers/sgd.py). torch: "
    "b <- mu*b + g; w <- w - lr*(g + mu*b). Equal for a constant lr (m == -lr*b); after an lr change from "
    "lr1 to lr2 Keras' step differs from torch's by -mu^2 * (lr1 - lr2) * b_prev: Keras' momentum carries "
    "the old lr, torch's buffer does not."
)
"""Named convention for the keypoints optimizer (checked in tests/ported_torch/test_keypoints_optim.py)."""


def _side(config: dict) -> int:
    h, w, _ = config["input_shape"]
    return h // 2**SANDWICHES


def taps(config: dict) -> list[Tap]:
    chw = (LAST_FILTERS, _side(config), _side(config))
    t: list[Tap] = []
    for i in range(1, SANDWICHES + 1):
        s = f"sandwich{i}"
        t += [
            Tap(f"{s}/conv", f"{s}_conv", f"{s}.conv", "conv2d"),
            Tap(f"{s}/pool", f"{s}_pool", f"{s}.pool", "maxpool"),
            Tap(f"{s}/relu", f"{s}_relu", f"{s}.relu", "activation"),
        ]
    t += [
        # Keras flattens HWC, nn.Flatten CHW: the harness reorders the reference's tensor to CHW before
        # comparing, the converter reorders fc1's kernel rows.
        Tap("flatten", "flatten", "flatten", "flatten", flatten_chw=chw),
        Tap("fc1", "fc1", "fc1", "dense", flatten_chw=chw),
        Tap("fc1/relu", "fc1_relu", "fc1_relu", "activation"),
        Tap("fc2", "fc2", "fc2", "dense"),
    ]
    if config.get("final_tanh"):
        t.append(Tap("tanh", "tanh", "tanh", "activation"))
    return t


SPEC = register(PairSpec(
    name="keypoints",
    summary="Facial-keypoints CNN (4 conv sandwiches + 2 fc, 96x96 -> 30), Keras -> PyTorch",
    reference="reference_keras.keypoints:keypoints_cnn",
    port="ported_torch.keypoints:keypoints_cnn",
    taps=taps,
    input_shape=lambda c: tuple(c["input_shape"]),
    target=lambda c: ("regression", c["num_outputs"]),
    loss=LossSpec("mse", "mean"),
    optimizer=OptimizerSpec(kind="sgd", lr=KEYPOINTS_SGD_LR, momentum=KEYPOINTS_SGD_MOMENTUM, nesterov=True,
                            weight_decay=KEYPOINTS_WEIGHT_DECAY),
    conventions=(
        Convention("flatten order", f"Flatten {KERAS_FLATTEN_ORDER}", f"nn.Flatten {TORCH_FLATTEN_ORDER}",
                   "fc1 kernel rows reordered HWC -> CHW by the converter (flatten_chw=(256, 6, 6))"),
        Convention("padding", "Conv2D 3x3/1 'same'", "nn.Conv2d(padding=1)", "identical for 3x3 stride 1"),
        Convention("weight decay", "g += 1e-6 * w before SGD (coupled, applied by the adapter; NOT "
                   "SGD(weight_decay=...), which is decoupled)", "SGD(weight_decay=1e-6) (coupled)",
                   "parity.pairs.keypoints.KEYPOINTS_WEIGHT_DECAY"),
        Convention("Nesterov", "m = mu*m - lr*g; w += mu*m - lr*g", "b = mu*b + g; w -= lr*(g + mu*b)",
                   "equal for a constant lr; see parity.pairs.keypoints.KERAS_NESTEROV_RULE"),
        Convention("init", "glorot_uniform kernels, zero biases (Keras defaults)",
                   "kaiming_normal convs/fc1, xavier_normal fc2 (published)", "weights are copied for parity"),
    ),
    default_config={"input_shape": (96, 96, 1), "num_outputs": NUM_OUTPUTS, "final_tanh": False},
    fast_config={"input_shape": (96, 96, 1), "num_outputs": NUM_OUTPUTS, "final_tanh": False},
    default_batch=4,
    # No count is published: computed from the architecture, 4 convs (320 + 18,496 + 73,856 + 295,168) +
    # fc1 2,359,552 + fc2 7,710; no BN, all trainable (checked against both built models in the tests).
    published_params={"total": 2755102, "trainable": 2755102, "non_trainable": 0},
    randomize_bn=False,
    # Kaggle facial-keypoints images are scaled to [0, 1].
    input_range=(0.0, 1.0),
))
