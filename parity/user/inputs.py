"""A user pair's inputs: any per-sample shape, several inputs, token ids, and the port's layout.

- ``--input-shape`` takes any per-sample shape in the reference's layout (``20``, ``12,8``, ``64,64,1``), repeated
  for several inputs in the Keras model's order or named (``target=227,227,3``): :func:`parse_input_shapes`.
- A reference with several inputs is checked through one packed input: :func:`packed_reference` builds a
  Keras model with the same layers (the same objects, names and weights) fed by one flat input whose slices
  are the model's inputs (:class:`UnpackInput` layers, parameter-free); the port's view
  (:mod:`parity.user.view`) unpacks the same slices with :func:`torch_unpacker` and calls the user's
  ``forward`` with them in the Keras model's order. Every stage then runs unchanged on one array.
- Token ids: an integer input's slice holds uniform values in [-1, 1] that both sides map to the same ids,
  ``floor((u + 1) / 2 * input_dim)`` clipped to ``input_dim - 1`` (the range from the Embedding that reads it).
- Layout: an image (H, W, C) is NCHW in the port; a sequence (L, C) stays NLC or becomes NCL, whichever the
  port's ``forward`` accepts (probed once, reported); any other shape is passed as it is.
"""
from __future__ import annotations

import functools

import math
import re
from dataclasses import dataclass
from typing import Any

from parity.core.errors import UsageError
from parity.user.align import integer_input_range

#: the layouts the converter may give a reference input in the port (Keras layout -> port layout)
LAYOUT_IMAGE = "NHWC -> NCHW"
LAYOUT_SEQ_CHANNELS_FIRST = "NLC -> NCL"
LAYOUT_VOLUME = "NDHWC -> NCDHW"
LAYOUT_AS_IS = "as is"


@dataclass
class InputSlot:
    """One reference input inside the packed array: name, per-sample shape (Keras layout), where it starts,
    and the token-id range of an integer input (None for a float input)."""

    name: str
    shape: tuple[int, ...]
    start: int
    integer_range: int | None = None
    layout: str = LAYOUT_AS_IS

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


def parse_input_shapes(values) -> list[tuple[str | None, tuple[int, ...]]]:
    """``None`` / ``"64,64,1"`` / ``["target=227,227,3", "image=227,227,3"]`` / ``(20,)`` -> ``[(name or None,
    shape), ...]``; raises :class:`UsageError` (one line) on anything else."""
    if values is None:
        return []
    if isinstance(values, tuple) or (isinstance(values, list) and values and all(isinstance(v, int) for v in values)):
        values = [tuple(values)]
    elif not isinstance(values, list):
        values = [values]
    out = []
    for v in values:
        name = None
        if isinstance(v, (tuple, list)):
            dims = list(v)
        else:
            text = str(v).strip()
            if "=" in text:
                name, _, text = text.partition("=")
                name = name.strip() or None
            dims = [d for d in re.split(r"[,x ]+", text.strip()) if d]
        try:
            shape = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            shape = ()
        if not shape or min(shape) < 1:
            raise UsageError(f"--input-shape: expected a per-sample shape of positive integers in the Keras "
                             f"model's layout (e.g. 20, 12,8 or 64,64,1), optionally named (image=64,64,1). "
                             f"Received: {v!r}.")
        out.append((name, shape))
    return out


def assign_shapes(model_inputs: list[tuple[str, tuple]], given: list[tuple[str | None, tuple]]) -> list[tuple]:
    """The per-sample shape of each reference input: given by name, else in order, else the model's own (which
    must then be fully defined). ``model_inputs``: ``[(name, shape with None for free dims)]``."""
    names = [n for n, _ in model_inputs]
    by_name = {n: s for n, s in given if n is not None}
    unnamed = [s for n, s in given if n is None]
    for n in by_name:
        if n not in names:
            raise UsageError(f"--input-shape {n}=...: expected the name of a reference input ({', '.join(names)}). "
                             f"Received: {n!r}.")
    if len(unnamed) + len(by_name) > len(names):
        raise UsageError(f"--input-shape: expected at most {len(names)} shape(s), one per reference input "
                         f"({', '.join(names)}). Received: {len(unnamed) + len(by_name)}.")
    out = []
    for n, own in model_inputs:
        shape = by_name.get(n) or (unnamed.pop(0) if unnamed else None)
        if shape is None:
            if any(d is None for d in own):
                raise UsageError(f"--input-shape: expected a shape for reference input {n!r}, whose shape is "
                                 f"{tuple(own)}. Received: none. Pass --input-shape {n}=...")
            shape = tuple(int(d) for d in own)
        elif len(shape) != len(own) or any(d is not None and int(d) != s for d, s in zip(own, shape)):
            raise UsageError(f"--input-shape: expected a shape that fits reference input {n!r} {tuple(own)}. "
                             f"Received: {shape}. Drop the option or build the model for that shape.")
        out.append(tuple(shape))
    return out


def input_names(model) -> list[str]:
    """The names of the model's inputs as the user wrote them (``keras.Input(name=...)``: the InputLayer's)."""
    out = []
    for k, t in enumerate(model.inputs):
        op = getattr(getattr(t, "_keras_history", None), "operation", None)
        out.append(str(getattr(op, "name", None) or getattr(t, "name", None) or f"input_{k}").split(":")[0])
    return out


