"""Recurrent layers, Keras <-> torch, as pure numpy: LSTM, GRU, SimpleRNN, each optionally inside Bidirectional.

=============  =================================  ===========================================================
Keras layer    Keras variable (layout)            torch key (layout)
=============  =================================  ===========================================================
LSTM           kernel (in, 4H) gates i,f,c,o      weight_ih_l0 (4H, in) gates i,f,g,o: transpose, same order
               recurrent_kernel (H, 4H)           weight_hh_l0 (4H, H): transpose
               bias (4H,)                         bias_ih_l0 = bias, bias_hh_l0 = 0 (torch adds both)
GRU            kernel (in, 3H) gates z,r,h        weight_ih_l0 (3H, in) gates r,z,n: transpose + swap z,r
(reset_after)  recurrent_kernel (H, 3H)           weight_hh_l0 (3H, H): transpose + swap z,r
               bias (2, 3H): input, recurrent     bias_ih_l0 = bias[0], bias_hh_l0 = bias[1] (swap z,r)
SimpleRNN      kernel (in, H), recurrent (H, H)   weight_ih_l0 (H, in), weight_hh_l0 (H, H): transpose
               bias (H,)                          bias_ih_l0 = bias, bias_hh_l0 = 0
Bidirectional  forward/<var>, backward/<var>      <key>_l0 and <key>_l0_reverse
=============  =================================  ===========================================================

Keras 2's GRU default ``reset_after=False`` (bias (3H,), reset gate applied *before* the recurrent matmul) has
no ``nn.GRU`` equivalent: torch always applies it after (``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``);
strict conversion refuses it.

Origins: keras/src/layers/rnn/lstm.py, gru.py, simple_rnn.py (``LSTMCell.call``: ``z0, z1, z2, z3`` = i, f, c,
o; ``GRUCell.call``: ``z, r, hh``; ``reset_after`` bias of shape (2, 3 * units)), keras/src/layers/rnn/
bidirectional.py (``forward_`` / ``backward_`` sub-layers), torch/nn/modules/rnn.py (``weight_ih_l[k]``: W_ii|W_if|
W_ig|W_io for LSTM, W_ir|W_iz|W_in for GRU; ``_reverse`` suffix for the backward direction).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from weight_converters.report import ConversionError, ConversionReport

#: Bidirectional sub-layer prefixes in the variable names (see ``direction_var``) -> torch key suffix.
DIRECTIONS = {"": "_l0", "forward/": "_l0", "backward/": "_l0_reverse"}
#: gates per kind
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

LSTM_GATES = "LSTM gates: Keras i,f,c,o == torch i,f,g,o (same order; kernels transposed)"
GRU_GATES = "GRU gates: Keras z,r,h -> torch r,z,n (z and r blocks swapped; kernels transposed)"
RNN_TRANSPOSE = "SimpleRNN kernels (in,H),(H,H) -> weight_ih (H,in), weight_hh (H,H) (transpose)"
ONE_BIAS = ("one Keras bias -> torch bias_ih = bias, bias_hh = 0 (torch adds both; keep bias_hh frozen at 0 or "
            "the effective bias trains at twice the rate)")
GRU_TWO_BIASES = "GRU reset_after=True bias (2,3H) -> bias_ih = bias[0], bias_hh = bias[1] (z,r swapped)"
GRU_RESET_BEFORE = ("GRU reset_after=False (Keras 2 default) applies the reset gate before the recurrent "
                    "matmul: torch nn.GRU cannot express it (use reset_after=True, the Keras 3 default)")
BIDIRECTIONAL = "Bidirectional forward/backward -> torch _l0 / _l0_reverse"


def kind_vars(kind: str) -> dict[str, str]:
    """Keras variable -> torch key for one tap kind, both directions (the grad/step tables read this)."""
    out = {}
    for pre, suf in DIRECTIONS.items():
        out[f"{pre}kernel"] = f"weight_ih{suf}"
        out[f"{pre}recurrent_kernel"] = f"weight_hh{suf}"
        out[f"{pre}bias"] = f"bias_ih{suf}"
    return out


#: tap kind -> {Keras variable: torch key}: the 1:1 part (a Keras bias also fills ``bias_hh``, see ONE_BIAS)
KINDS = {kind: kind_vars(kind) for kind in GATES}


class RowVar(str):
    """A Keras variable name (equal to it as a string, so the reference's values are found under it) that converts
    as one row of the variable: a GRU ``reset_after`` bias (2, 3H), row 1 -> ``bias_hh``. The gradient, update and
    optimizer slots of ``bias_hh`` are compared against Keras' ``bias[1]`` through it (``companion_vars``)."""

    row: int = 0

    def __new__(cls, var: str, row: int) -> "RowVar":
        out = super().__new__(cls, var)
        out.row = int(row)
        return out

    def __reduce__(self):
        return (RowVar, (str(self), self.row))


def companion_vars(kind: str, var: str) -> list[tuple[str, str]]:
    """The torch keys (suffixes) one Keras variable fills besides ``KINDS[kind][var]``, each with the variable
    that converts to it: a GRU bias -> ``[("bias_hh_l0[_reverse]", RowVar(var, 1))]`` (Keras' recurrent bias,
    trained on both sides); none for LSTM/SimpleRNN, whose ``bias_hh`` is torch's alone (0, frozen: ONE_BIAS)."""
    pre, base = _split(var)
    if kind == "gru" and base == "bias" and pre in DIRECTIONS:
        return [(f"bias_hh{DIRECTIONS[pre]}", RowVar(var, 1))]
    return []


def _split(var: str) -> tuple[str, str]:
    for pre in ("forward/", "backward/"):
        if var.startswith(pre):
            return pre, var[len(pre):]
    return "", var


def _gate_perm(kind: str, h: int) -> np.ndarray:
    """Row permutation Keras gate blocks -> torch gate blocks (its own inverse: it swaps two blocks)."""
    idx = np.arange(GATES[kind] * h)
    if kind == "gru":
        return np.concatenate([idx[h:2 * h], idx[:h], idx[2 * h:]])  # z,r,h -> r,z,n
    return idx


def var_to_torch(kind: str, var: str, a: np.ndarray, report: ConversionReport | None = None) -> np.ndarray:
    """One Keras variable (value, gradient or optimizer slot) -> the torch array of ``KINDS[kind][var]``. A GRU
    ``reset_after`` bias gives its input row (``bias_ih``), or the row a :class:`RowVar` names (1: ``bias_hh``);
    :func:`layer_to_torch` fills both."""
    a = np.asarray(a)
    _, base = _split(var)
    if base in ("kernel", "recurrent_kernel"):
        h = a.shape[1] // GATES[kind]
        out = np.ascontiguousarray(a.T[_gate_perm(kind, h)])
    elif base == "bias":
        if kind == "gru" and a.ndim == 2:
            a = a[getattr(var, "row", 0)]
        elif kind == "gru":
            raise ConversionError(GRU_RESET_BEFORE, report or ConversionReport())
        h = a.shape[0] // GATES[kind]
        out = np.ascontiguousarray(a[_gate_perm(kind, h)])
    else:
        raise KeyError(f"{kind}: expected a variable in {sorted(KINDS[kind])}. Received: {var!r}.")
    if report is not None:
        report.convention({"lstm": LSTM_GATES, "gru": GRU_GATES, "rnn": RNN_TRANSPOSE}[kind])
    return out


def var_to_keras(kind: str, var: str, w: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    """Inverse of :func:`var_to_torch` for kernels and one-bias layers (a GRU bias needs both torch biases:
    :func:`layer_to_keras`)."""
    w = np.asarray(w)
    _, base = _split(var)
    h = w.shape[0] // GATES[kind]
    w = w[_gate_perm(kind, h)]
    return np.ascontiguousarray(w.T if base != "bias" else w)


def layer_to_torch(kind: str, variables: Mapping[str, np.ndarray], report: ConversionReport
                   ) -> dict[str, np.ndarray]:
    """``{keras var: array}`` of one recurrent layer -> ``{torch key suffix: array}``; unknown variables are
    reported as unexpected (by the caller's prefix), a GRU with ``reset_after=False`` raises."""
    out: dict[str, np.ndarray] = {}
    table = KINDS[kind]
    for var, a in variables.items():
        if var not in table:
            report.unexpected.append(var)
            continue
        pre, base = _split(var)
        a = np.asarray(a)
        if pre:
            report.convention(BIDIRECTIONAL)
        if kind == "gru" and base == "bias":
            if a.ndim != 2:
                raise ConversionError(GRU_RESET_BEFORE, report)
            perm = _gate_perm(kind, a.shape[1] // 3)
            out[f"bias_ih{DIRECTIONS[pre]}"] = np.ascontiguousarray(a[0][perm])
            out[f"bias_hh{DIRECTIONS[pre]}"] = np.ascontiguousarray(a[1][perm])
            report.convention(GRU_TWO_BIASES)
            continue
        out[table[var]] = var_to_torch(kind, var, a, report)
        if base == "bias":
            out[f"bias_hh{DIRECTIONS[pre]}"] = np.zeros_like(out[table[var]])
            report.convention(ONE_BIAS)
    return out


def layer_to_keras(kind: str, state: Mapping[str, np.ndarray], variables: list[str], report: ConversionReport,
                   shapes: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """``{torch key suffix: array}`` -> ``{keras var: array}`` for the Keras ``variables`` wanted (a one-bias
    layer gets ``bias_ih + bias_hh``: exact when ``bias_hh`` is 0, as :func:`layer_to_torch` writes it)."""
    out: dict[str, np.ndarray] = {}
    for var in variables:
        pre, base = _split(var)
        key = KINDS[kind][var]
        if key not in state:
            report.missing.append(var)
            continue
        if base == "bias":
            ih = np.asarray(state[key])
            hh = np.asarray(state.get(f"bias_hh{DIRECTIONS[pre]}", np.zeros_like(ih)))
            perm = _gate_perm(kind, ih.shape[0] // GATES[kind])
            if kind == "gru":
                out[var] = np.ascontiguousarray(np.stack([ih[perm], hh[perm]]))
            else:
                out[var] = var_to_keras(kind, var, ih + hh if np.any(hh) else ih)
            continue
        out[var] = var_to_keras(kind, var, state[key])
    return out


def torch_keys(kind: str, variables) -> set[str]:
    """The torch keys a layer with these Keras variables fills (both biases for each bias)."""
    keys = set()
    for var in variables:
        pre, base = _split(var)
        keys.add(KINDS[kind][var])
        if base == "bias":
            keys.add(f"bias_hh{DIRECTIONS[pre]}")
    return keys
