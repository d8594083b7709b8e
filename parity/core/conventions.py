"""Named framework conventions, each with where it comes from. No bare numbers in ports or converters.

This module imports nothing: the Keras reference side, the torch port side and the numpy converters all
read the same names. Origins: keras/src/layers/normalization/batch_normalization.py (Keras 3.15),
torch/nn/modules/batchnorm.py (PyTorch 2.13), keras/src/optimizers/{adam,sgd}.py, and the facts collected
from oarriaga/face_classification (``src/models/cnn.py``), davheld/GOTURN (``nets/``) and the
frameworks' sources named at each constant.
"""
from __future__ import annotations

import math

# --- BatchNormalization -------------------------------------------------------------------------------
KERAS_BN_EPSILON = 1e-3
"""keras.layers.BatchNormalization(epsilon=1e-3) default (Keras 2.0.5 and Keras 3)."""
TORCH_BN_EPSILON = 1e-5
"""torch.nn.BatchNorm2d(eps=1e-5) default: the classic port mistake (1e-5 where Keras used 1e-3)."""
KERAS_BN_MOMENTUM = 0.99
"""Keras: moving = m * moving + (1 - m) * batch, default m = 0.99."""
TORCH_BN_MOMENTUM_DEFAULT = 0.1
"""torch: running = (1 - m) * running + m * batch, default m = 0.1 (== Keras 0.9, not 0.99)."""


def torch_bn_momentum_from_keras(keras_momentum: float) -> float:
    """torch's momentum weighs the *new* batch statistic, Keras' the *old* moving value: m_t = 1 - m_k."""
    return 1.0 - keras_momentum


TORCH_BN_MOMENTUM_FROM_KERAS = torch_bn_momentum_from_keras(KERAS_BN_MOMENTUM)
"""0.01: the torch momentum equivalent to Keras' default 0.99."""

RUNNING_VAR_CONVENTION = (
    "torch updates running_var with the unbiased batch variance (n/(n-1)); Keras moving_variance with "
    "the biased one. Compared after converting torch's update to the biased estimate (n = N*H*W)."
)


def unbiased_to_biased_update(new_running_var, old_running_var, torch_momentum: float, n: int,
                              old_keras_var=None):
    """The moving variance Keras would hold after one update, from torch's (unbiased) update.

    torch: new = (1 - m) * old + m * var_unbiased, with var_unbiased = var_biased * n / (n - 1).
    Keras-equivalent: (1 - m) * old_keras + m * var_biased, where ``old_keras`` is the Keras-equivalent value
    before the update (default: ``old_running_var``, equal before the first update; over several steps the
    two differ and the chain is carried by the caller). Works on numpy arrays and torch tensors.
    """
    batch_unbiased = (new_running_var - (1.0 - torch_momentum) * old_running_var) / torch_momentum
    batch_biased = batch_unbiased * ((n - 1) / n)
    base = old_running_var if old_keras_var is None else old_keras_var
    return (1.0 - torch_momentum) * base + torch_momentum * batch_biased


# --- Regularisation and optimizers --------------------------------------------------------------------
def float32_rounded(x: float) -> float:
    """``x`` rounded to float32: what ``tf.cast(python_float, float64)`` yields, since TF first makes a float32
    tensor of a Python float. Keras 3 does this to hyperparameters in several places (below)."""
    import struct

    return struct.unpack("f", struct.pack("f", float(x)))[0]


def keras_l2_effective(l2: float) -> float:
    """The coefficient Keras 3 actually multiplies by: ``L2.__call__`` does ``ops.cast(self.l2, x.dtype)``
    on a Python float, which becomes a float32 tensor first, so a float64 model is regularised with
    float32(lam) (measured: the L2 gradient of a float64 Keras 3.15 model is 2*lam*w off by 2.2e-8 relative
    for lam = 0.01; keras/src/regularizers/regularizers.py)."""
    return float32_rounded(l2)


def torch_weight_decay_from_keras_l2(l2: float) -> float:
    """Keras ``l2(lam)`` adds lam * sum(w**2) to the loss, whose gradient is 2 * lam * w: torch's coupled
    ``weight_decay`` (added to the gradient) must be 2 * lam, with lam as Keras rounds it
    (:func:`keras_l2_effective`)."""
    return 2.0 * keras_l2_effective(l2)


