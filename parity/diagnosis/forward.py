"""Rules for a first divergence in the eval forward (and the isolated stage): a double softmax, something random
in eval mode, the flatten order, the wiring of the forward (an operation added, missing or reordered before a
layer), and the weights the port really holds after loading (reshaped instead of transposed kernels, layers
re-initialised after the load)."""
from __future__ import annotations

import numpy as np

from parity.core.results import Finding, TensorDiff
from parity.core.spec import Tap
from parity.core.tensors import hwc_flat_to_chw_flat, nhwc_to_nchw
from parity.diagnosis.common import (PROBE_ACTIVATIONS, PROBE_RTOL, Run, base, dropout_modules, earlier_acts,
                                     finding, looks_fresh, module_input, module_inputs, port_acts, ref_activation)
from parity.diagnosis.registry import ANY_STAGE, stage_rule
from weight_converters.keras import LayerMap, keras_to_torch

#: tap kinds whose weights the port loads (the weights probe applies to them)
WEIGHTED = ("conv2d", "dense", "separable_conv2d", "depthwise_conv2d", "batchnorm")


# ---- softmax ---------------------------------------------------------------------------------------------
@stage_rule(ANY_STAGE, order=10, when_explained=True)
def double_softmax(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """The port's outputs are probabilities while the loss is categorical cross-entropy on logits."""
    final = run.po.get("final")
    if final is None or run.po.get("loss") != "categorical_crossentropy":
        return []
    spec = run.po.get("spec")
    if spec is not None and getattr(spec, "port_loss", None) is None and \
            getattr(getattr(spec, "loss", None), "port_probabilities", False):
        return []  # the port returns probabilities and is trained with Keras' loss on them: no softmax twice
    rows = np.asarray(final)
    if rows.ndim == 2 and rows.size and (rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-6):
        return [finding(
            "double_softmax", run.po.get("output_path", diff.path),
            "softmax applied before CrossEntropyLoss (double softmax): the port's outputs are probabilities "
            "(rows sum to 1) and F.cross_entropy applies softmax again",
            "return logits from the model; CrossEntropyLoss applies log-softmax itself", stage.name,
            evidence=f"port output row sums {rows.sum(axis=1)[:3].round(6).tolist()}")]
    return []


# ---- forward (eval) --------------------------------------------------------------------------------------
def _earlier_all_pass(run: Run, path: str) -> bool:
    fe = run.result.stage("forward_eval")
    for t in fe.tensors if fe is not None else []:
        if t.path == path:
            break
        if not t.passed:
            return False
    return True


@stage_rule("forward_eval", "isolated")
def forward_eval_rules(run: Run, stage, diff: TensorDiff) -> list[Finding]:
    """A module that is wrong on its own (the isolated stage fails there too) has wrong weights or a wrong
    op; a module that is right on its own but diverges in the forward gets a different input."""
    path = base(diff.path)
    kind = run.kind(path)
    iso = run.result.stage("isolated")
    iso_t = next((t for t in iso.tensors if t.path == path), None) if iso is not None else None
    weighted = kind in WEIGHTED
    if run.arrays:
        f = probe_eval_randomness(run, path)
        if f is not None:
            return [f]
    if kind == "flatten":
        f = flatten_rule(run, path, kind, stage.name, diff)
        if f is not None:
            return [f]
    if iso_t is not None and not iso_t.passed:
        if run.arrays and weighted:
            f = weights_rule(run, path, kind, stage.name)
            if f is not None:
                return [f]
        if kind == "dense" and not run.arrays:
            return [finding("dense_weights", path, f"{path} is wrong in isolation too (fed the reference's own "
                            "input): its weights or layout differ from the converted reference kernel",
                            "convert a Dense kernel with a transpose (kernel.T), never a reshape", stage.name,
                            evidence=iso_t.describe())]
        return []
    if _earlier_all_pass(run, path) and iso_t is not None:  # right in isolation, wrong in the forward
        if kind == "dense" and _after_flatten(run, path):
            f = flatten_rule(run, path, kind, stage.name, diff)
            if f is not None:
                return [f]
        return [wiring_rule(run, path, stage.name, diff)]
    if run.arrays and weighted:
        f = weights_rule(run, path, kind, stage.name)
        if f is not None:
            return [f]
    return []


def _after_flatten(run: Run, path: str) -> bool:
    paths = run.tap_paths()
    if path not in paths:
        return False
    i = paths.index(path)
    prev = [p for p in paths[:i] if run.kind(p) not in ("dropout",)]
    return bool(prev) and run.kind(prev[-1]) == "flatten"


def probe_eval_randomness(run: Run, path: str) -> Finding | None:
    """Two eval forwards on the same input must agree; where they do not, something random is on in eval."""
    a = port_acts(run)
    b = port_acts(run)
    for t in run.taps:
        if t.path in a and t.path in b and not np.array_equal(a[t.path], b[t.path], equal_nan=True):
            diffmax = float(np.max(np.abs(a[t.path] - b[t.path])))
            drops = dropout_modules(run)
            where = f" (port has {', '.join(drops)})" if drops else ""
            return finding(
                "train_eval_mode", path,
                f"the port is random in eval mode: two eval forwards on the same input differ from {t.path} on "
                f"(dropout left on in eval{where}; F.dropout(x, p) defaults to training=True)",
                "use nn.Dropout, or F.dropout(x, p, training=self.training)", "forward_eval",
                evidence=f"max |run1 - run2| = {diffmax:.3g} at {t.path}")
    return None


# ---- flatten order ---------------------------------------------------------------------------------------
def flatten_rule(run: Run, path, kind, stage, diff) -> Finding | None:
    """Keras flattens H, W, C; nn.Flatten C, H, W. Confirmed by comparing the port's values with the reference's
    as they are and reordered, when the run is at hand."""
    tap = run.tap_by_path.get(path)
    ev, confirmed = "", None
    if run.arrays and tap is not None:
        confirmed, ev = _flatten_output_probe(run, tap, path, kind)
        if kind == "dense":
            confirmed, ev = _dense_input_probe(run, tap, path, confirmed, ev)
        if confirmed is None:
            return None
    msg = confirmed or ("flatten order: the values entering this layer match, their order does not (Keras "
                        "flattens H, W, C; nn.Flatten C, H, W)")
    fix = ("flatten as the pair assumes: nn.Flatten (CHW) with the Dense rows reordered by the converter, or "
           "x.permute(0, 2, 3, 1).flatten(1) (HWC) with a plain transpose")
    return finding("flatten_order", path, msg, fix, stage, evidence=ev or diff.describe())


def _flatten_output_probe(run: Run, tap: Tap, path, kind):
    ref_act = run.ref.eval_acts.get(path)
    port_act = port_acts(run).get(path) if kind == "flatten" else None
    if ref_act is None or port_act is None:
        return None, ""
    if tap.flatten_chw is not None and np.allclose(port_act, ref_act, rtol=PROBE_RTOL, atol=0):
        return (f"the port flattens in Keras' HWC order while the weights and taps assume torch's CHW (C, H, W)="
                f"{tap.flatten_chw}", "the port's flatten output equals the reference's without reordering")
    if tap.flatten_chw is None and ref_act.ndim == 2:
        chw = _guess_chw(run, path)
        if chw and np.allclose(port_act, hwc_flat_to_chw_flat(ref_act, chw), rtol=PROBE_RTOL, atol=0):
            return ("the port flattens in torch's CHW order while the reference flattens HWC",
                    f"the port's flatten output equals the reference's reordered HWC -> CHW, (C, H, W)={chw}")
    return None, ""


def _dense_input_probe(run: Run, tap: Tap, path, confirmed, ev):
    port_in = module_input(run, tap)
    ref_in = (run.ref.eval_inputs or {}).get(path)
    if not ref_in:  # the run no longer holds layer inputs: the flatten before it is the Dense's input
        prev = [a for _, a in earlier_acts(run, path)[:1]]
        ref_in = [np.asarray(run.ref.eval_acts[_prev_path(run, path)])] if prev else None
    if port_in is not None and ref_in:
        r = np.asarray(ref_in[0])
        r = r.reshape(r.shape[0], -1)  # Keras flattens NHWC: H, W, C order
        if tap.flatten_chw is not None and r.shape == port_in.shape and np.allclose(
                port_in, r, rtol=PROBE_RTOL, atol=0):
            return (("the port feeds this Dense an HWC-ordered flatten while its weights were converted "
                     f"for torch's CHW order (C, H, W)={tap.flatten_chw}"),
                    f"the port's input to {path} equals the reference's (HWC) input without reordering")
    return confirmed, ev


def _prev_path(run: Run, path):
    paths = run.tap_paths()
    i = paths.index(path)
    return paths[i - 1] if i > 0 else None


def _guess_chw(run: Run, path):
    paths = run.tap_paths()
    i = paths.index(path)
    for p in reversed(paths[:i]):
        a = run.ref.eval_acts.get(p)
        if a is not None and a.ndim == 4:
            return (a.shape[3], a.shape[1], a.shape[2])
    return None


# ---- wiring ------------------------------------------------------------------------------------------------
def wiring_rule(run: Run, path, stage, diff) -> Finding:
    """The module is right in isolation, its input is not: something between the previous layer and this
    one differs in the port's forward (order, an extra op, a wrong source)."""
    paths = run.tap_paths()
    prev = paths[paths.index(path) - 1] if path in paths and paths.index(path) > 0 else None
    if run.arrays:
        f = probe_input(run, path, prev, stage)
        if f is not None:
            return f
    return finding(
        "forward_wiring", path,
        f"{path} computes correctly in isolation but receives a different input in the port's forward"
        + (f" than {prev}'s output" if prev else "") + ": an operation is added, missing or reordered before it",
        "compare the port's forward() with the reference's layer order around this layer", stage,
        evidence=diff.describe())


def _close_arrays(a, b) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=PROBE_RTOL, atol=1e-12 * max(1.0, float(np.abs(b).max())))


