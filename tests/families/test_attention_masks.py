"""Attention with a causal mask, and ports written in other styles (``parity.core.families.attention``,
``weight_converters/attention.py``, ``reference_keras/decoder.py``, ``ported_torch/decoder.py``): Keras 3's masking
arithmetic against numpy, correct causal ports in three styles passing ``parity.compare`` and ``parity check``
in float64 (every default stage), the mask conventions named (polarity, missing, after softmax, the diagonal),
an attention mask given as an input refused in one line, projections in an ``nn.ModuleList`` aligned by
structure (and a forward using them in other roles still caught), and ``nn.MultiheadAttention`` (packed
``in_proj``) through gradients and the optimizer step."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import parity
from parity.core.errors import UsageError
from parity.core.families.attention import keras_attention_scale, numpy_attention
from tests.families import user_ports as U
from tests.keras_dtype import keras_float64
from tests.planted_ports import assert_found_and_named

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def decoder64():
    from reference_keras.decoder import decoder_block

    with keras_float64():
        return decoder_block()


def _causes(r):
    return [f.cause for f in r.findings if f.severity == "error" or f.cause.startswith("attention")]


# ---- Keras' masking arithmetic ---------------------------------------------------------------------------------
def test_keras_causal_mask_is_exact_in_float64_with_minus_inf_or_minus_1e9():
    """Keras replaces masked scores by -1e9 and zeroes them after the softmax: a numpy attention masking with
    -inf or -1e9 (and Keras' float32-rounded scale) agrees to rounding, in both of Keras' code paths
    (dropout 0: ops.dot_product_attention(is_causal=True); dropout > 0: the explicit masked softmax)."""
    from parity.backends.keras_side import _var

    x = np.random.default_rng(0).normal(size=(2, 6, 16))
    for dropout in (0.0, 0.1):
        with keras_float64():
            layer = keras.layers.MultiHeadAttention(2, 8, dropout=dropout)
            inp = keras.Input((6, 16), dtype="float64")
            model = keras.Model(inp, layer(inp, inp, use_causal_mask=True))
            rng = np.random.default_rng(1)
            for w in layer.weights:
                w.assign(rng.normal(0, 0.5, w.shape))
            ref = np.asarray(model(x))
            v = {_var(layer, w): np.asarray(w.numpy()) for w in layer.weights}
        parts = [(v[f"{n}/kernel"].reshape(16, -1).T, v[f"{n}/bias"].reshape(-1)) for n in ("query", "key", "value")]
        parts.append((v["attention_output/kernel"].reshape(-1, 16).T, v["attention_output/bias"]))
        keep = np.tril(np.ones((6, 6), dtype=bool))
        for fill in (float("-inf"), -1e9):
            out = numpy_attention(x, parts, 2, keras_attention_scale(8), keep, fill)
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-14 * np.abs(ref).max())
        # the exact 1/sqrt(8) is off by Keras' float32 rounding: visible in float64
        assert np.abs(numpy_attention(x, parts, 2, 8 ** -0.5, keep) - ref).max() > 1e-9 * np.abs(ref).max()
        # and without the mask the output is another one
        assert np.abs(numpy_attention(x, parts, 2, keras_attention_scale(8)) - ref).max() > 1e-3


# ---- correct causal ports in three styles ------------------------------------------------------------------------
STYLES = {
    "packed_bool_mask": ("decoder_block", {}),
    "packed_float_mask": ("decoder_block", {"mask": "float"}),
    "sdpa_is_causal": ("decoder_sdpa", {}),
    "masked_fill_inf": ("decoder_masked_fill", {}),
    "masked_fill_1e9": ("decoder_masked_fill", {"mask_fill": -1e9}),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_causal_port_passes_every_default_stage_in_float64(decoder64, style):
    import ported_torch.decoder as P

    fn, kw = STYLES[style]
    r = parity.compare(decoder64, getattr(P, fn)(**kw))
    assert r, r
    names = {s.name for s in r.stages}
    assert {"forward_eval", "isolated", "gradients", "step"} <= names
    grads = [t.path for t in r.stage("gradients").tensors]
    if fn == "decoder_block":  # the packed projections are judged like any parameter
        assert "attention:in_proj_weight.grad" in grads and "attention:in_proj_bias.grad" in grads
        assert any(t.path == "attention:in_proj_weight.update" for t in r.stage("step").tensors)
    else:
        assert "attention:q_proj.weight.grad" in grads


def annotated_transformer_style(seq_len=8, d_model=16, num_heads=4, ff_dim=32, num_classes=3, *, masked_value=0):
    """The attention as in "The Annotated Transformer": ``forward(query, key, value, mask)`` with the parent
    building a float ``tril`` mask (1 = attend, Keras' polarity) and ``scores.masked_fill(mask == 0, -1e9)``;
    ``masked_value=1`` is the inverted polarity."""
    from torch import nn

    from ported_torch.decoder import DecoderClassifier

    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

        def forward(self, query, key, value, mask=None):
            n, length, _ = query.shape
            h, k = num_heads, d_model // num_heads
            q, kk, v = (p(t).view(n, -1, h, k).transpose(1, 2)
                        for p, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
            s = q @ kk.transpose(-2, -1) * keras_attention_scale(k)
            if mask is not None:
                s = s.masked_fill(mask == masked_value, -1e9)
            return self.out_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(n, length, -1))

    class Decoder(DecoderClassifier):
        def forward(self, x):
            mask = torch.tril(torch.ones(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)).unsqueeze(0)
            x = self.attn_norm(x + self.attention(x, x, x, mask))
            x = self.ffn_norm(x + self.ffn_out(self.ffn_gelu(self.ffn_in(x))))
            return self.classifier(self.pool(x))

    m = Decoder(seq_len, d_model, num_heads, ff_dim, num_classes, attention="sdpa")
    m.attention = MHA()
    return m


def test_mask_passed_as_an_argument_passes_and_its_polarity_is_named(decoder64):
    """The port's mask argument reaches the module in the isolated stage too (replayed as the port passed it)."""
    r = parity.compare(decoder64, annotated_transformer_style())
    assert r, r
    assert r.stage("isolated").passed and any(t.path == "attention" for t in r.stage("isolated").tensors)
    bad = parity.compare(decoder64, annotated_transformer_style(masked_value=1), stages="forward_eval")
    assert not bad and _causes(bad)[0] == "attention_mask_polarity"


def test_causal_port_passes_through_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "parity", "check", "--reference",
                          "reference_keras.decoder:decoder_block", "--port", "ported_torch.decoder:decoder_sdpa",
                          "--no-cache", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("PASSED") and "float64" in last


# ---- the mask conventions, named ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dc_mask_missing", "dc_mask_polarity_bool", "dc_mask_polarity_fill",
                                  "dc_mask_after_softmax", "dc_causal_diagonal", "dc_sdpa_not_causal"])
