"""A reference with several outputs (``keras.Model(inputs, [a, b])`` or ``{"name": a, ...}``), compared as one.

- The reference: its outputs concatenated along the last axis, in the Keras model's output order
  (``model.outputs``; a dict of outputs in ``keras.tree.flatten`` order, i.e. sorted keys), by one
  ``Concatenate`` layer named :data:`parity.user.align.PACKED_OUTPUTS` (the same layers, the same weights).
  Each output layer keeps its own tap; the packed outputs are one more tap, the port's whole return value.
- The port: its ``forward`` may return a tuple / list in the Keras order, or a dict keyed by the Keras
  output names (the dict's keys of a dict-output model, else the output layers' names); the view
  (:mod:`parity.user.view`) concatenates them the same way (:func:`torch_packer`), and says which output is
  where when the count, the keys or the widths do not fit.
- The loss: Keras' ``sum_i loss_weights[i] * loss_i`` (keras/src/trainers/compile_utils.py ``CompileLoss``), each
  ``loss_i`` the compiled one of that output (``model.compile(loss=[...] or {...}, loss_weights=...)``), else
  parity's default (categorical cross-entropy after a softmax, else MSE): a :class:`parity.core.spec.LossSpec`
  with ``parts``; the targets per output, concatenated the same way (``("multi", ((kind, width), ...))``).
- ``--port-loss``: the user's ``loss(outputs, targets)`` receives both as tuples in the Keras order (class
  indices for a categorical output, the float targets otherwise): :class:`parity.optim.user.UserLoss`.
"""
from __future__ import annotations

import functools

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.backends.torch_side import torch_loss
from parity.core.errors import UsageError
from parity.core.results import Finding
from parity.core.spec import LossSpec
from parity.diagnosis.common import Run, base, close, finding, port_train_output
from parity.diagnosis.registry import ANY_STAGE, stage_rule
from parity.optim.user import SAVED_TRAINING_CONFIG, compiled_training, loss_spec_from_keras
from parity.user.align import PACKED_OUTPUTS

#: attribute of a packed reference model: its :class:`OutputHead` list (and the original's compile settings)
HEADS_ATTR = "_parity_output_heads"
COMPILE_ATTR = "_parity_output_compile"


@dataclass(frozen=True)
class OutputHead:
    """One output of the reference: ``key`` (the name a port's dict uses), ``layer`` (the Keras layer that makes
    it), ``width`` (its last dimension) and whether it ends in softmax."""

    key: str
    layer: str
    width: int
    softmax: bool


def output_heads(model) -> list[OutputHead]:
    """The outputs of ``model`` in its output order (empty for a one-output model)."""
    import keras

    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) < 2:
        return []
    struct = getattr(model, "_outputs_struct", None)
    keys = (keras.tree.flatten({k: k for k in struct}) if isinstance(struct, dict) else None)
    heads = []
    for i, t in enumerate(outputs):
        shape = tuple(t.shape)
        layer = t._keras_history.operation
        if len(shape) != 2 or shape[1] is None:
            raise UsageError(f"reference model {model.name!r}: expected each output as (batch, D) (classes or "
                             f"values). Received: output {i} ({layer.name}) of shape {shape}. Add the head the port "
                             "is trained with.")
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        heads.append(OutputHead(str(keys[i]) if keys else layer.name, layer.name, int(shape[1]),
                                type(layer).__name__ == "Softmax" or act == "softmax"))
    return heads


def compile_settings(model) -> dict | None:
    """``{"loss": ..., "loss_weights": ...}`` of a compiled model, as plain data (``get_compile_config``); a
    saved model's training configuration (loss only); None when not compiled."""
    if getattr(model, "optimizer", None) is not None and getattr(model, "loss", None) is not None:
        try:
            cfg = model.get_compile_config() or {}
        except (AttributeError, TypeError, ValueError):
            cfg = {}
        return {"loss": cfg.get("loss", model.loss), "loss_weights": cfg.get("loss_weights")}
    saved = getattr(model, SAVED_TRAINING_CONFIG, None)
    if saved and saved[1] is not None:
        return {"loss": saved[1], "loss_weights": None}
    return None