def probe_input(run: Run, path, prev, stage) -> Finding | None:
    """What does the port's module really receive? Compared with the reference's input to that layer (or, when
    the run no longer holds it, with the outputs of the layers before it), raw and through an activation."""
    port_ins = module_inputs(run, run.tap_by_path[path])
    if not port_ins:
        return None
    ref_ins = (run.ref.eval_inputs or {}).get(path)
    earlier = earlier_acts(run, path)
    for k, pin in enumerate(port_ins):
        which = f" input {k + 1} of" if len(port_ins) > 1 else ""
        if ref_ins is not None and k < len(ref_ins):
            sources = [("reference input", nhwc_to_nchw(np.asarray(ref_ins[k])))]
        else:  # the input is one of the earlier layers' outputs
            sources = [(p, a) for p, a in earlier if a.shape == pin.shape]
        if any(_close_arrays(pin, a) for _, a in sources):
            continue
        f = _activation_before(run, path, pin, sources, which, stage)
        if f is not None:
            return f
        if ref_ins is not None:
            for other, a in earlier:
                if _close_arrays(pin, a):
                    return finding(
                        "forward_wiring", path, f"{path} is fed {other}'s output in the port (the reference feeds "
                        f"it {prev or 'another layer'})", "fix the port's forward() wiring", stage,
                        evidence=f"port input to {path} equals the reference's {other} output")
    return None


