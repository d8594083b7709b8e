"""Inputs and labels: one numpy generator with a seed, fed to both sides (the reference gets NHWC, the port
the same array transposed to NCHW and made contiguous)."""
from __future__ import annotations

import numpy as np


def make_batch(seed: int, step: int, batch: int, input_shape: tuple[int, ...], target: tuple[str, int],
               input_range: tuple[float, float], dtype: str, integer: bool = False,
               post_padded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (seed, step) -> (inputs NHWC, labels). Labels: one-hot classes or regression targets.
    ``integer``: token ids (int64) drawn uniformly from ``[lo, hi)`` of ``input_range`` (an Embedding's input).
    ``post_padded`` (integer, an ``Embedding(mask_zero=True)`` model): every row is ids in ``[max(lo, 1), hi)``
    then a tail of 0s, lengths varied in ``[1, L]`` with row 0 unpadded
    (:data:`parity.core.families.embedding.POST_PADDED_TOKENS`)."""
    rng = np.random.default_rng([seed, step])
    lo, hi = input_range
    if integer and post_padded:
        x = rng.integers(max(int(lo), 1), int(hi), size=(batch,) + tuple(input_shape), dtype=np.int64)
        steps = int(input_shape[0]) if input_shape else 1
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps  # one row without padding: a port that ignores the mask still agrees there
        x[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    elif integer:
        x = rng.integers(int(lo), int(hi), size=(batch,) + tuple(input_shape), dtype=np.int64)
    else:
        x = rng.uniform(lo, hi, size=(batch,) + tuple(input_shape)).astype(dtype)
    kind, dims = target
    if kind == "multi":  # several outputs: each output's targets, side by side (parity.user.outputs)
        return x, np.concatenate([_labels(rng, batch, part, dtype) for part in dims], axis=-1)
    return x, _labels(rng, batch, target, dtype)


def _labels(rng, batch: int, target: tuple[str, int], dtype: str) -> np.ndarray:
    kind, dims = target
    if kind == "onehot":
        cls = rng.integers(0, dims, size=batch)
        y = np.zeros((batch, dims), dtype=dtype)
        y[np.arange(batch), cls] = 1
    elif kind == "regression":
        y = rng.uniform(-1.0, 1.0, size=(batch, dims)).astype(dtype)
    else:
        raise ValueError(f"expected target kind 'onehot', 'regression' or 'multi'. Received: {kind!r}.")
    return y


def randomize_weights(weights: dict[str, dict[str, np.ndarray]], kinds: dict[str, str], seed: int) -> None:
    """Make freshly initialised weights informative, in place: a fresh Keras BatchNormalization is the
    identity in eval mode (gamma 1, beta 0, mean 0, var 1) and biases start at 0, so an eps, momentum or
    bias-mapping mistake would be invisible. Draws gamma ~ U(0.5, 1.5), beta/mean/bias ~ N(0, 0.2),
    var ~ U(0.5, 2) from the check's seed. Only used when the user gives no ``--weights``."""
    rng = np.random.default_rng([seed, 7919])
    for layer in sorted(weights):
        vars_ = weights[layer]
        kind = kinds.get(layer)
        for var in sorted(vars_):
            a = vars_[var]
            if kind == "batchnorm":
                if var == "gamma":
                    vars_[var] = rng.uniform(0.5, 1.5, a.shape).astype(a.dtype)
                elif var in ("beta", "moving_mean"):
                    vars_[var] = rng.normal(0.0, 0.2, a.shape).astype(a.dtype)
                elif var == "moving_variance":
                    vars_[var] = rng.uniform(0.5, 2.0, a.shape).astype(a.dtype)
            elif var.rsplit("/", 1)[-1] == "bias":  # also "forward/bias" (Bidirectional), "query/bias"
                vars_[var] = rng.normal(0.0, 0.2, a.shape).astype(a.dtype)
