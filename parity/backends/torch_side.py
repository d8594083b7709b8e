"""The port (PyTorch) side: load converted weights, tap module outputs with forward hooks, run eval / train
forward, backward, optimizer steps and isolated layers, and hand back numpy. Never imports TensorFlow, so
``parity replay`` runs it on a machine without TF (a GPU box, a CI job)."""
from __future__ import annotations

import contextlib
import copy
import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.core.buffers import POOL
from parity.core.conventions import KERAS_CE_EPSILON
from parity.core.tensors import hwc_flat_to_chw_flat, nhwc_to_nchw
from parity.core.errors import UsageError
from parity.core.families import torch_info
from parity.core.spec import LossSpec, Tap
from parity.core.spill import SpillDict
from weight_converters.keras import LAYER_VARS

TORCH_DTYPES = ("float32", "float64")
#: tap kinds whose module is called with more than its inputs (masks, flags): replayed so in isolation
ATTENTION_KINDS = ("attention", "attention_packed")
#: recurrent tap kinds: a masked port's module takes (sequence, lengths) (``pack_padded_sequence`` inside, the
#: Embedding(mask_zero=True) convention): the lengths of its first call are replayed in isolation
RECURRENT_KINDS = ("lstm", "gru", "rnn")


class DeviceUnavailable(UsageError, RuntimeError):
    pass


def resolve_device(device: str):
    """``cpu`` or ``cuda[:N]``; CUDA gets TF32 off and deterministic cuDNN (exact-comparison settings)."""
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"--device {device}: expected a CUDA device. Received: torch {torch.__version__} reports none "
                "available on this machine. Run with --device cpu, or on a machine with a GPU (record the "
                "reference here with `parity record`, replay there with `parity replay`).")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        return torch.device(device)
    raise DeviceUnavailable(f"--device: expected 'cpu' or 'cuda[:N]'. Received: {device!r}.")


def device_description(dev) -> dict[str, Any]:
    import torch

    info = {"device": str(dev), "torch": torch.__version__}
    if dev.type == "cuda":
        info.update(name=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), tf32=False, cudnn_deterministic=True)
    return info


def torch_loss(F, spec: LossSpec, out, y):
    """The port's loss: ``categorical_crossentropy`` -> ``F.cross_entropy`` on logits (softmax inside); a
    callable ``spec`` is the user's own loss (``parity.optim.user.UserLoss``)."""
    if callable(spec):
        return spec(out, y)
    if spec.parts:  # several outputs side by side: sum_i loss_weight_i * loss_i, as Keras sums them
        total, at = None, 0
        for part, width, weight, _ in spec.parts:
            term = torch_loss(F, part, out[:, at:at + width], y[:, at:at + width]) * weight
            total = term if total is None else total + term
            at += width
        return total
    if spec.name == "categorical_crossentropy" and getattr(spec, "port_probabilities", False):
        # the port returns probabilities (softmax in its forward, as the reference): Keras' loss on them
        # (KERAS_CE_ON_PROBABILITIES), Keras' label smoothing on the targets
        if spec.label_smoothing:
            y = y * (1 - spec.label_smoothing) + spec.label_smoothing / y.shape[-1]
        p = (out / out.sum(dim=-1, keepdim=True)).clamp(KERAS_CE_EPSILON, 1 - KERAS_CE_EPSILON)
        per = -(y * p.log()).sum(dim=-1)
        return per.mean() if spec.reduction == "mean" else per.sum()
    if spec.name == "categorical_crossentropy":
        return F.cross_entropy(out, y, reduction=spec.reduction, label_smoothing=spec.label_smoothing)
    if spec.name == "mse":
        per = ((out - y) ** 2).mean(dim=-1)
    elif spec.name == "l1_sum":
        return (out - y).abs().sum()
    else:
        raise ValueError(f"expected loss categorical_crossentropy, mse or l1_sum. Received: {spec.name!r}.")
    return per.mean() if spec.reduction == "mean" else per.sum()