def packed_outputs(model, source=None):
    """``model`` with its outputs concatenated into one (see the module docstring), the heads and the compile
    settings of ``source`` (the model as the user built it; default ``model``) on it; ``model`` itself when it has
    one output."""
    import keras

    heads = output_heads(model)
    if not heads:
        return model
    # in the outputs' own dtype (a live float64 model packed outside parity's dtype scope stays float64)
    concat = keras.layers.Concatenate(axis=-1, name=PACKED_OUTPUTS, dtype=str(model.outputs[0].dtype))
    packed = keras.Model(model.inputs, concat(list(model.outputs)), name=model.name)
    src = source if source is not None else model
    carry_output_attrs(packed, heads, compile_settings(src), src)
    return packed


def carry_output_attrs(packed, heads, settings, source=None) -> None:
    """Put the heads, the compile settings (and the compiled optimizer, as data) on a packed model."""
    object.__setattr__(packed, HEADS_ATTR, list(heads))
    object.__setattr__(packed, COMPILE_ATTR, settings)
    if source is not None:
        try:
            opt_cfg = compiled_training(source)[0]
        except (TypeError, ValueError, AttributeError):
            opt_cfg = None
        object.__setattr__(packed, SAVED_TRAINING_CONFIG, (opt_cfg, MULTI_LOSS if settings else None))


def heads_of(model) -> list[OutputHead]:
    return list(getattr(model, HEADS_ATTR, None) or [])


#: ``LossSpec.name`` of a multi-output loss (its ``parts`` say the rest)
MULTI_LOSS = "multi"


def _by_head(value, heads: list[OutputHead], what: str):
    """A compile setting given for all outputs (one value), as a list in output order, or as a dict keyed by the
    output names: one entry per head (None where a dict has none)."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(heads):
            raise UsageError(f"the reference's compiled {what}: expected one per output ({len(heads)}). Received: "
                             f"{len(value)}. Compile the model with one per output.")
        return list(value)
    if isinstance(value, dict) and not {"class_name", "config"} <= set(value):
        return [value.get(h.key, value.get(h.layer)) for h in heads]
    return [value] * len(heads)


def multi_loss(model, loss: str | None = None) -> LossSpec | None:
    """The loss of a packed reference (None for a one-output model): per output the compiled loss, else
    parity's default; the compiled ``loss_weights`` (default 1)."""
    heads = heads_of(model)
    if not heads:
        return None
    if loss is not None:
        raise UsageError(f"--loss {loss}: expected no --loss for a model with several outputs (each output trains with "
                         "its compiled loss, or parity's default: cross-entropy after a softmax, else MSE). "
                         "Received: --loss. Drop it, or compile the model with a loss per output.")
    settings = getattr(model, COMPILE_ATTR, None) or {}
    losses = _by_head(settings.get("loss"), heads, "loss")
    weights = _by_head(settings.get("loss_weights"), heads, "loss_weights")
    parts = []
    for h, compiled, w in zip(heads, losses, weights):
        if compiled is None:
            spec = LossSpec("categorical_crossentropy", "mean") if h.softmax else LossSpec("mse", "mean")
        else:
            spec = loss_spec_from_keras(compiled, h.softmax)
        weight = 1.0 if w is None else w
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UsageError(f"the reference's compiled loss_weights: expected a number for output {h.key!r}. "
                             f"Received: {weight!r}.")
        parts.append((spec, h.width, float(weight), h.key))
    return LossSpec(MULTI_LOSS, "mean", parts=tuple(parts))


def target_of(loss: LossSpec) -> tuple[str, Any]:
    """The target description of a multi-output loss: ``("multi", ((kind, width), ...))``."""
    return ("multi", tuple(("onehot" if p.name == "categorical_crossentropy" else "regression", w)
                           for p, w, _, _ in loss.parts))


