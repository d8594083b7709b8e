"""The ONNX third leg (``parity check --onnx``): both models exported to ONNX and run by onnxruntime, an
implementation that is neither TensorFlow nor PyTorch.

- the port: ``torch.onnx.export(..., dynamo=True)`` (needs onnxscript). Not the legacy exporter: its graph of a
  port with TF-'same' asymmetric ``F.pad`` fails to load in onnxruntime (ShapeInferenceError at the residual
  Add; measured with onnxruntime 1.30);
- the reference: the Keras model rebuilt from the pair's builder with the run's initial weights
  (``ref.weights``; ``ReferenceRun`` holds no model object) and ``model.export(path, format="onnx")`` (tf2onnx).
  Needs TensorFlow: on a replayed trace without it, only the port's export runs.

Compared on the final output (the tap whose port module is the whole model), one row per output: the
reference's Keras output against the port's ONNX export run by onnxruntime, with every other figure as an
extra column (``TensorDiff.extra``): torch vs Keras, ORT(torch export) vs Keras, ORT(Keras export) vs Keras,
each export vs its own framework and the two exports against each other. Intermediate activations are not
compared: both exporters fold BatchNorm into the preceding convolution, so the graphs have no tensor that
matches a tap.

onnxruntime's CPU provider has no float64 Conv: a float64 check whose float64 graph does not load is run in
float32 (both exports, both inputs rounded to float32) and compared under the float32 forward policy
(``stage.info["ort_dtype"]`` and ``info["why_float32"]`` say so).

A difference that only one export shows (the framework it came from agrees with the other side) is an
exporter issue, not a port issue: a ``Finding(cause="exporter", severity="warning")``; the row then compares
the port itself and its note says why. Nothing here prints.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.backends.keras_side import set_keras_weights
from parity.backends.torch_side import apply_transform_np
from parity.core.env import import_tensorflow
from parity.core.results import Finding, StageResult
from parity.core.spec import resolve
from parity.core.tensors import nhwc_to_nchw, tensor_diff
from parity.stages.context import CheckContext

#: loggers the exporters chatter on (warnings about torchvision ops, tf2onnx progress)
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "tf2onnx", "absl")


class OnnxUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def _quiet():
    """Exporters print progress to stdout/stderr and warn through logging: keep all of it out of the CLI."""
    import warnings

    levels = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield out
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300] if msg else ''}"


def _session(model_bytes_or_path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, sess_options=opts, providers=["CPUExecutionProvider"])


def _run(sess, x: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


# -- the port -------------------------------------------------------------------------------------------------
def export_torch(module, x_nchw: np.ndarray, dtype: str, workdir: str) -> str:
    """The port (a CPU copy, eval mode, in ``dtype``) exported with the dynamo exporter; returns the path."""
    import torch

    m = copy.deepcopy(module).to(device="cpu", dtype=getattr(torch, dtype)).eval()
    x = torch.from_numpy(np.ascontiguousarray(x_nchw, dtype=dtype))
    path = os.path.join(workdir, f"port_{dtype}.onnx")
    with _quiet(), torch.no_grad():
        prog = torch.onnx.export(m, (x,), dynamo=True, verbose=False, external_data=False)
        prog.save(path)
    return path


def torch_forward(module, x_nchw: np.ndarray, dtype: str) -> np.ndarray:
    import torch

    m = copy.deepcopy(module).to(device="cpu", dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        return m(torch.from_numpy(np.ascontiguousarray(x_nchw, dtype=dtype))).numpy()


# -- the reference --------------------------------------------------------------------------------------------
def export_keras(spec, ref, dtype: str, x_nhwc: np.ndarray, workdir: str) -> tuple[str, np.ndarray]:
    """The reference rebuilt in ``dtype`` with the run's initial weights and exported with
    ``model.export(format="onnx")``. Returns (path, the rebuilt model's own output on ``x_nhwc``). The Keras
    global dtype state and the weights of a model the builder returns as is are restored."""
    keras = import_tensorflow()
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(int(ref.meta.get("seed", 0)))
        model = resolve(spec.reference)(**dict(ref.meta.get("config") or {}))
        got = str(model.weights[0].dtype) if model.weights else dtype
        if dtype not in got:
            raise OnnxUnavailable(f"the reference builder returned a {got} model, not {dtype}")
        saved = [v.numpy().copy() for v in model.weights]
        try:
            set_keras_weights(model, ref.weights)
            out = np.asarray(model(x_nhwc, training=False))
            path = os.path.join(workdir, f"reference_{dtype}.onnx")
            with _quiet():
                model.export(path, format="onnx", verbose=False)
        finally:
            for v, a in zip(model.weights, saved):
                v.assign(a)
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)
    return path, out


def output_tap(taps):
    """The tap of the model's output (port path ``""``), else the last tap."""
    return next((t for t in reversed(taps) if t.port == ""), taps[-1] if taps else None)


def port_output(tap, a: np.ndarray) -> np.ndarray:
    """The tap's ``port_transform`` (e.g. softmax of the port's logits) applied to a port output in numpy."""
    return apply_transform_np(tap.port_transform, a)


def _max_abs(a, b) -> float | None:
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def _not_run(st: StageResult, t0: float, tap, message: str, fix: str) -> StageResult:
    """The port's export cannot be run: an exporter finding (warning), the stage skipped with the reason."""
    st.findings.append(Finding("exporter", tap.path, message, fix, stage="onnx", severity="warning"))
    st.skipped = message
    st.seconds = time.perf_counter() - t0
    return st


def run(ctx: CheckContext) -> None:
    """The ONNX leg when the check asked for it (``onnx=True``). It runs while the port holds the weights the
    reference's eval-mode outputs were computed with: before the training stages update them."""
    if not ctx.onnx:
        return
    ctx.say("onnx: export both sides, run onnxruntime")
    st = onnx_stage(ctx.spec, ctx.ref, ctx.ts, ctx.taps, dtype=ctx.dtype)
    ctx.result.stages.append(st)
    ctx.result.findings += st.findings


@dataclass
class _Legs:
    """The final output on every leg (None: that leg did not run) and the dtype onnxruntime ran in."""

    keras: np.ndarray
    torch: np.ndarray
    ort_dtype: str
    ort_torch: np.ndarray | None = None
    ort_keras: np.ndarray | None = None
    keras_rebuilt: np.ndarray | None = None


def onnx_stage(spec, ref, ts, taps, *, dtype: str) -> StageResult:
    """The ``onnx`` stage (see the module docstring)."""
    t0 = time.perf_counter()
    st = StageResult("onnx", info={"what": "both models exported to ONNX and run by onnxruntime (CPU)",
                                   "compared": "final output (exports fold BatchNorm into convs: no per-layer taps)"})
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        st.skipped = (f"needs onnx, onnxruntime and onnxscript ({_one_line(exc)}): "
                      "pip install -e .[onnx]")
        return st
    st.info["onnxruntime"] = onnxruntime.__version__
    tap = output_tap(taps)
    keras_out = ref.eval_acts.get(tap.path) if tap is not None else None
    if keras_out is None:
        st.skipped = "needs the reference's eval-mode forward: add forward_eval to --stages"
        return st
    x_nhwc = np.asarray(ref.inputs[0])
    x_nchw = nhwc_to_nchw(x_nhwc)
    try:
        torch_out = port_output(tap, torch_forward(ts.module, x_nchw, dtype))
    except Exception as exc:  # forward_eval reports the broken port already
        st.skipped = f"the port's forward raised {_one_line(exc)}"
        return st
    legs = _Legs(keras=np.asarray(keras_out), torch=torch_out, ort_dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="parity-onnx-") as workdir:
        failed = _port_export(st, legs, ts.module, tap, x_nchw, workdir)
        if failed is not None:
            return _not_run(st, t0, tap, *failed)
        _reference_export(st, legs, spec, ref, x_nhwc, workdir)
    _judge(st, legs, spec, tap, dtype)
    st.seconds = time.perf_counter() - t0
    return st


def _port_export(st: StageResult, legs: _Legs, module, tap, x_nchw: np.ndarray, workdir: str):
    """The port's export run by onnxruntime: the check's dtype first; float32 where onnxruntime has no kernel
    for it. Fills ``legs.ort_torch``; returns (message, fix) when it cannot run."""
    why32 = None
    attempts = (legs.ort_dtype, "float32") if legs.ort_dtype != "float32" else ("float32",)
    for attempt in attempts:
        legs.ort_dtype, last = attempt, attempt == attempts[-1]
        try:
            path = export_torch(module, x_nchw, attempt, workdir)
        except Exception as exc:  # the exporter cannot trace the port: a finding, not a crash
            if not last:
                why32 = (f"torch.onnx.export failed in {attempt} ({_one_line(exc)}); ran both exports in "
                         "float32, compared under the float32 forward tolerance")
                continue
            return (f"torch.onnx.export of the port failed: {_one_line(exc)}",
                    "export a forward without data-dependent control flow, or report it to PyTorch")
        try:
            sess = _session(path)
            legs.ort_torch = port_output(tap, _run(sess, np.ascontiguousarray(x_nchw, dtype=attempt)))
            break
        except Exception as exc:
            if last:
                return f"onnxruntime cannot run the port's export: {_one_line(exc)}", ""
            why32 = (f"onnxruntime cannot run the {attempt} graph ({_one_line(exc)}); ran both exports in "
                     "float32, compared under the float32 forward tolerance")
    st.info["ort_dtype"] = legs.ort_dtype
    if why32:
        st.info["why_float32"] = why32
    st.info["torch_exporter"] = "torch.onnx.export(dynamo=True)"
    return None


def _reference_export(st: StageResult, legs: _Legs, spec, ref, x_nhwc: np.ndarray, workdir: str) -> None:
    """The reference's export run by onnxruntime, in the dtype the port's ran in (when TensorFlow is here)."""
    dtype = legs.ort_dtype
    try:
        kpath, legs.keras_rebuilt = export_keras(spec, ref, dtype, np.asarray(x_nhwc, dtype=dtype), workdir)
        legs.ort_keras = _run(_session(kpath), np.ascontiguousarray(x_nhwc, dtype=dtype))
        st.info["keras_exporter"] = "keras Model.export(format='onnx') (tf2onnx)"
    except Exception as exc:  # no TensorFlow (replay), no tf2onnx, or the export failed
        st.info["keras_export"] = f"not run: {_one_line(exc)}"


def _judge(st: StageResult, legs: _Legs, spec, tap, dtype: str) -> None:
    """The row (ORT on the port's export against Keras, every other figure as an extra column) and the
    exporter findings."""
    tol = spec.tolerance.for_stage(legs.ort_dtype, "forward_eval")
    ftol = spec.tolerance.for_stage(dtype, "forward_eval")
    keras_ref = legs.keras
    extra: dict[str, Any] = {
        "torch_max_abs": _max_abs(legs.torch, keras_ref),
        "ort_torch_max_abs": _max_abs(legs.ort_torch, keras_ref),
        "ort_keras_max_abs": _max_abs(legs.ort_keras, keras_ref),
        "ort_torch_vs_torch": _max_abs(legs.ort_torch, legs.torch),
        "ort_keras_vs_keras": _max_abs(legs.ort_keras, legs.keras_rebuilt),
        "ort_torch_vs_ort_keras": _max_abs(legs.ort_torch, legs.ort_keras),
        "ort_dtype": legs.ort_dtype,
    }
    port_ok = tensor_diff(tap.path, keras_ref, legs.torch, ftol).passed
    row = tensor_diff(tap.path, keras_ref, legs.ort_torch, tol, note=f"ORT(port export, {legs.ort_dtype}) vs Keras")
    if not row.passed and port_ok:
        st.findings.append(Finding(
            "exporter", tap.path,
            f"onnxruntime on the port's ONNX export differs from the port itself (max|Δ| "
            f"{extra['ort_torch_vs_torch']:.3g}) while the port matches the reference: an exporter issue, not a "
            "port issue", "check the exported graph (torch.onnx.export dynamo=True) or report it to PyTorch",
            stage="onnx", evidence=row.describe(), severity="warning"))
        row = tensor_diff(tap.path, keras_ref, legs.torch, ftol,
                          note="the port (torch); its ONNX export differs: exporter issue, see findings")
    if legs.ort_keras is not None:
        kd = tensor_diff(f"{tap.path}@keras-export", keras_ref, legs.ort_keras, tol)
        st.info["keras_export_rel"] = kd.rel
        if not kd.passed:
            st.findings.append(Finding(
                "exporter", tap.path,
                f"onnxruntime on the reference's ONNX export (tf2onnx) differs from Keras (max|Δ| {kd.max_abs:.3g}, "
                f"allowed {kd.allowed:.3g}): an exporter issue, not a port issue",
                "check the tf2onnx conversion of the reference", stage="onnx", evidence=kd.describe(),
                severity="warning"))
    row.extra = extra
    st.tensors.append(row)
