"""The GOTURN port: the published parameter count, Caffe's ceil pooling sizes, LRN against Caffe's formula,
and, after an exact weight copy, the float64 forward and backward equal to the Keras reference at every tap.
The planted mistakes (LRN alpha multiplied by n, floor pooling) are built through the public constructor and
caught at the layer that has them."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)


import numpy as np
import pytest
import torch

from parity.core.tensors import hwc_flat_to_chw_flat, nhwc_to_nchw
from parity.pairs.goturn import (CAFFE_LRN_ALPHA, CAFFE_LRN_BETA, CAFFE_LRN_K, CAFFE_LRN_SIZE,
                                 FAST_INPUT_SHAPE, GOTURN_INPUT_RANGE, GOTURN_PARAMS, SPEC, stream_sizes)
from ported_torch.goturn import Goturn, goturn
from weight_converters.keras import LayerMap, keras_to_torch, var_to_torch

FAST = SPEC.fast_config
#: float64 after an exact weight copy, fast config, batch 2, inputs in +-128: measured max relative
#: difference (max|d| / max|ref| per tap) 4.9e-15 forward, 2.4e-15 activation gradients, 2.4e-15 parameter
#: gradients. 1e-12 leaves room for summation order only.
FLOAT64_RTOL = 1e-12
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def caffe_lrn_nchw(x, n=CAFFE_LRN_SIZE, alpha=CAFFE_LRN_ALPHA, beta=CAFFE_LRN_BETA, k=CAFFE_LRN_K):
    """Caffe LRN ACROSS_CHANNELS (lrn_layer.cpp) in numpy, NCHW."""
    c = x.shape[1]
    pre = (n - 1) // 2
    sq = np.pad(x ** 2, [(0, 0), (pre, n - 1 - pre), (0, 0), (0, 0)])
    return x * (k + alpha / n * sum(sq[:, i:i + c] for i in range(n))) ** -beta


def output_shapes(model, input_shape, names):
    shapes = {}

    def record(name, output):
        shapes[name] = tuple(output.shape)  # returns None: a hook's return value would replace the output

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: record(n, o)) for n in names]
    try:
        with torch.no_grad():
            model(torch.zeros((1, input_shape[2]) + tuple(input_shape[:2])))
    except RuntimeError:
        pass  # a port whose geometry breaks fc6 still reports the shapes up to there
    finally:
        for h in hooks:
            h.remove()
    return shapes


def test_param_count_equals_the_reference():
    with torch.device("meta"):  # sizes only: no 455 MB of weights
        model = goturn()
    assert sum(p.numel() for p in model.parameters()) == GOTURN_PARAMS == 113_748_740
    assert sum(p.numel() for p in model.target.parameters()) == 2_334_080
    assert model.fc6.in_features == 2 * 256 * 6 * 6
    assert model.target.conv2.groups == model.target.conv4.groups == model.target.conv5.groups == 2
    fast = goturn(**FAST)
    assert fast.target.conv1.weight is not fast.image.conv1.weight  # two streams, separate weights
    assert not any(getattr(m, "inplace", False) for m in fast.modules())


def test_pools_round_up_like_caffe():
    names = [f"target.pool{i}" for i in (1, 2, 5)]
    sizes = stream_sizes(FAST_INPUT_SHAPE[:2])
    got = output_shapes(goturn(**FAST), FAST_INPUT_SHAPE, names)
    assert [got[n][2:] for n in names] == [sizes["pool1"], sizes["pool2"], sizes["pool5"]] == [(9, 9), (4, 4), (2, 2)]
    floor = output_shapes(goturn(**FAST, ceil_mode=False), FAST_INPUT_SHAPE, names)
    assert [floor[n][2:] for n in names] == [(8, 8), (3, 3), (1, 1)]
    # at GOTURN's own 227x227 the two rules agree: the mistake is invisible there
    with torch.device("meta"):  # shapes only, no compute
        for ceil_mode in (True, False):
            stream = goturn(ceil_mode=ceil_mode).target
            x = torch.zeros((1, 3, 227, 227))
            pools = {}
            for name in stream.order:
                x = getattr(stream, name)(x)
                if name.startswith("pool"):
                    pools[name] = tuple(x.shape[2:])
            assert pools == {"pool1": (27, 27), "pool2": (13, 13), "pool5": (6, 6)}, ceil_mode


def test_lrn_is_caffes_formula_and_alpha_times_n_is_not():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 60, (2, 96, 5, 5))
    port = goturn(**FAST).double().target.norm1
    got = port(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, caffe_lrn_nchw(x), rtol=1e-14, atol=0)
    buggy = goturn(**FAST, lrn_alpha=CAFFE_LRN_ALPHA * CAFFE_LRN_SIZE).double().target.norm1
    assert np.abs(buggy(torch.from_numpy(x)).numpy() - got).max() > 1.0


def keras_float64(keras):
    from parity.backends.keras_side import keras_dtype

    return keras_dtype("float64")


@pytest.fixture(scope="module")
def reference():
    """The Keras reference at the fast config in float64, its weights, and a model over every tap."""
    keras = pytest.importorskip("keras")
    from reference_keras.goturn import goturn as build_reference

    keras.utils.set_random_seed(0)
    with keras_float64(keras):
        ref = build_reference(**FAST)
    taps = SPEC.taps(FAST)
    weights = {lay.name: {v.name: np.array(v.numpy()) for v in lay.weights} for lay in ref.layers if lay.weights}
    tap_model = keras.Model(ref.inputs[0], [ref.get_layer(t.ref).output for t in taps])
    return ref, weights, taps, tap_model


def port_with_reference_weights(reference, **port_kwargs):
    """The port (public constructor + the user's keyword arguments) in float64 with the reference's weights."""
    _, weights, taps, _ = reference
    port = goturn(**FAST, **port_kwargs).double()
    maps = [LayerMap(t.ref, t.port, t.kind, t.flatten_chw) for t in taps if t.weighted]
    state, report = keras_to_torch(weights, maps, expected={k: tuple(v.shape) for k, v in port.state_dict().items()})
    port.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return port, report


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(*GOTURN_INPUT_RANGE, (SPEC.default_batch,) + FAST_INPUT_SHAPE)
    y = rng.uniform(-1.0, 1.0, (SPEC.default_batch, 4))
    return x, y


def to_port_layout(tap, a):
    a = np.asarray(a)
    if tap.kind == "flatten" and tap.flatten_chw is not None:
        return hwc_flat_to_chw_flat(a, tap.flatten_chw)
    return nhwc_to_nchw(a)


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))


def run_both(reference, port, x, y):
    """Train-mode forward + ASUM loss + backward on both sides; per-tap activations and their gradients."""
    import tensorflow as tf

    ref, _, taps, tap_model = reference
    with tf.GradientTape() as tape:
        outs = tap_model(tf.constant(x), training=True)
        loss = tf.reduce_sum(tf.abs(outs[-1] - y))  # Caffe ASUM: sum over batch and outputs
    grads = tape.gradient(loss, list(outs) + ref.trainable_weights)
    ref_acts = {t.path: to_port_layout(t, a) for t, a in zip(taps, outs)}
    ref_grads = {t.path: to_port_layout(t, g) for t, g in zip(taps, grads)}
    ref_params = {v.path: np.asarray(g) for v, g in zip(ref.trainable_weights, grads[len(taps):])}

    acts = {}

    def keep(module, inputs, output, path):
        output.retain_grad()
        acts[path] = output

    hooks = [port.get_submodule(t.port).register_forward_hook(lambda m, i, o, p=t.path: keep(m, i, o, p))
             for t in taps]
    port.train()
    try:
        out = port(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        port_loss = (out - torch.from_numpy(y)).abs().sum()
        port_loss.backward()
    finally:
        for h in hooks:
            h.remove()
    return (float(loss), ref_acts, ref_grads, ref_params), (port_loss.item(), acts)


def test_float64_forward_and_backward_equal_the_reference_at_every_tap(reference):
    port, report = port_with_reference_weights(reference)
    assert report.ok and any("HWC order -> torch CHW" in c for c in report.conventions)
    taps = reference[2]
    x, y = batch()
    (loss, ref_acts, ref_grads, ref_params), (port_loss, acts) = run_both(reference, port, x, y)
    assert abs(loss - port_loss) <= FLOAT64_RTOL * abs(loss)
    assert len(taps) == 2 * 15 + 12  # per stream: 5 convs, 5 ReLUs, 3 pools, 2 LRNs
    for t in taps:
        assert ref_acts[t.path].shape == tuple(acts[t.path].shape), t.path
        assert rel(ref_acts[t.path], acts[t.path].detach().numpy()) <= FLOAT64_RTOL, t.path
        assert rel(ref_grads[t.path], acts[t.path].grad.numpy()) <= FLOAT64_RTOL, t.path
    params = dict(port.named_parameters())
    for t in taps:
        if t.weighted:
            for var, suffix in (("kernel", "weight"), ("bias", "bias")):
                want = var_to_torch(t.kind, var, ref_params[f"{t.ref}/{var}"], flatten_chw=t.flatten_chw)
                assert rel(want, params[f"{t.port}.{suffix}"].grad.numpy()) <= FLOAT64_RTOL, (t.path, var)


def test_lrn_alpha_times_n_diverges_first_at_norm1(reference):
    _, _, taps, tap_model = reference
    port, _ = port_with_reference_weights(reference, lrn_alpha=CAFFE_LRN_ALPHA * CAFFE_LRN_SIZE)
    x, _ = batch(1)
    ref_acts = {t.path: to_port_layout(t, a) for t, a in zip(taps, tap_model(x, training=False))}
    acts = {}
    hooks = [port.get_submodule(t.port).register_forward_hook(lambda m, i, o, p=t.path: acts.update({p: o.numpy()}))
             for t in taps]
    with torch.no_grad():
        port.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    for h in hooks:
        h.remove()
    bad = [t.path for t in taps if rel(ref_acts[t.path], acts[t.path]) > FLOAT64_RTOL]
    assert bad[0] == "target/norm1" and rel(ref_acts["target/norm1"], acts["target/norm1"]) > 1e-3


def test_floor_pooling_loads_the_weights_and_diverges_at_pool1(reference):
    """fc6 is sized by Caffe's geometry, so the weights still load; the shapes part at target/pool1 (9 vs 8),
    and the port's forward then fails at fc6."""
    port, report = port_with_reference_weights(reference, ceil_mode=False)
    assert report.ok
    shapes = output_shapes(port.float(), FAST_INPUT_SHAPE, ["target.pool1", "fc6"])
    assert shapes == {"target.pool1": (1, 96, 8, 8)}
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        port(torch.zeros((1, 6) + FAST_INPUT_SHAPE[:2]))


def test_public_constructor_and_builder_agree():
    a, b = Goturn((79, 79), fc_units=512), goturn(input_shape=(79, 79, 6), fc_units=512)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(ValueError, match=r"expected input_shape \(H, W, 6\)"):
        goturn(input_shape=(6, 227, 227))