MINIXCEPTION_L2 = 0.01
"""oarriaga/face_classification src/models/cnn.py: ``regularization = l2(0.01)`` on the two base convs
(Keras 2 silently ignored it on SeparableConv2D, Keras 3 rejects it there)."""

KERAS_CE_EPSILON = 1e-7
KERAS_CE_ON_PROBABILITIES = ("Keras categorical_crossentropy(from_logits=False): p = p / sum(p); p = clip(p, 1e-7, "
                             "1 - 1e-7); loss = -sum(y * log(p)) (keras/src/backend/tensorflow/nn.py "
                             "categorical_crossentropy; epsilon = keras.config.epsilon())")
"""The loss a port that returns probabilities is trained with in user mode (no ``--port-loss``)."""
KERAS3_ADAM_EPSILON = 1e-7
"""keras.optimizers.Adam(epsilon=1e-7) in Keras 3 (1e-8 in Keras 2.0.5; torch's default is 1e-8)."""
KERAS2_ADAM_EPSILON = 1e-8
TORCH_ADAM_EPSILON = 1e-8


def torch_adam_eps_from_keras(keras_eps: float, beta_2: float, step: int) -> float:
    """Keras (and TF1) Adam adds epsilon to the *uncorrected* sqrt(v):
    w -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps). torch adds it to the bias-corrected one:
    w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps'). Equal when eps' = eps / sqrt(1 - b2^t): a
    time-dependent value, so one torch eps matches Keras at exactly one step (keras/src/optimizers/adam.py).
    """
    return keras_eps / math.sqrt(1.0 - beta_2**step)


def torch_adam_lr_eps_from_keras(lr: float, keras_eps: float, beta_1: float, beta_2: float,
                                 step: int) -> tuple[float, float]:
    """(lr, eps) for ``torch.optim.Adam`` at step ``step`` (1-based) so that its update equals Keras 3's.

    Two differences: epsilon placement (:func:`torch_adam_eps_from_keras`), and Keras' bias corrections
    ``1 - beta**t`` use ``ops.cast(self.beta, dtype)``, i.e. float32-rounded betas even in a float64 model
    (keras/src/optimizers/adam.py; measured: 6.4e-6 relative on the first update with beta_2 = 0.999), while
    the moment updates use the exact ``1 - beta``. torch's update is lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t)
    + eps'); matching Keras' lr*sqrt(1-B2^t)/(1-B1^t) * m / (sqrt(v) + eps) (B = float32-rounded beta) needs
    eps' = eps / sqrt(1 - b2^t) and lr' = lr * (1-b1^t)/(1-B1^t) * sqrt(1-B2^t)/sqrt(1-b2^t).
    """
    b1r, b2r = float32_rounded(beta_1), float32_rounded(beta_2)
    lr_t = lr * (1.0 - beta_1**step) / (1.0 - b1r**step) * math.sqrt(1.0 - b2r**step) / math.sqrt(1.0 - beta_2**step)
    return lr_t, torch_adam_eps_from_keras(keras_eps, beta_2, step)


KERAS_SGD_MOMENTUM_SLOT = (
    "Keras 3 SGD keeps m = mu*m - lr*g and adds it (w += m); torch keeps buf = mu*buf + g and subtracts "
    "lr*buf. With a constant lr, Keras m == -lr * torch buf."
)

# --- Padding --------------------------------------------------------------------------------------------
TF_SAME_PADDING = (
    "TF 'same': out = ceil(n / s); pad_total = max((out - 1) * s + (k - 1) * d + 1 - n, 0); "
    "pad_before = pad_total // 2, the extra pixel goes bottom/right (tensorflow/python/ops/nn_ops.py)."
)
TORCH_SYMMETRIC_PADDING = "torch padding=p pads p on every side: differs from TF 'same' when pad_total is odd."

# --- Layout ---------------------------------------------------------------------------------------------
KERAS_CONV_LAYOUT = "HWIO"
TORCH_CONV_LAYOUT = "OIHW"
KERAS_DENSE_LAYOUT = "(in, out)"
TORCH_LINEAR_LAYOUT = "(out, in)"
KERAS_FLATTEN_ORDER = "HWC"
TORCH_FLATTEN_ORDER = "CHW"