def _activation_before(run: Run, path, pin, sources, which, stage) -> Finding | None:
    """The port's input equals act(x) for a source x: the activation moved before the layer, or an extra one."""
    for act in PROBE_ACTIVATIONS:
        for src, a in sources:
            if not _close_arrays(pin, apply_np(act, a)):
                continue
            x = "reference input" if src == "reference input" else f"{src}'s output"
            later = _next_activation(run, path, act)
            if later is not None:
                return finding(
                    "layer_order", path,
                    f"layer order: the port applies {act} before {path} (the reference applies it after, at "
                    f"{later}): {path} receives {act}(x)",
                    f"call {path} first and {act} after it, as in the reference", stage,
                    evidence=f"the port's{which} input to {path} equals {act}({x}) (max |Δ| "
                             f"{float(np.max(np.abs(pin - a))):.3g} to {x} itself)")
            return finding(
                "forward_wiring", path,
                f"extra {act} in the port's forward before {path}:{which} {path} receives {act}(x) where the "
                "reference has no activation", f"remove the {act} before {path}", stage,
                evidence=f"the port's{which} input to {path} equals {act}({x})")
    return None


def apply_np(act, x):
    """``act`` (one of :data:`parity.diagnosis.common.PROBE_ACTIVATIONS`) in numpy."""
    if act == "relu":
        return np.maximum(x, 0)
    if act == "relu6":
        return np.clip(x, 0, 6)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if act == "tanh":
        return np.tanh(x)
    return x