def input_slots(model) -> list[InputSlot]:
    """The reference model's inputs as slots of one packed array (order: ``model.inputs``)."""
    slots, start = [], 0
    names = input_names(model)
    for k, t in enumerate(model.inputs):
        shape = tuple(int(d) for d in t.shape[1:])
        slot = InputSlot(name=names[k], shape=shape, start=start,
                         integer_range=integer_input_range(model, k),
                         layout={3: LAYOUT_IMAGE, 4: LAYOUT_VOLUME}.get(len(shape), LAYOUT_AS_IS))
        slots.append(slot)
        start += slot.size
    return slots


_UNPACK_CLASS: list[Any] = []


def _unpack_class():
    if _UNPACK_CLASS:
        return _UNPACK_CLASS[0]
    import keras
    from keras import ops

    class UnpackInput(keras.layers.Layer):
        """One reference input cut from the packed input (parameter-free; see :mod:`parity.user.inputs`)."""

        def __init__(self, start: int, shape, integer_range=None, **kwargs):
            super().__init__(**kwargs)
            self.start = int(start)
            self.target_shape = tuple(int(d) for d in shape)
            self.integer_range = integer_range

        def call(self, x):
            n = int(math.prod(self.target_shape))
            y = ops.reshape(x[:, self.start:self.start + n], (-1,) + self.target_shape)
            if self.integer_range is not None:
                ids = ops.floor((y + 1.0) / 2.0 * self.integer_range)
                return ops.cast(ops.clip(ids, 0, self.integer_range - 1), "int32")
            return y

        def compute_output_shape(self, input_shape):
            return (input_shape[0],) + self.target_shape

        def get_config(self):
            return {**super().get_config(), "start": self.start, "shape": self.target_shape,
                    "integer_range": self.integer_range}

    _UNPACK_CLASS.append(UnpackInput)
    return UnpackInput


def packed_reference(model):
    """``(model, slots)``: the model itself for one input; for several, a model of the same layers fed by one
    packed input (see the module docstring)."""
    import keras

    slots = input_slots(model)
    if len(slots) < 2:
        return model, slots
    total = sum(s.size for s in slots)
    dtype = next((i.dtype for i in model.inputs if "float" in str(i.dtype)), None)
    packed = keras.Input((total,), name="packed_inputs", dtype=dtype)
    cls = _unpack_class()
    # the model's dtype, not the global policy in force now: a float64 model compared after its
    # keras_float64() block would have its inputs rounded to float32 by the unpacking layers
    parts = [cls(s.start, s.shape, s.integer_range, name=f"unpack_{s.name}", dtype=dtype)(packed) for s in slots]
    outputs = model._run_through_graph(parts, operation_fn=lambda op: op)
    return keras.Model(packed, outputs, name=model.name), slots


def torch_unpacker(slots: list[InputSlot]):
    """packed tensor (N, total) -> the port's inputs, in the Keras model's order and the port's layout (a
    ``functools.partial``, not a closure: a deep copy of the port's view copies it with its slots,
    ``parity.stages.lane.closures_sharing_state``)."""
    return functools.partial(_unpack, tuple(slots))


def _unpack(slots: tuple[InputSlot, ...], x):
    import torch

    out = []
    for s in slots:
        y = x[:, s.start:s.start + s.size].reshape((x.shape[0],) + s.shape)
        if s.integer_range is not None:
            y = torch.clamp(torch.floor((y + 1.0) / 2.0 * s.integer_range), 0, s.integer_range - 1).long()
        out.append(to_port_layout(y, s.layout))
    return tuple(out)


def to_port_layout(t, layout: str):
    if layout == LAYOUT_IMAGE and t.dim() == 4:
        return t.permute(0, 3, 1, 2).contiguous()
    if layout == LAYOUT_VOLUME and t.dim() == 5:
        return t.permute(0, 4, 1, 2, 3).contiguous()
    if layout == LAYOUT_SEQ_CHANNELS_FIRST and t.dim() == 3:
        return t.transpose(1, 2).contiguous()
    return t


def choose_layouts(port, slots: list[InputSlot], dtype) -> list[InputSlot]:
    """For each sequence input (L, C), the layout the port's ``forward`` accepts: as is (NLC, an LSTM with
    ``batch_first``, a Linear over features) or NCL (a Conv1d); tried in that order on a batch of 2."""
    import numpy as np
    import torch

    seq = [s for s in slots if len(s.shape) == 2 and s.integer_range is None and s.shape[0] != s.shape[1]]
    if not seq:
        return slots
    rng = np.random.default_rng(0)
    total = sum(s.size for s in slots)
    x = torch.from_numpy(rng.uniform(-1, 1, size=(2, total))).to(dtype)
    for layout in (LAYOUT_AS_IS, LAYOUT_SEQ_CHANNELS_FIRST):
        for s in seq:
            s.layout = layout
        was = port.training
        port.eval()
        try:
            with torch.no_grad():
                port(*torch_unpacker(slots)(x))
            return slots
        except Exception:  # noqa: BLE001  (a layout the port cannot read: try the next)
            continue
        finally:
            port.train(was)
    for s in seq:
        s.layout = LAYOUT_AS_IS
    return slots


def example_inputs(slots: list[InputSlot], dtype, seed: int = 0):
    """The port's example inputs (a batch of 2) for the alignment's trace, from a packed uniform batch."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    total = sum(s.size for s in slots)
    x = torch.from_numpy(rng.uniform(-1, 1, size=(2, total))).to(dtype)
    return torch_unpacker(slots)(x)


def describe(slots: list[InputSlot]) -> str:
    """``target (227, 227, 3) NHWC -> NCHW; image ...``: what the converter does with each input."""
    return "; ".join(f"{s.name} {s.shape} {s.layout}" + (f", token ids [0, {s.integer_range})"
                                                         if s.integer_range is not None else "") for s in slots)