def test_planted_mask_bug_is_found_at_the_attention_and_named(name):
    assert_found_and_named(name)


def test_a_causal_port_of_a_reference_without_a_mask_is_named():
    from ported_torch.decoder import decoder_sdpa
    from reference_keras.transformer import transformer_block

    with keras_float64():
        ref = transformer_block(seq_len=8, num_heads=4)
    r = parity.compare(ref, decoder_sdpa(), stages="forward_eval")
    assert not r
    assert "attention_causal_mask_extra" in _causes(r)


def test_attention_mask_given_as_an_input_is_refused_in_one_line(tmp_path):
    from ported_torch.decoder import decoder_block

    with keras_float64():
        x = keras.Input((8, 16))
        m = keras.Input((8, 8))
        a = keras.layers.MultiHeadAttention(4, 4, name="attention")(x, x, attention_mask=m)
        ref = keras.Model([x, m], keras.layers.GlobalAveragePooling1D()(a))
    with pytest.raises(UsageError) as e:
        parity.compare(ref, decoder_block())
    msg = str(e.value)
    assert "\n" not in msg and "attention_mask=" in msg and "use_causal_mask=True is" in msg


# ---- projections in an nn.ModuleList; nn.MultiheadAttention in a transformer ---------------------------------------
@pytest.fixture(scope="module")
def transformer64():
    from reference_keras.transformer import transformer_block

    with keras_float64():
        return transformer_block()


def test_modulelist_projections_pass_by_structure(transformer64):
    r = parity.compare(transformer64, U.transformer_modulelist_projections())
    assert r, r
    assert any(t.path == "attention:q_proj.weight.grad" for t in r.stage("gradients").tensors)


def test_modulelist_projections_used_as_key_query_fail_and_are_named(transformer64):
    """The roles come from the structure (the container's order), not from what the forward does: a forward
    that takes ``proj[1]`` as the query diverges at the attention, named."""
    import torch.nn.functional as F

    m = U.transformer_modulelist_projections()
    sa = m.sa
    scale = keras_attention_scale(8)

    class Swapped(type(sa)):
        def forward(self, x):
            k, q, v = (p(x).unflatten(-1, (2, 8)).transpose(1, 2) for p in self.proj)
            return self.wo(F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).flatten(2))

    sa.__class__ = Swapped
    r = parity.compare(transformer64, m, stages="forward_eval")
    assert not r
    fd = r.first_divergence
    assert fd[0].name == "forward_eval" and fd[1].path == "attention"
    assert _causes(r)[0] == "attention_qkv_order"


