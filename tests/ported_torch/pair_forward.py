"""Test helper: build both sides of a registered pair in float64, copy the reference's weights into the port
with ``weight_converters.keras.keras_to_torch`` (LayerMaps from the pair's taps), run one eval forward and
return the max |ref - port| of every tap. Deliberately independent of parity.harness: it checks the taps,
builders and converter on their own."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np

from parity.core.spec import PairSpec, resolve
from weight_converters.keras import LayerMap, keras_to_torch


def keras_weights(model) -> dict[str, dict[str, np.ndarray]]:
    return {lay.name: {v.name: np.array(v.numpy()) for v in lay.weights} for lay in model.layers if lay.weights}


def randomize_bn(model, rng) -> None:
    """Eval-mode BN with fresh statistics is nearly the identity: give it gammas/betas/statistics to apply."""
    import keras

    for lay in model.layers:
        if isinstance(lay, keras.layers.BatchNormalization):
            c = lay.gamma.shape[0]
            lay.gamma.assign(rng.uniform(0.5, 1.5, c))
            lay.beta.assign(rng.normal(0.0, 0.1, c))
            lay.moving_mean.assign(rng.normal(0.0, 0.1, c))
            lay.moving_variance.assign(rng.uniform(0.5, 1.5, c))


def build_float64(spec: PairSpec, config: dict, **port_kwargs):
    from parity.backends.keras_side import keras_dtype

    with keras_dtype("float64"):
        ref = resolve(spec.reference)(**config)
    assert {w.dtype for w in ref.weights} == {"float64"}
    port = resolve(spec.port)(**config, **port_kwargs).double().eval()
    return ref, port


def copy_weights(spec: PairSpec, config: dict, ref, port):
    import torch

    taps = spec.taps(config)
    maps = [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in taps if t.weighted]
    expected = {k: tuple(v.shape) for k, v in port.state_dict().items()}
    state, report = keras_to_torch(keras_weights(ref), maps, expected=expected)
    port.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return report


def tap_diffs(spec: PairSpec, config: dict, ref, port, x_nhwc: np.ndarray) -> dict[str, float]:
    """max |ref - port| per tap path (port tensors NCHW -> NHWC, the reference's HWC flatten -> CHW)."""
    import keras
    import torch

    taps = spec.taps(config)
    model = keras.Model(ref.inputs[0], [ref.get_layer(t.ref).output for t in taps])
    ref_out = [np.asarray(a) for a in model(x_nhwc, training=False)]
    acts: dict[str, torch.Tensor] = {}
    hooks = [port.get_submodule(t.port).register_forward_hook(
        lambda m, i, o, p=t.path: acts.setdefault(p, o)) for t in taps]
    # One intra-op thread: on the shared 2-core CI machine (load ~3.5) the 75x75 float64 Xception forward
    # measured 4-20 s with torch's 2 threads (threads waiting on a descheduled peer), 0.4 s with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            port(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    finally:
        torch.set_num_threads(threads)
        for h in hooks:
            h.remove()
    diffs = {}
    for t, r in zip(taps, ref_out):
        p = acts[t.path]
        if t.port_transform == "softmax":
            p = torch.softmax(p, dim=1)
        p = p.numpy()
        if p.ndim == 4:
            p = p.transpose(0, 2, 3, 1)
        if t.kind == "flatten" and t.flatten_chw is not None:
            c, h, w = t.flatten_chw
            r = r.reshape(len(r), h, w, c).transpose(0, 3, 1, 2).reshape(len(r), -1)
        diffs[t.path] = float(np.abs(p - r).max())
    return diffs