def _next_activation(run: Run, path, act) -> str | None:
    paths = run.tap_paths()
    i = paths.index(path)
    for p in paths[i + 1:i + 4]:
        if run.kind(p) == "activation":
            info = run.ref.structure.get(run.ref_layer(p), {}) if run.ref is not None else {}
            if ref_activation(info) == act:
                return p
    return None


# ---- weights transfer -------------------------------------------------------------------------------------
def converted(run: Run, tap: Tap) -> dict[str, np.ndarray]:
    """The reference weights of ``tap``'s layer as the converter maps them onto the port."""
    st, _ = keras_to_torch({tap.ref: run.ref.weights.get(tap.ref, {})},
                           [LayerMap(tap.ref, tap.port, tap.kind, tap.flatten_chw)], strict=False)
    return st


def weights_rule(run: Run, path, kind, stage) -> Finding | None:
    """Compare the port's loaded weights with the converted reference weights."""
    tap = run.tap_by_path.get(path)
    if tap is None or tap.port not in run.ts.modules:
        return None
    want = converted(run, tap)
    state = {k: v.detach().cpu().numpy() for k, v in run.ts.module.state_dict().items()}
    for key, w in want.items():
        got = state.get(key)
        if got is None or got.shape != w.shape or np.issubdtype(w.dtype, np.integer):
            continue
        if np.allclose(got, w, rtol=PROBE_RTOL, atol=0):
            continue
        kernel = run.ref.weights.get(tap.ref, {}).get("kernel")
        if kernel is not None and key.endswith("weight"):
            f = _reshaped_kernel(path, kind, got, w, np.asarray(kernel), stage)
            if f is not None:
                return f
        fresh = looks_fresh(got)
        return finding(
            "init_after_load", path,
            f"{path}: the port's {key.rsplit('.', 1)[-1]} differs from the converted reference weight after "
            "load_state_dict: something re-initialises or overwrites it after loading"
            + (f" ({fresh})" if fresh else ""),
            "initialise in __init__ only; do not call reset_parameters / nn.init after loading weights", stage,
            evidence=f"{key}: max |port - converted| {float(np.max(np.abs(got - w))):.3g}; std port "
                     f"{float(np.std(got)):.3g}, converted {float(np.std(w)):.3g}")
    return None


def _reshaped_kernel(path, kind, got, w, kernel, stage) -> Finding | None:
    """A Dense or conv kernel loaded with a reshape where the layout needs a transpose / permutation."""
    if kind == "dense":
        # the Keras kernel as read, or with its rows already in torch's flatten order
        k = next((c for c in (kernel, w.T) if got.size == c.size and np.allclose(
            got.reshape(c.shape), c, rtol=PROBE_RTOL, atol=0)), None)
        if k is not None:
            return finding(
                "dense_layout", path,
                f"{path} weight looks reshaped, not transposed: the port holds kernel.reshape{tuple(got.shape)} "
                f"of the Keras (in, out) = {tuple(k.shape)} kernel",
                "convert with kernel.T (transpose), not reshape", stage,
                evidence=f"port weight reshaped back to {tuple(k.shape)} equals the Keras kernel exactly; "
                         f"max |Δ| to the transposed kernel {float(np.max(np.abs(got - w))):.3g}")
    if kind == "conv2d" and got.size == kernel.size and np.allclose(got.reshape(kernel.shape), kernel,
                                                                    rtol=PROBE_RTOL, atol=0):
        return finding(
            "conv_layout", path, f"{path} kernel looks reshaped, not permuted: HWIO {tuple(kernel.shape)} "
            f"reshaped to {tuple(got.shape)}", "convert with kernel.transpose(3, 2, 0, 1)", stage,
            evidence="port weight reshaped back equals the Keras kernel")
    return None