def _packed_transformer(d_model=16, num_heads=2, ff_dim=32, num_classes=3):
    from torch import nn

    from ported_torch.transformer import KerasGELU

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
            self.n1, self.n2 = nn.LayerNorm(d_model, eps=1e-3), nn.LayerNorm(d_model, eps=1e-3)
            self.f1, self.gelu, self.f2 = nn.Linear(d_model, ff_dim), KerasGELU(), nn.Linear(ff_dim, d_model)
            self.head = nn.Linear(d_model, num_classes)

        def forward(self, x):
            x = self.n1(x + self.mha(x, x, x, need_weights=False)[0])
            x = self.n2(x + self.f2(self.gelu(self.f1(x))))
            return self.head(x.mean(dim=1))

    return Packed()


def test_packed_multihead_attention_transformer_passes_every_stage_in_float64():
    """key_dim 4: Keras' float32-rounded 1/sqrt(4) is exact, so nn.MultiheadAttention's own scale matches."""
    from reference_keras.transformer import transformer_block

    with keras_float64():
        ref = transformer_block(num_heads=4)
    r = parity.compare(ref, _packed_transformer(num_heads=4))
    assert r, r
    assert {"gradients", "step", "isolated"} <= {s.name for s in r.stages}


def test_packed_multihead_attention_with_key_dim_8_passes_and_says_why_the_tolerance_is_wider(transformer64):
    """key_dim 8: torch scales by the exact 1/sqrt(8), Keras by its float32 rounding (1.7e-8 relative), which
    nn.MultiheadAttention cannot take: a faithful port PASSES in float64 at rtol KERAS_SCALE_ROUNDING_RTOL (before:
    FAILED at forward_eval, max rel 8.7e-9 against 1e-10), with a warning saying so."""
    from parity.core.families.attention import KERAS_SCALE_ROUNDING_RTOL

    r = parity.compare(transformer64, _packed_transformer())
    assert r, r
    warn = [f for f in r.findings if f.cause == "attention_scale" and f.severity == "warning"]
    assert len(warn) == 1 and "float32" in warn[0].message and f"{KERAS_SCALE_ROUNDING_RTOL:g}" in warn[0].message
    worst = max(t.max_abs / t.scale for s in r.stages for t in s.tensors if t.scale)
    assert 1e-10 < worst < KERAS_SCALE_ROUNDING_RTOL / 5, worst  # the rounding is there, with a margin


def test_packed_multihead_attention_with_key_dim_8_still_finds_a_real_bug(transformer64):
    """The wider tolerance hides nothing the attention family names: LayerNorm eps 1e-5 (torch's default) after
    the attention still FAILS there, named."""
    from torch import nn

    port = _packed_transformer()
    port.n1 = nn.LayerNorm(16)
    r = parity.compare(transformer64, port, stages="structure,forward_eval")
    assert not r
    fd = r.first_divergence
    assert fd[1].path == "attn_norm" and fd.cause is not None and fd.cause.cause == "layernorm_eps", str(r)


# ---- attention dropout -------------------------------------------------------------------------------------------
def _dropout_pair(keras_rate, torch_rate):
    from torch import nn

    with keras_float64():
        x_in = keras.Input((8, 16))
        a = keras.layers.MultiHeadAttention(4, 4, dropout=keras_rate, name="attention")(x_in, x_in,
                                                                                        use_causal_mask=True)
        x = keras.layers.GlobalAveragePooling1D(name="pool")(keras.layers.Add(name="res")([x_in, a]))
        ref = keras.Model(x_in, keras.layers.Activation("softmax", name="p")(keras.layers.Dense(3, name="fc")(x)))

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(16, 4, batch_first=True, dropout=torch_rate)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            m = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)
            return self.fc((x + self.attention(x, x, x, attn_mask=m, need_weights=False)[0]).mean(1))

    return ref, Port()


@pytest.mark.parametrize("rates", [(0.1, 0.0), (0.0, 0.1), (0.1, 0.1)])
def test_attention_dropout_is_named_at_the_training_forward(rates):
    """Another rate: a config rule; the same rate > 0: random masks never agree, said so (check with 0)."""
    ref, port = _dropout_pair(*rates)
    r = parity.compare(ref, port, stages="structure,forward_eval,forward_train")
    assert not r
    fd = r.first_divergence
    assert (fd[0].name, fd[1].path) == ("forward_train", "attention")
    assert _causes(r)[0] == "attention_dropout"
    ok = parity.compare(*_dropout_pair(0.0, 0.0), stages="structure,forward_eval,forward_train")
    assert ok, ok
