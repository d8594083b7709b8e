"""Each family converter against the frameworks themselves: one Keras layer with random weights, its weights
through ``weight_converters`` into the torch module a port would use, both run on the same input (float64).
The torch module is built the way the family's conventions say (eps, batch_first, padding), so a wrong layout or
gate order shows as a difference here before any model does."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import numpy as np
import pytest

from parity.core.families.attention import keras_attention_scale
from parity.core.families.normalization import KERAS_GROUPNORM_EPSILON, KERAS_LAYERNORM_EPSILON
from parity.core.families.upsampling import same_transpose_crop
from weight_converters.keras import LayerMap, keras_to_torch
from tests.keras_dtype import keras_float64

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

RTOL = 1e-12  # float64 after an exact weight copy (measured <= 1e-15 relative)


def _keras_vars(layer):
    from parity.backends.keras_side import _var

    return {_var(layer, w): np.asarray(w.numpy()) for w in layer.weights}


def _run(make_layer, x, module, kind, nlc_to_torch=None, torch_to_nlc=None, call=None):
    """Random non-zero weights in the Keras layer ``make_layer()`` builds in float64, converted into
    ``module``; both outputs as numpy."""
    with keras_float64():
        keras_layer = make_layer()
        inp = keras.Input(x.shape[1:], dtype="float64")
        model = keras.Model(inp, keras_layer(inp) if call is None else call(keras_layer, inp))
        rng = np.random.default_rng(0)
        for w in keras_layer.weights:
            w.assign(rng.normal(0, 0.5, w.shape))
        ref = np.asarray(model(x))
        sd, rep = keras_to_torch({"l": _keras_vars(keras_layer)}, [LayerMap("l", "", kind)],
                                 expected={k: tuple(v.shape) for k, v in module.state_dict().items()})
        assert rep.ok, rep.problems()
        module = module.double()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        module.eval()
        with torch.no_grad():
            xt = torch.from_numpy(nlc_to_torch(x) if nlc_to_torch else x)
            out = module(xt)
            out = out[0] if isinstance(out, tuple) else out
            out = out.numpy()
        return ref, torch_to_nlc(out) if torch_to_nlc else out


X_SEQ = np.random.default_rng(1).normal(size=(3, 7, 5))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent(cell, bidirectional):
    from torch import nn

    def layer():
        rnn = getattr(keras.layers, cell)(4, return_sequences=True)
        return keras.layers.Bidirectional(rnn) if bidirectional else rnn

    mod = {"LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.RNN}[cell](5, 4, batch_first=True,
                                                                   bidirectional=bidirectional)
    kind = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}[cell]
    ref, out = _run(layer, X_SEQ, mod, kind)
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_layernorm_and_groupnorm():
    from torch import nn

    ref, out = _run(lambda: keras.layers.LayerNormalization(), X_SEQ, nn.LayerNorm(5, eps=KERAS_LAYERNORM_EPSILON), "layernorm")
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * np.abs(ref).max())
    x = np.random.default_rng(2).normal(size=(3, 6))  # GroupNorm over (N, C): no layout question
    ref, out = _run(lambda: keras.layers.GroupNormalization(groups=3), x, nn.GroupNorm(3, 6, eps=KERAS_GROUPNORM_EPSILON),
                    "groupnorm")
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_prelu_shared_over_time():
    from torch import nn

    to_ncl, to_nlc = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 1))), (lambda a: a.transpose(0, 2, 1))
    ref, out = _run(lambda: keras.layers.PReLU(shared_axes=[1]), X_SEQ, nn.PReLU(5), "prelu", to_ncl, to_nlc)
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_multihead_attention_packed():
    from torch import nn

    class SelfAttention(nn.MultiheadAttention):
        def forward(self, x):
            return super().forward(x, x, x, need_weights=False)[0]

    x = np.random.default_rng(3).normal(size=(2, 6, 8))
    mha = SelfAttention(8, 2, batch_first=True)
    ref, out = _run(lambda: keras.layers.MultiHeadAttention(2, 4), x, mha, "attention_packed",
                    call=lambda layer, inp: layer(inp, inp))
    # torch scales by the exact 1/sqrt(head_dim), Keras by its float32 rounding (keras_attention_scale); with
    # key_dim 4 the scale 1/2 is exact in float32, so the two agree to rounding here
    assert keras_attention_scale(4) == 0.5
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * np.abs(ref).max())


@pytest.mark.parametrize("k", [3, 4])
def test_conv2d_transpose_same(k):
    from torch import nn

    x = np.random.default_rng(4).normal(size=(2, 5, 5, 3))
    p, op = same_transpose_crop(k, 2)

    class Same(nn.ConvTranspose2d):
        def forward(self, t):
            out = super().forward(t)
            return out[..., p:p + 2 * t.shape[-2], p:p + 2 * t.shape[-1]]

    mod = nn.ConvTranspose2d(3, 4, k, stride=2, padding=p, output_padding=op) if op is not None else \
        Same(3, 4, k, stride=2)
    to_nchw, to_nhwc = (lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))), (lambda a: a.transpose(0, 2, 3, 1))
    ref, out = _run(lambda: keras.layers.Conv2DTranspose(4, k, strides=2, padding="same"), x, mod, "conv2d_transpose",
                    to_nchw, to_nhwc)
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_embedding():
    from torch import nn

    with keras_float64():
        layer = keras.layers.Embedding(11, 4)
        inp = keras.Input((6,), dtype="int32")
        model = keras.Model(inp, layer(inp))
        layer.embeddings.assign(np.random.default_rng(5).normal(size=(11, 4)))
        x = np.random.default_rng(6).integers(0, 11, size=(3, 6))
        ref = np.asarray(model(x))
    sd, rep = keras_to_torch({"e": {"embeddings": np.asarray(layer.embeddings.numpy())}}, [LayerMap("e", "", "embedding")])
    emb = nn.Embedding(11, 4).double()
    emb.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert np.array_equal(emb(torch.from_numpy(x)).detach().numpy(), ref)