#: activations a Keras layer may carry fused (``Conv2D(..., activation="relu")``), applied to the port module's
#: output before comparing (the port runs them as separate modules or functional calls)
PORT_TRANSFORMS = ("softmax", "relu", "relu6", "sigmoid", "tanh", "elu", "swish", "silu", "linear", "last_step",
                   "bidirectional_last_step", "channels_last", "time_major", "time_major_last_step",
                   "bidirectional_time_major_last_step", "go_backwards")
#: transforms that only move axes: the module's inputs get the inverse (isolated stage), its gradient the same
#: transform (gradients stage). ``channels_last``: a Conv1d's (N, C, L) compared as Keras' (N, L, C).
LAYOUT_TRANSFORMS = {"channels_last": lambda x: x.transpose(1, -1).contiguous() if x.dim() == 3 else x}
#: a time-major recurrent module (``batch_first=False``, fed (L, N, C)): its sequence compared as Keras' (N, L, C)
LAYOUT_TRANSFORMS["time_major"] = lambda x: x.transpose(0, 1).contiguous() if x.dim() == 3 else x
#: transforms whose module reads its input in another layout than Keras' (the isolated stage feeds it so):
#: a time-major RNN compared at Keras' last step
INPUT_TRANSFORMS = {"time_major_last_step": LAYOUT_TRANSFORMS["time_major"],
                    "bidirectional_time_major_last_step": LAYOUT_TRANSFORMS["time_major"],
                    # Keras RNN(go_backwards=True) reads the sequence from its end: its port module is fed x.flip(1)
                    # (the output is compared as it is: Keras does not flip it back), ``"go_backwards|last_step"``
                    "go_backwards": lambda x: x.flip(1) if x.dim() == 3 else x}


def _bidirectional_last_step(x):
    """What Keras' ``Bidirectional(rnn, return_sequences=False)`` returns, from torch's (N, L, 2H) sequence: the
    forward half at the last step, the backward half at step 0 (its last step; parity.core.families.recurrent)."""
    import torch

    h = x.shape[-1] // 2
    return torch.cat([x[:, -1, :h], x[:, 0, h:]], dim=-1)


def _bidirectional_time_major_last_step(x):
    """:func:`_bidirectional_last_step` of a time-major (L, N, 2H) sequence (``batch_first=False``)."""
    return _bidirectional_last_step(x.transpose(0, 1))


def packed_as_keras(tap: Tap, module, out):
    """An nn.LSTM/GRU/RNN fed a PackedSequence (the port of Embedding(mask_zero=True),
    :data:`parity.core.families.embedding.MASK_ZERO_AS_PACKING`) returns a PackedSequence: its sequence padded
    with zeros (Keras' Bidirectional sets ``zero_output_for_mask`` when it returns sequences) and, for a last-step
    tap, the final states ``h_n`` written where the tap's transform reads Keras' last step (forward at step -1,
    backward at step 0)."""
    import torch

    seq, state = out[0], out[1] if len(out) > 1 else None
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(seq, batch_first=True)
    h = state[0] if isinstance(state, tuple) else state
    if h is None or tap.port_transform not in ("last_step", "bidirectional_last_step"):
        if getattr(module, "bidirectional", False):
            return padded
        # a one-direction Keras RNN (zero_output_for_mask=False) repeats its last unmasked output at masked steps
        steps = torch.arange(padded.shape[1])[None, :]
        idx = torch.minimum(steps, (lengths - 1).clamp(min=0)[:, None]).to(padded.device)
        return torch.gather(padded, 1, idx[:, :, None].expand(-1, -1, padded.shape[2]))
    if tap.port_transform == "bidirectional_last_step" and getattr(module, "bidirectional", False):
        half = padded.shape[-1] // 2
        last = torch.cat([padded[:, -1:, :half].detach() * 0 + h[-2][:, None], padded[:, -1:, half:]], -1)
        first = torch.cat([padded[:, :1, :half], padded[:, :1, half:].detach() * 0 + h[-1][:, None]], -1)
        return torch.cat([first, padded[:, 1:-1], last], 1)
    return torch.cat([padded[:, :-1], h[-1][:, None]], 1)


