"""What every diagnosis rule shares: the :class:`Run` a numeric rule reads (the result, and the two sides when
the check passes them in), the finding constructor, the small numeric helpers, and the probes that re-run the
port (its eval activations, the input one module receives, its dropout modules)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from parity.core.results import CheckResult, Finding
from parity.core.spec import Tap
from parity.core.tensors import nhwc_to_nchw

#: activation functions tried when a module receives an input other than the reference's
PROBE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "tanh")
#: relative agreement that counts as "this explains it" in a numeric probe (float32 runs are ~1e-7 noisy)
PROBE_RTOL = 1e-5
#: what a check hands the numeric rules, by name (a mapping with these keys, or an object with these attributes)
RUN_FIELDS = ("final", "calls", "loss", "output_path", "reference_run", "torch_side", "spec", "taps")


def close(a, b, rel=1e-9) -> bool:
    """``a`` and ``b`` agree to ``rel`` relative to the larger (None never agrees)."""
    return a is not None and b is not None and abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def pair(v):
    """``3`` / ``[3, 3]`` -> ``(3, 3)``; None stays None."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v), int(v))


def base(path: str) -> str:
    """The layer path of a tensor path (``b/bn:running_var@step2`` -> ``b/bn``)."""
    return path.split(":")[0].split("@")[0]


def finding(cause, path, message, fix, stage, evidence="", severity="error") -> Finding:
    return Finding(cause=cause, path=path, message=message, fix=fix, stage=stage, evidence=evidence,
                   severity=severity)


def _fields(outputs) -> dict[str, Any]:
    if outputs is None:
        return {}
    if isinstance(outputs, Mapping):
        return dict(outputs)
    return {k: getattr(outputs, k) for k in RUN_FIELDS if getattr(outputs, k, None) is not None}


class Run:
    """What the numeric rules may read: the result always; the reference run, the port side, the taps and
    the spec when the check passes them in (``outputs``: a mapping with the keys of :data:`RUN_FIELDS`, or an
    object with those attributes)."""

    def __init__(self, result: CheckResult, outputs=None):
        self.result = result
        self.po = _fields(outputs)
        self.ref = self.po.get("reference_run")
        self.ts = self.po.get("torch_side")
        self.spec = self.po.get("spec")
        self.taps: list[Tap] = list(self.po.get("taps") or (self.ref.taps if self.ref is not None else []))
        self.tap_by_path = {t.path: t for t in self.taps}
        rows = result.stage("structure").rows if result.stage("structure") is not None else []
        self.row_by_path = {r.get("path"): r for r in rows}

    @property
    def arrays(self) -> bool:
        return self.ref is not None and self.ts is not None

    def ref_layer(self, path: str) -> str | None:
        t = self.tap_by_path.get(path)
        if t is not None:
            return t.ref
        row = self.row_by_path.get(path)
        if row and row.get("reference"):
            return str(row["reference"]).rsplit(" (", 1)[0]
        return None

    def kind(self, path: str) -> str | None:
        t = self.tap_by_path.get(path)
        if t is not None:
            return t.kind
        row = self.row_by_path.get(path)
        return row.get("kind") if row else None

    def port_path(self, path: str) -> str | None:
        t = self.tap_by_path.get(path)
        if t is not None:
            return t.port
        row = self.row_by_path.get(path)
        if row and row.get("port"):
            return str(row["port"]).rsplit(" (", 1)[0]
        return None

    def tap_paths(self) -> list[str]:
        if self.taps:
            return [t.path for t in self.taps]
        return list(self.row_by_path)

    def errors_at(self, path: str) -> list[Finding]:
        return [f for f in self.result.findings if f.severity == "error" and f.path == path]


# ---- probes of the port ----------------------------------------------------------------------------------------
def port_train_output(run: Run, transform=None):
    """The port's train-mode output on the reference's first batch, ``transform``-ed (a torch function) while
    still a tensor, as a numpy array; the port's state is restored after."""
    ts = run.ts
    snap = ts.snapshot()
    try:
        ts.module.train()
        with ts.torch.no_grad():
            out = ts.module(ts.to_input(run.ref.inputs[0]))
        return (transform(out) if transform is not None else out).detach().cpu().numpy()
    finally:
        ts.restore(snap)


def port_acts(run: Run):
    """The port's eval activations on the reference's input (NCHW numpy)."""
    acts, _, _ = run.ts.forward_eval(run.ref.inputs[0])
    return acts


def module_inputs(run: Run, tap: Tap) -> list[np.ndarray] | None:
    """The inputs the port's module for ``tap`` receives in an eval forward on the reference's input (None when
    the module does not exist or is not called)."""
    mod = run.ts.modules.get(tap.port)
    if mod is None:
        return None
    torch = run.ts.torch
    got = []
    h = mod.register_forward_hook(lambda m, i, o: got.append([t.detach().cpu().numpy() for t in i
                                                               if torch.is_tensor(t)]))
    try:
        run.ts.forward_eval(run.ref.inputs[0])
    finally:
        h.remove()
    return got[0] if got else None


def module_input(run: Run, tap: Tap, k: int = 0):
    """The ``k``-th input the port's module for ``tap`` receives in an eval forward on the reference's input."""
    got = module_inputs(run, tap)
    return got[k] if got is not None and len(got) > k else None


def earlier_acts(run: Run, path) -> list[tuple[str, np.ndarray]]:
    """The reference's eval outputs of the taps before ``path`` (nearest first), in the port's layout."""
    paths = run.tap_paths()
    out = []
    for p in reversed(paths[:paths.index(path)] if path in paths else []):
        a = run.ref.eval_acts.get(p)
        if a is not None:
            out.append((p, nhwc_to_nchw(np.asarray(a))))
    return out


def dropout_modules(run: Run) -> list[str]:
    """The port's untapped dropout modules with a non-zero rate, as ``name (Dropout(p=0.5))``."""
    if run.ts is None:
        return []
    tapped = {t.port for t in run.taps}
    out = []
    for name, m in run.ts.module.named_modules():
        if "Dropout" in type(m).__name__ and name not in tapped and getattr(m, "p", 0):
            out.append(f"{name} ({type(m).__name__}(p={m.p:g}))")
    return out


def ref_activation(ref: dict[str, Any]) -> str | None:
    """The activation a reference layer config applies (``relu``, ``relu6``, ``leaky_relu``, ...), else None."""
    cls = ref.get("class")
    if cls == "ReLU":
        mv = ref.get("max_value")
        if mv is not None and close(float(mv), 6.0):
            return "relu6"
        if ref.get("negative_slope"):
            return "leaky_relu"
        return "relu"
    if cls == "Activation":
        return ref.get("activation")
    if cls == "LeakyReLU":
        return "leaky_relu"
    return None


def looks_fresh(w: np.ndarray) -> str:
    """A note when ``w`` looks like torch's default init (within +-1/sqrt(fan_in), near the bound)."""
    if w.ndim < 2:
        return ""
    fan_in = int(np.prod(w.shape[1:]))
    bound = 1.0 / math.sqrt(fan_in)
    if np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.8 * bound:
        return f"values within +-1/sqrt(fan_in) = {bound:.3g}: torch's default kaiming_uniform(a=sqrt(5)) init"
    return ""
