"""``parity convert``: reference weights (Keras ``.h5`` / ``.weights.h5``, or the pair's own format such as
GOTURN's Caffe ``.npy`` or ``.caffemodel``) -> a torch ``state_dict`` for the pair's port, proven before it is
written:

1. read the file with the pair's loader (:func:`parity.backends.weights.load_weight_file`), matched against the
   reference model's own layout (the Keras model is built once, in float64, for its ``{layer: {var: shape}}``);
2. convert with :func:`weight_converters.keras.keras_to_torch`, strict against the port's ``state_dict``
   (missing, unexpected, shape mismatches and non-finite values all fail);
3. round trip torch -> Keras (:func:`weight_converters.keras.torch_to_keras`): every array bit-exact;
4. forward: the Keras model with the file's weights vs the port with the converted ones, float64, eval mode,
   one generated batch: max|Δ| of the output within the float64 forward tolerance (1e-10 x scale);
5. write ``.safetensors`` (``safetensors.numpy.save_file``) or ``.pt`` (``torch.save`` of a dict of tensors,
   loadable with ``torch.load(path, weights_only=True)``), in the dtypes of the port's own ``state_dict``
   (``num_batches_tracked`` int64), then read the file back and compare.

Returns the report lines and whether every check held; the last line is ``PASSED convert …`` or
``FAILED convert …``. Bad input files raise :class:`parity.core.errors.UsageError` (the CLI exits 2).
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from parity.backends.keras_side import expected_weights, set_keras_weights
from parity.backends.weights import layer_maps, load_weight_file
from parity.core.atomic import atomic_path, check_output_path
from parity.core.data import make_batch
from parity.core.env import import_tensorflow, import_torch
from parity.core.errors import UsageError
from parity.core.spec import PairSpec, resolve
from parity.core.tensors import nhwc_to_nchw, tensor_diff
from parity.stages.onnx import output_tap, port_output
from weight_converters.keras import keras_to_torch, torch_to_keras

FORMATS = (".safetensors", ".pt")
#: batch of the forward self-check
CONVERT_CHECK_BATCH = 2


def _output_format(output: str) -> str:
    fmt = next((f for f in FORMATS if output.endswith(f)), None)
    if fmt is None:
        raise UsageError(f"--output {output}: expected a file name ending in .safetensors or .pt. Received: "
                         f"{os.path.splitext(output)[1] or 'no extension'!r}. Name it port.safetensors or port.pt.")
    check_output_path(output, "--output")
    return fmt


def _reference_model(spec: PairSpec, cfg: dict):
    """The reference model in float64 (Keras global dtype state restored afterwards)."""
    keras = import_tensorflow()
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(0)
        return resolve(spec.reference)(**cfg)
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)
        keras.config.set_dtype_policy(old_policy)


def _list(title: str, items, limit: int = 20) -> list[str]:
    items = list(items)
    if not items:
        return []
    out = [f"{title} ({len(items)}):"] + [f"  - {x}" for x in items[:limit]]
    if len(items) > limit:
        out.append(f"  ... and {len(items) - limit} more")
    return out


def _write(fmt: str, output: str, state: dict[str, np.ndarray], meta: dict[str, str]) -> dict[str, np.ndarray]:
    """Write atomically (:mod:`parity.core.atomic`: a temporary file next to ``output``, fsync, rename; mode
    0644 under the usual umask; a symlink at ``output`` is replaced, never written through), then read the
    written file back; returns what it holds (as numpy)."""
    with atomic_path(output, "--output") as tmp:
        if fmt == ".safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp, metadata=meta)
        else:
            torch = import_torch()
            torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, tmp)
    if fmt == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(output)
    torch = import_torch()
    back = torch.load(output, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in back.items()}


def convert(spec: PairSpec, weights_path: str, output: str, *, config: dict | None = None,
            progress: Callable[[str], None] | None = None) -> tuple[list[str], bool]:
    """See the module docstring. Returns (report lines, ok)."""
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    fmt = _output_format(output)
    cfg = spec.config(**(config or {}))
    lines = [f"convert {spec.name}: {weights_path} -> {output}"]
    failures: list[str] = []

    say("reference: build the model for its weight layout")
    model = _reference_model(spec, cfg)
    expected = expected_weights(model)
    say(f"read {weights_path}")
    weights, wreport = load_weight_file(spec, weights_path, expected)
    lines.append(f"weights file: {wreport.summary()}")

    torch = import_torch()
    say("port: build, convert (strict)")
    torch.manual_seed(0)
    module = resolve(spec.port)(**cfg)
    port_state = module.state_dict()
    port_dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in port_state.items()}
    taps = spec.taps(cfg)
    maps = layer_maps(taps)
    state, report = keras_to_torch(weights, maps, expected={k: tuple(v.shape) for k, v in port_state.items()},
                                   strict=False)
    lines.append(f"conversion: {report.summary()}")
    lines += _list("conventions applied", report.conventions)
    lines += _list("assumptions", list(wreport.assumptions) + list(report.assumptions))
    lines += _list("missing", report.missing)
    lines += _list("unexpected", report.unexpected)
    lines += _list("shape mismatches", [f"{k}: port {tuple(e)}, converted {tuple(r)}"
                                        for k, e, r in report.shape_mismatches])
    lines += _list("non-finite", report.nonfinite)
    if not report.ok:
        failures.append(f"conversion: {'; '.join(report.problems()[:3])}")

    if report.ok:
        # -- round trip torch -> Keras: bit-exact ---------------------------------------------------------
        back, rreport = torch_to_keras(state, maps, expected=expected, strict=False)
        pairs = [(layer, var) for m in maps if m.ref in weights for layer, var in
                 ((m.ref, v) for v in weights[m.ref])]
        exact = [(layer, var) for layer, var in pairs
                 if var in back.get(layer, {}) and back[layer][var].dtype == np.asarray(weights[layer][var]).dtype
                 and np.array_equal(back[layer][var], weights[layer][var])]
        lines.append(f"round trip torch->keras: {len(exact)}/{len(pairs)} arrays bit-exact")
        if len(exact) != len(pairs) or not rreport.ok:
            bad = [f"{layer}/{var}" for layer, var in pairs if (layer, var) not in set(exact)]
            failures.append(f"round trip: {', '.join(bad[:3]) or '; '.join(rreport.problems()[:3])} not bit-exact")

        # -- forward: Keras (file weights) vs port (converted), float64, eval -------------------------------
        say("forward: Keras vs port, float64, eval")
        input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        x, _ = make_batch(0, 0, CONVERT_CHECK_BATCH, input_shape, spec.target(cfg), spec.input_range, "float64")
        set_keras_weights(model, weights)
        ref_out = np.asarray(model(x, training=False))
        module = module.double().eval()
        module.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(port_state[k].dtype if not
                                                                     port_state[k].is_floating_point()
                                                                     else torch.float64)
                                for k, v in state.items()}, strict=True)
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(nhwc_to_nchw(x)))).numpy()
        tap = output_tap(taps)
        port_out = port_output(tap, out) if tap is not None else out
        tol = spec.tolerance.for_stage("float64", "forward_eval")
        d = tensor_diff(tap.path if tap is not None else "output", ref_out, port_out, tol)
        bad = {side: int(np.size(a) - np.count_nonzero(np.isfinite(a)))
               for side, a in (("reference", ref_out), ("port", port_out))}
        if any(bad.values()):
            # NaN on both sides is not "equal": the weights make the model compute nothing usable
            sides = ", ".join(f"{side} {n}/{np.size(ref_out)}" for side, n in bad.items() if n)
            lines.append(f"forward (float64, eval, batch {CONVERT_CHECK_BATCH}): non-finite output on "
                         f"{d.path} ({sides} values NaN or inf)")
            failures.append(f"forward: non-finite output on {d.path} ({sides} values NaN or inf); check the "
                            "weights file for NaN, inf or negative BatchNorm variances")
        else:
            lines.append(f"forward (float64, eval, batch {CONVERT_CHECK_BATCH}): max|Δ| {d.max_abs:.3g} on "
                         f"{d.path}, allowed {d.allowed:.3g} ({tol.rtol:g} x scale {d.scale:.3g})")
            if not d.passed:
                failures.append(f"forward: {d.describe()}")

    if failures:
        lines.append(f"FAILED convert {spec.name}: {failures[0]} (nothing written)")
        return lines, False

    # -- write in the port's own dtypes, read back ----------------------------------------------------------
    say(f"write {output}")
    out_state = {}
    rounded = []
    for k, v in state.items():
        a = np.asarray(v)
        want = np.dtype(port_dtypes.get(k, a.dtype.name))
        if a.dtype != want:
            if a.dtype.kind == "f" and want.kind == "f" and a.dtype.itemsize > want.itemsize:
                rounded.append(k)
            a = a.astype(want)
        out_state[k] = np.ascontiguousarray(a)
    meta = {"format": "pt", "pair": spec.name, "source": os.path.basename(weights_path),
            "converted_by": "parity convert"}
    back_file = _write(fmt, output, out_state, meta)
    same = sorted(k for k in out_state if k in back_file and back_file[k].dtype == out_state[k].dtype
                  and np.array_equal(back_file[k], out_state[k]))
    dtypes = sorted({a.dtype.name for a in out_state.values()})
    size = os.path.getsize(output)
    lines.append(f"wrote {output}: {len(out_state)} tensors ({', '.join(dtypes)}; the port's dtypes), "
                 f"{size / 1e6:.2f} MB; read back {len(same)}/{len(out_state)} identical")
    if rounded:
        lines.append(f"note: {len(rounded)} float64 arrays rounded to the port's float32 (e.g. {rounded[0]})")
    if len(same) != len(out_state) or set(back_file) != set(out_state):
        lines.append(f"FAILED convert {spec.name}: the written file does not read back identical")
        return lines, False
    lines.append(f"PASSED convert {spec.name}: {len(report.mapped)} arrays mapped, round trip bit-exact, "
                 f"forward max|Δ| {d.max_abs:.3g} -> {output} ({time.perf_counter() - t0:.1f} s)")
    return lines, True