def gap_as_keras(tap: Tap, t):
    """A global average pooling tapped at ``nn.AdaptiveAvgPool2d(1)`` is (N, C, 1, 1) in torch, (N, C) in Keras
    (``GlobalAveragePooling2D(keepdims=False)``, keras/src/layers/pooling/base_global_pooling.py): the same
    numbers, compared as (N, C)."""
    if tap.kind in ("gap", "global_maxpool") and getattr(t, "dim", None) is not None and t.dim() in (3, 4, 5) \
            and all(d == 1 for d in t.shape[2:]):  # (N, C, 1, 1), a volume's (N, C, 1, 1, 1), a sequence's (N, C, 1)
        return t.flatten(1)
    return t


def _column_softmax(name: str, t):
    """``"softmax[a:b]+softmax[c:d]"``: softmax over those column ranges of a (N, D) tensor (a model's several
    outputs packed side by side, :mod:`parity.user.outputs`), the other columns as they are."""
    import torch

    cols = []
    for part in name.split("+"):
        m = re.fullmatch(r"softmax\[(\d+):(\d+)\]", part)
        if m is None:
            raise ValueError(f"expected port_transform softmax[a:b](+softmax[c:d]...). Received: {name!r}")
        cols.append((int(m.group(1)), int(m.group(2))))
    pieces, at = [], 0
    for a, b in sorted(cols):
        pieces += [t[:, at:a], t[:, a:b].softmax(dim=1)]
        at = b
    pieces.append(t[:, at:])
    return torch.cat(pieces, dim=1)


def _prepad(part: str):
    """``"prepad[l,r]"``: the pad a port applies before its Conv1d (``F.pad(x, (l, r))`` on the time axis of
    (N, C, L)), given to the module in isolation; the module's output is compared as it is. An image's or a
    volume's: ``"prepad[t,b,l,r]"`` / ``"prepad[f,k,t,b,l,r]"``, (before, after) per spatial axis in order (a
    ``F.pad(x, (0, 1, 0, 1, 0, 1))`` before a stride-2 Conv3d)."""
    m = re.fullmatch(r"prepad\[(\d+(?:,\d+)*)\]", part)
    if m is None:
        return None
    vals = [int(v) for v in m.group(1).split(",")]
    if len(vals) % 2:
        return None
    pads = [v for k in reversed(range(0, len(vals), 2)) for v in vals[k:k + 2]]  # F.pad: the last axis first

    def pad(x):
        import torch.nn.functional as F

        return F.pad(x, pads)

    return pad


def input_transform(name: str | None):
    """What the isolated stage applies to a reference input before the tap's module (an axis move), or None;
    a composed transform (``"relu|channels_last"``) moves the axes of its layout part."""
    fns = [f for f in (LAYOUT_TRANSFORMS.get(part) or INPUT_TRANSFORMS.get(part) or _prepad(part)
                       for part in (name or "").split("|")) if f is not None]
    if len(fns) < 2:
        return fns[0] if fns else None

    def composed(x):  # in order: a go_backwards flip (Keras layout), then a time-major transpose
        for f in fns:
            x = f(x)
        return x

    return composed