def describe(heads: list[OutputHead], loss: LossSpec) -> str:
    """One line: each output with its width, loss and weight, in order."""
    return ", ".join(f"{h.key} ({h.width}, {p.name}{' from logits' if p.reference_from_logits else ''} x {w:g})"
                     for h, (p, _, w, _) in zip(heads, loss.parts))


class PortOutputError(ValueError):
    """The port's ``forward`` returned outputs that do not fit the reference's (count, keys, widths, order)."""


def torch_packer(heads: list[OutputHead]):
    """The view's output function: the port's tuple / list / dict of outputs -> one (N, sum of widths) tensor in
    the Keras order; a :class:`PortOutputError` naming the mismatch otherwise (a ``functools.partial``, not a
    closure: a deep copy of the port's view copies it with its heads, ``parity.stages.lane``)."""
    return functools.partial(_pack, tuple(heads))


def _pack(heads: tuple[OutputHead, ...], out):
    import torch

    want = [h.width for h in heads]
    order = ", ".join(f"{h.key} ({h.width})" for h in heads)
    if isinstance(out, dict):
        keys = {str(k) for k in out}
        by = {h.key: out.get(h.key, out.get(h.layer)) for h in heads}
        missing = [k for k, v in by.items() if v is None]
        if missing:
            raise PortOutputError(f"expected the port's dict of outputs keyed by the Keras output names ({order})"
                                  f". Received: keys {sorted(keys)}; no {', '.join(missing)}")
        parts = [by[h.key] for h in heads]
    elif isinstance(out, (list, tuple)):
        parts = list(out)
        if len(parts) != len(heads):
            raise PortOutputError(f"expected the port to return {len(heads)} outputs in the Keras model's order "
                                  f"({order}). Received: {len(parts)} outputs")
    else:
        raise PortOutputError(f"expected the port to return its {len(heads)} outputs (a tuple in the Keras "
                              f"order {order}, or a dict keyed by those names). Received: one "
                              f"{type(out).__name__}")
    widths = [int(p.shape[-1]) if p.dim() == 2 else -1 for p in parts]
    if widths != want:
        got = ", ".join(f"output {i} ({w})" for i, w in enumerate(widths))
        fix = ("return them in the Keras model's order" if sorted(widths) == sorted(want)
               else "each as (batch, width)")
        raise PortOutputError(f"expected the port's outputs in the Keras model's order: {order}. Received: {got}"
                              f"; {fix} (or a dict keyed by {', '.join(h.key for h in heads)})")
    return torch.cat(parts, dim=-1)


# -- the diagnosis of a port with several outputs ----------------------------------------------------------------
def _slices(loss: LossSpec):
    at = 0
    for part, width, weight, name in loss.parts:
        yield part, at, at + width, weight, name
        at += width


def _parts_of(run):
    spec = getattr(run, "spec", None)
    loss = getattr(spec, "loss", None)
    return loss if loss is not None and getattr(loss, "parts", ()) else None


@stage_rule(ANY_STAGE, order=9, when_explained=True)
def double_softmax_on_an_output(run: Run, stage, diff) -> list[Finding]:
    """One output of a multi-output port is probabilities while its loss is cross-entropy on logits."""
    loss, final = _parts_of(run), run.po.get("final")
    if loss is None or final is None or np.ndim(final) != 2:
        return []
    rows = np.asarray(final)
    out = []
    for part, a, b, _, name in _slices(loss):
        cols = rows[:, a:b]
        if part.name == "categorical_crossentropy" and not part.reference_from_logits and cols.size and (
                cols >= 0).all() and np.allclose(cols.sum(axis=1), 1.0, atol=1e-6):
            out.append(finding(
                "double_softmax", run.po.get("output_path", diff.path),
                f"softmax applied before CrossEntropyLoss on output {name!r} (double softmax): the port returns "
                f"probabilities there (rows sum to 1) and F.cross_entropy applies softmax again",
                f"return output {name!r} as logits; CrossEntropyLoss applies log-softmax itself", stage.name,
                evidence=f"port output {name!r} row sums {cols.sum(axis=1)[:3].round(6).tolist()}"))
    return out


@stage_rule("forward_eval", order=9)
def outputs_in_another_order(run: Run, stage, diff) -> list[Finding]:
    """The port returns its outputs in another order than the Keras model (outputs of equal widths: the packed
    outputs differ, and a permutation of the port's outputs is the reference's)."""
    loss, final = _parts_of(run), run.po.get("final")
    ref = run.ref
    if loss is None or final is None or ref is None or base(diff.path) != PACKED_OUTPUTS:
        return []
    want = np.asarray(ref.eval_acts.get(PACKED_OUTPUTS)) if PACKED_OUTPUTS in ref.eval_acts else None
    if want is None or np.shape(want) != np.shape(final):
        return []
    parts = list(_slices(loss))
    got = np.asarray(final)
    for perm in itertools.permutations(range(len(parts))):
        if list(perm) == list(range(len(parts))) or any(
                parts[i][2] - parts[i][1] != parts[j][2] - parts[j][1] for i, j in enumerate(perm)):
            continue
        # port output j (in the port's return order) stands where reference output perm[j] is
        cols = [None] * len(parts)
        for j, i in enumerate(perm):
            piece = got[:, parts[j][1]:parts[j][2]]
            if parts[i][0].name == "categorical_crossentropy" and not parts[i][0].reference_from_logits:
                e = np.exp(piece - piece.max(axis=1, keepdims=True))
                piece = e / e.sum(axis=1, keepdims=True)
            cols[i] = piece
        if np.allclose(np.concatenate(cols, axis=1), want, rtol=1e-6, atol=1e-9 * max(1.0, np.abs(want).max())):
            names = [parts[i][4] for i in perm]
            return [finding("outputs_order", PACKED_OUTPUTS,
                            f"the port returns its outputs in another order: ({', '.join(names)}), the Keras model's "
                            f"order is ({', '.join(p[4] for p in parts)})",
                            "return the outputs in the Keras model's order, or a dict keyed by the output names",
                            stage.name, evidence=diff.describe())]
    return []


@stage_rule("gradients", order=39)
def loss_weights_of_the_port(run: Run, stage, diff) -> list[Finding]:
    """The user's loss of a multi-output port sums the outputs' losses with other weights than the reference's
    compiled ``loss_weights`` (all 1: loss_weights ignored; one output's weight left out)."""
    loss = _parts_of(run)
    loss_t = next((t for t in stage.tensors if t.path == "loss"), None)
    spec = run.spec
    if loss is None or loss_t is None or loss_t.passed or not callable(getattr(spec, "port_loss", None)) \
            or run.ts is None or run.ref is None:
        return []
    import torch
    import torch.nn.functional as F

    z = torch.from_numpy(port_train_output(run, lambda out: out.double()))
    y = torch.from_numpy(np.asarray(run.ref.labels[0], dtype=np.float64))
    parts = list(_slices(loss))
    each = [float(torch_loss(F, p, z[:, a:b], y[:, a:b])) for p, a, b, _, _ in parts]
    weights = [w for _, _, _, w, _ in parts]
    candidates = [("the reference's loss_weights ignored: every output weighted 1", [1.0] * len(parts))]
    candidates += [(f"output {parts[i][4]!r} weighted 1 in the port, {weights[i]:g} in the reference's "
                    "loss_weights", [1.0 if k == i else w for k, w in enumerate(weights)]) for i in range(len(parts))]
    port = loss_t.port_value
    for what, ws in candidates:
        if ws != weights and close(port, sum(w * v for w, v in zip(ws, each)), 1e-6):
            return [finding("loss_weights", "loss", f"the port's loss sums its outputs' losses with other weights: "
                            f"{what} ({', '.join(f'{p[4]} x {w:g}' for p, w in zip(parts, weights))} in model.compile)",
                            "weigh each output's loss as the reference's loss_weights do: "
                            + " + ".join(f"{w:g} * loss_{p[4]}" for p, w in zip(parts, weights)), "gradients",
                            evidence=f"loss reference {loss_t.ref_value:.6g}, port {port:.6g}")]
    return []