def apply_transform(name: str | None, t):
    if name is None or name == "linear" or name == "go_backwards":  # go_backwards: the input's alone
        return t
    if "|" in name:  # composed, applied left to right: an elementwise activation, then an axis move
        for part in name.split("|"):
            t = apply_transform(part, t)
        return t
    if name.startswith("prepad["):  # the input's alone (input_transform)
        return t
    if name.startswith("crop["):  # "crop[a:b,c:d]": out[..., a:b, c:d] (a transposed conv's 'same' window)
        m = re.fullmatch(r"crop\[(\d+):(\d+),(\d+):(\d+)\]", name)
        if m is None:
            raise ValueError(f"expected port_transform crop[a:b,c:d]. Received: {name!r}")
        a, b, c, d = (int(v) for v in m.groups())
        return t[..., a:b, c:d]
    if name.startswith("softmax["):
        return _column_softmax(name, t)
    import torch.nn.functional as F

    fns = {"softmax": lambda x: x.softmax(dim=1), "relu": F.relu, "relu6": F.relu6, "sigmoid": lambda x: x.sigmoid(),
           "tanh": lambda x: x.tanh(), "elu": F.elu, "swish": F.silu, "silu": F.silu,
           "last_step": lambda x: x[:, -1], "bidirectional_last_step": _bidirectional_last_step,
           "time_major_last_step": lambda x: x[-1],
           "bidirectional_time_major_last_step": _bidirectional_time_major_last_step,
           **LAYOUT_TRANSFORMS}
    if name not in fns:
        raise ValueError(f"expected port_transform None or one of {', '.join(PORT_TRANSFORMS)}. Received: {name!r}")
    return fns[name](t)


def apply_transform_np(name: str | None, a: np.ndarray) -> np.ndarray:
    """:func:`apply_transform` on a numpy array (one implementation of each transform: torch's)."""
    if name is None or name == "linear":
        return a
    import torch

    return apply_transform(name, torch.from_numpy(np.ascontiguousarray(a))).numpy()


def module_info(m) -> dict[str, Any]:
    """The structure description of a torch module (mirrors reference_side.layer_info)."""
    info: dict[str, Any] = {"class": type(m).__name__}
    for k in ("kernel_size", "stride", "padding", "dilation", "groups", "eps", "momentum", "affine",
              "ceil_mode", "in_features", "out_features", "in_channels", "out_channels", "p", "size", "alpha",
              "beta", "k", "negative_slope", "count_include_pad", "tf_padding", "dim"):
        if hasattr(m, k) and not callable(getattr(m, k)):
            v = getattr(m, k)
            info[k] = list(v) if isinstance(v, tuple) else (v if isinstance(v, (int, float, str, bool)) or v is None
                                                            else str(v))
    for sub in ("depthwise", "pointwise"):
        if hasattr(m, sub):
            s = getattr(m, sub)
            info[sub] = {k: (list(getattr(s, k)) if isinstance(getattr(s, k), tuple) else getattr(s, k))
                         for k in ("kernel_size", "stride", "groups") if hasattr(s, k)}
            if hasattr(s, "tf_padding"):
                info[sub]["tf_padding"] = s.tf_padding
            elif hasattr(s, "padding"):
                info[sub]["padding"] = list(s.padding) if isinstance(s.padding, tuple) else s.padding
    params = list(m.parameters())
    info["params"] = int(sum(p.numel() for p in params))
    info["trainable_params"] = int(sum(p.numel() for p in params if p.requires_grad))
    bufs = dict(m.named_buffers())
    info["buffers"] = int(sum(b.numel() for k, b in bufs.items() if not k.endswith("num_batches_tracked")))
    info["num_batches_tracked"] = int(sum(1 for k in bufs if k.endswith("num_batches_tracked")))
    info.update(torch_info(m))  # the layer families' attributes (LSTM batch_first, LayerNorm shape, ...)
    info["has_bias"] = any(k.split(".")[-1] == "bias" and "bn" not in type(m).__name__.lower()
                           for k, _ in m.named_parameters()) and not isinstance(m, _bn_types())
    for name, act in (("ReLU", "relu"), ("ReLU6", "relu6"), ("Softmax", "softmax"), ("Tanh", "tanh"),
                      ("Sigmoid", "sigmoid"), ("LeakyReLU", "leaky_relu"), ("ELU", "elu"), ("GELU", "gelu"),
                      ("Identity", "linear")):
        if type(m).__name__ == name:
            info["activation"] = act
    return info


def _bn_types():
    from torch import nn

    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    """The strides of a C-ordered array of ``shape`` (what ``np.empty`` makes)."""
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


@dataclass
class TapRecord:
    output: Any
    calls: int


class TorchSide:
    """A torch module with hooks on the tapped modules."""

    def __init__(self, module, taps: list[Tap], device: str = "cpu", dtype: str = "float64"):
        import torch

        if dtype not in TORCH_DTYPES:
            raise ValueError(f"--dtype: expected one of {TORCH_DTYPES}. Received: {dtype!r}.")
        self.torch = torch
        self.device = resolve_device(device)
        self.dtype = getattr(torch, dtype)
        self.module = module.to(device=self.device, dtype=self.dtype)
        self.taps = taps
        #: calls per submodule (``id`` -> count) in the last whole eval forward (``ported_torch.inspect``)
        self.module_calls = None
        # remove_duplicate=False: a block shared by several paths (one module called 8x) answers all of them
        self.modules = dict(self.module.named_modules(remove_duplicate=False))
        self.missing = [t for t in taps if t.port not in self.modules]
        self.records: dict[str, TapRecord] = {}
        #: the last forward's exception, as one line (a port that cannot run a batch is a finding, not a crash)
        self.error: str | None = None

    def twin(self) -> "TorchSide":
        """Another TorchSide over a deep copy of the module (parameters, buffers, mode), for work on another
        thread while this one trains: neither sees what the other does. The recorded call arguments of its
        attention / recurrent modules (read by :meth:`isolated`) are shared, read only. Raises what
        ``copy.deepcopy`` raises for a module that cannot be copied (e.g. ``torch.nn.utils.weight_norm``'s
        computed weight, a non-leaf tensor)."""
        other = copy.copy(self)
        other.module = copy.deepcopy(self.module)
        other.modules = dict(other.module.named_modules(remove_duplicate=False))
        other.records, other.error = {}, None
        if "_attention_calls" in self.__dict__:
            other._attention_calls = dict(self._attention_calls)
        return other

    # -- weights -----------------------------------------------------------------------------------------
    def expected_state(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.module.state_dict().items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        torch = self.torch
        sd = self.module.state_dict()
        tensors = {}
        for k, v in state.items():
            if k in sd and tuple(sd[k].shape) == tuple(np.shape(v)):
                tensors[k] = torch.as_tensor(np.asarray(v)).to(device=self.device, dtype=sd[k].dtype)
        self.module.load_state_dict(tensors, strict=False)

    def snapshot(self, store=None):
        """The module's state and mode. With a :class:`parity.core.spill.SpillStore` the state goes to disk, one
        tensor at a time (a second in-memory copy of GOTURN's weights is 0.9 GB in float64)."""
        if store is None:
            return copy.deepcopy(self.module.state_dict()), self.module.training
        state = SpillDict(store)
        for k, v in self.module.state_dict().items():
            state[k] = v.detach().cpu().numpy()
        return state, self.module.training

    def restore(self, snap) -> None:
        state, training = snap
        if hasattr(state, "handle"):  # spilled: load tensor by tensor into the module's own storage
            torch = self.torch
            sd = self.module.state_dict()
            with torch.no_grad():
                for k in state:
                    if k in sd:
                        sd[k].copy_(torch.from_numpy(state[k]))
        else:
            self.module.load_state_dict(state)
        self.module.train(training)

    # -- taps ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def tapping(self, sink=None, grad_sink=None):
        """Forward hooks on the tapped modules. Without a sink each first call's output tensor is kept in
        :attr:`records`. With ``sink(tap, array)`` each output is handed over as numpy when computed and not
        kept (the record holds its shape); ``grad_sink(tap, array)`` receives its gradient during backward (a
        tensor hook, not a retained ``.grad``): a large model is compared tap by tap without a second copy of
        its activations or gradients."""
        self.records = {}
        handles = []
        for tap in self.taps:
            mod = self.modules.get(tap.port)
            if mod is None:
                continue

            def hook(_m, _inp, out, tap=tap):
                rec = self.records.get(tap.path)
                if rec is not None:  # a module called more than once: keep the first call
                    rec.calls += 1
                    return
                t = out[0] if isinstance(out, tuple) else out  # nn.LSTM/GRU/RNN: (output, state)
                if type(t).__name__ == "PackedSequence":
                    packed, t = t, packed_as_keras(tap, _m, out)
                    if sink is not None:  # compared as Keras' tensor; its gradient read off the packed data
                        value = self.tap_value(tap, TapRecord(t, 1))
                        sink(tap, value)
                        if grad_sink is not None and packed.data.requires_grad and not tap.port_transform:
                            # zeros at masked steps: the next masked layer skips them (no gradient reaches them)
                            packed.data.register_hook(lambda g, tap=tap, p=packed: grad_sink(
                                tap, self.torch.nn.utils.rnn.pad_packed_sequence(type(p)(
                                    g.detach(), p.batch_sizes, p.sorted_indices, p.unsorted_indices),
                                    batch_first=True)[0].cpu().numpy()))
                        self.records[tap.path] = TapRecord(tuple(value.shape), 1)
                        return
                if sink is not None:
                    value = self.tap_value(tap, TapRecord(t, 1))
                    sink(tap, value)
                    if grad_sink is not None and t.requires_grad and (not tap.port_transform
                                                                      or tap.port_transform in LAYOUT_TRANSFORMS):
                        t.register_hook(lambda g, tap=tap: grad_sink(tap, apply_transform(
                            tap.port_transform if tap.port_transform in LAYOUT_TRANSFORMS else None,
                            gap_as_keras(tap, g.detach())).cpu().numpy()))
                    self.records[tap.path] = TapRecord(tuple(value.shape), 1)  # as compared (after a transform)
                    return
                self.records[tap.path] = TapRecord(t, 1)

            handles.append(mod.register_forward_hook(hook))
            if tap.kind in ATTENTION_KINDS + RECURRENT_KINDS:  # its mask arguments, replayed in isolation
                handles.append(mod.register_forward_pre_hook(functools.partial(self._record_call, tap.port),
                                                             with_kwargs=True))
        try:
            yield self.records
        finally:
            for h in handles:
                h.remove()

    def to_input(self, x_nhwc: np.ndarray):
        """A reference input (NHWC) as the port's input tensor (NCHW, the port's dtype and device)."""
        x = np.asarray(x_nhwc)
        a = nhwc_to_nchw(x)
        return self.as_tensor(a, fresh=a is not x)  # a copy made by the move, unless it was a view

    def as_tensor(self, a: np.ndarray, fresh: bool = False):
        """An array already in the port's layout as the port's input tensor. An array that owns its C-ordered
        memory (``fresh``: the caller's own, or a copy made here) is used as is; anything else is copied, so the
        tensor never shares memory with the reference's data and NHWC -> NCHW of a C=1 array does not become an
        ambiguous channels_last view."""
        a = np.asarray(a)
        # recycled memory lent to the caller is its own as well, laid out as np.empty lays it out (not a view with
        # other strides: NHWC -> NCHW of a C=1 array would be an ambiguous channels_last tensor)
        own = a.flags.owndata or (POOL.lent(a) and a.strides == _c_strides(a.shape, a.itemsize))
        if not (fresh and a.flags.c_contiguous and own and a.flags.writeable):
            a = np.array(a, order="C", copy=True)
        if np.issubdtype(a.dtype, np.integer):  # token ids stay integers (an Embedding's input)
            return self.torch.from_numpy(a.astype(np.int64)).to(device=self.device)
        return self.torch.from_numpy(a).to(device=self.device, dtype=self.dtype)

    def tap_value(self, tap: Tap, rec: TapRecord) -> np.ndarray:
        t = apply_transform(tap.port_transform, gap_as_keras(tap, rec.output.detach()))
        return t.cpu().numpy()

    def forward_eval(self, x_nhwc: np.ndarray, sink=None) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
        """Eval-mode forward. Returns (acts, final output, calls per tap); with ``sink`` the activations go
        to it as they are computed and ``acts`` holds their shapes instead."""
        torch = self.torch
        self.module.eval()
        self.error = None
        out = None
        from ported_torch.inspect import counting_calls

        self.module_calls = None
        with torch.no_grad(), self.tapping(sink=sink) as recs, counting_calls(self.module) as module_calls:
            try:
                out = self.module(self.to_input(x_nhwc))
                self.module_calls = module_calls  # whole forwards only (the structure stage's shared modules)
            except Exception as exc:  # a broken port: keep what was tapped before it failed
                self.error = (f"port forward ({type(self.module).__qualname__}.forward) raised {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}")
        if sink is not None:
            acts = {t.path: recs[t.path].output for t in self.taps if t.path in recs}
        else:
            acts = {t.path: self.tap_value(t, recs[t.path]) for t in self.taps if t.path in recs}
        calls = {p: r.calls for p, r in recs.items()}
        return acts, (out.detach().cpu().numpy() if out is not None else None), calls

    def train_forward_backward(self, x_nhwc, y, loss_spec: LossSpec, sink=None, grad_sink=None):
        """One train-mode forward + backward; returns the loss (None when the forward raised: see
        :attr:`error`). Parameter gradients stay on ``.grad``; with ``sink`` / ``grad_sink`` (see
        :meth:`tapping`) every tap's output and its gradient are handed over as they are computed."""
        torch = self.torch
        import torch.nn.functional as F

        self.module.train()
        self.module.zero_grad(set_to_none=True)
        self.error = None
        # no sink (later steps of a multi-step check): no hooks, so no tap output outlives the backward pass
        taps = self.tapping(sink=sink, grad_sink=grad_sink) if sink is not None else contextlib.nullcontext()
        with taps:
            try:
                out = self.module(self.to_input(x_nhwc))
            except Exception as exc:
                self.error = (f"port forward ({type(self.module).__qualname__}.forward) raised {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}")
                return None
        yt = torch.as_tensor(y).to(device=self.device, dtype=self.dtype)
        loss = torch_loss(F, loss_spec, out, yt)
        del out
        loss.backward()
        return float(loss.detach())

    def param(self, key: str):
        return dict(self.module.named_parameters()).get(key)

    def _record_call(self, port: str, _m, args, kwargs):
        """The first call's arguments of an attention module (detached): the masks and flags it was given."""
        calls = self.__dict__.setdefault("_attention_calls", {})
        if port not in calls:
            det = (lambda a: a.detach() if self.torch.is_tensor(a) else a)
            calls[port] = (tuple(det(a) for a in args), {k: det(v) for k, v in kwargs.items()})

    def _replay_call(self, port: str, xs: list):
        """``(args, kwargs)`` for the module at ``port`` in isolation: its recorded call with the data tensors (the
        ones shaped like its first input: query, key, value; ``query=``/``key=``/``value=``) replaced by the
        reference's inputs ``xs`` (Keras' (query, value[, key]) order: a missing key is the value), and every
        other argument (``attn_mask``, ``is_causal``, a mask passed positionally) as the port passed it; None
        when no call was recorded."""
        rec = (self.__dict__.get("_attention_calls") or {}).get(port)
        if rec is None or not xs:
            return None
        args, kwargs = list(rec[0]), dict(rec[1])
        first = next((a for a in args if self.torch.is_tensor(a)), kwargs.get("query"))
        if first is None:
            return None
        slots = [("a", k) for k, a in enumerate(args) if self.torch.is_tensor(a) and a.is_floating_point()
                 and a.shape == first.shape]
        slots += [("k", k) for k in ("query", "key", "value") if self.torch.is_tensor(kwargs.get(k))]
        q, v = xs[0], xs[1] if len(xs) > 1 else xs[0]
        key = xs[2] if len(xs) > 2 else v
        fill = {1: [q], 2: [q, v], 3: [q, key, v]}.get(len(slots))
        if fill is None:
            return None
        for (where, k), x in zip(slots, fill):
            if where == "a":
                args[k] = x
            else:
                kwargs[k] = x
        return args, kwargs

    def _replay_lengths(self, port: str, xs: list):
        """A recurrent module called with more than its sequence (the lengths of a packed, masked port): its
        recorded call with the sequence replaced by the reference's input; None for a plain ``module(x)``."""
        rec = (self.__dict__.get("_attention_calls") or {}).get(port)
        if rec is None or not xs or not rec[0]:
            return None
        first = rec[0][0]
        if type(first).__name__ == "PackedSequence":  # packed by the parent: the reference's input packed alike
            rnn = self.torch.nn.utils.rnn
            lengths = rnn.pad_packed_sequence(first, batch_first=True)[1]
            bf = bool(getattr(self.modules.get(port), "batch_first", True))
            return [rnn.pack_padded_sequence(xs[0] if bf else xs[0].transpose(0, 1), lengths, batch_first=bf,
                                             enforce_sorted=False)] + list(rec[0][1:]), dict(rec[1])
        if len(rec[0]) < 2 and not rec[1]:
            return None
        return [xs[0]] + list(rec[0][1:]), dict(rec[1])

    def isolated(self, tap: Tap, ref_inputs: list[np.ndarray], port_layout: bool = False) -> np.ndarray | None:
        """The tap's module alone, fed with the reference's input(s) to that layer (eval mode): NHWC, or with
        ``port_layout`` already in the port's (``parity.stages.forward.port_input_layout``: arrays of the
        caller's own, used without a copy)."""
        torch = self.torch
        mod = self.modules.get(tap.port)
        if mod is None or tap.port == "":
            return None
        xs = []
        for a in ref_inputs:
            a = np.asarray(a)
            if not port_layout and tap.kind == "dense" and tap.flatten_chw is not None and a.ndim == 2:
                a = hwc_flat_to_chw_flat(a, tap.flatten_chw)
            x = self.as_tensor(a, fresh=True) if port_layout else self.to_input(a)
            to_port = input_transform(tap.port_transform)
            xs.append(to_port(x) if to_port is not None else x)
        if self.module.training:  # once per stage, not per layer (eval() visits every submodule)
            self.module.eval()
        with torch.no_grad():
            try:
                replay = self._replay_call(tap.port, xs) if tap.kind in ATTENTION_KINDS else \
                    self._replay_lengths(tap.port, xs) if tap.kind in RECURRENT_KINDS else None
                try:
                    out = mod(*replay[0], **replay[1]) if replay is not None else mod(*xs)
                except TypeError:
                    # a reference layer fed one tensor twice (self-attention: MultiHeadAttention()(x, x)) and a
                    # port module taking it once (forward(self, x)): call it with the distinct inputs
                    distinct = [x for k, x in enumerate(xs) if not any(
                        y.shape == x.shape and bool(torch.equal(y, x)) for y in xs[:k])]
                    if len(distinct) == len(xs):
                        raise
                    out = mod(*distinct)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                return None
        if isinstance(out, tuple) and type(out[0]).__name__ == "PackedSequence":
            out = packed_as_keras(tap, mod, out)
        out = out[0] if isinstance(out, tuple) else out  # nn.LSTM/GRU/RNN: (output, state)
        return apply_transform(tap.port_transform, gap_as_keras(tap, out)).cpu().numpy()
