"""The per-family converters (weight_converters/<family>.py) through the central entry points: Keras -> torch
names/layouts with the convention in the report, round trip bit-exact, strict refusals."""
from __future__ import annotations

import numpy as np
import pytest

from weight_converters import recurrent
from weight_converters.keras import LayerMap, keras_to_torch, torch_to_keras, var_to_torch
from weight_converters.report import ConversionError

RNG = np.random.default_rng(0)


def _layer(shapes):
    return {v: RNG.normal(size=s) for v, s in shapes.items()}


CASES = {
    "lstm": ({"kernel": (5, 16), "recurrent_kernel": (4, 16), "bias": (16,)},
             {"weight_ih_l0": (16, 5), "weight_hh_l0": (16, 4), "bias_ih_l0": (16,), "bias_hh_l0": (16,)}),
    "bilstm": ({f"{d}/{v}": s for d in ("forward", "backward")
                for v, s in (("kernel", (5, 16)), ("recurrent_kernel", (4, 16)), ("bias", (16,)))},
               {f"{k}{d}": s for d in ("_l0", "_l0_reverse")
                for k, s in (("weight_ih", (16, 5)), ("weight_hh", (16, 4)), ("bias_ih", (16,)), ("bias_hh", (16,)))}),
    "gru": ({"kernel": (5, 9), "recurrent_kernel": (3, 9), "bias": (2, 9)},
            {"weight_ih_l0": (9, 5), "weight_hh_l0": (9, 3), "bias_ih_l0": (9,), "bias_hh_l0": (9,)}),
    "rnn": ({"kernel": (5, 3), "recurrent_kernel": (3, 3), "bias": (3,)},
            {"weight_ih_l0": (3, 5), "weight_hh_l0": (3, 3), "bias_ih_l0": (3,), "bias_hh_l0": (3,)}),
    "embedding": ({"embeddings": (20, 5)}, {"weight": (20, 5)}),
    "layernorm": ({"gamma": (5,), "beta": (5,)}, {"weight": (5,), "bias": (5,)}),
    "groupnorm": ({"gamma": (6,), "beta": (6,)}, {"weight": (6,), "bias": (6,)}),
    "prelu": ({"alpha": (1, 1, 6)}, {"weight": (6,)}),
    "attention": ({f"{v}/{p}": s for v in ("query", "key", "value") for p, s in (("kernel", (8, 2, 4)), ("bias", (2, 4)))}
                  | {"attention_output/kernel": (2, 4, 8), "attention_output/bias": (8,)},
                  {f"{t}_proj.{p}": s for t in "qkv" for p, s in (("weight", (8, 8)), ("bias", (8,)))}
                  | {"out_proj.weight": (8, 8), "out_proj.bias": (8,)}),
    "conv1d": ({"kernel": (5, 3, 4), "bias": (4,)}, {"weight": (4, 3, 5), "bias": (4,)}),
    "conv2d_transpose": ({"kernel": (3, 3, 4, 6), "bias": (4,)}, {"weight": (6, 4, 3, 3), "bias": (4,)}),
    "attention_packed": ({f"{v}/{p}": s for v in ("query", "key", "value")
                          for p, s in (("kernel", (8, 2, 4)), ("bias", (2, 4)))}
                         | {"attention_output/kernel": (2, 4, 8), "attention_output/bias": (8,)},
                         {"in_proj_weight": (24, 8), "in_proj_bias": (24,), "out_proj.weight": (8, 8),
                          "out_proj.bias": (8,)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_bit_exact(case):
    kind = {"bilstm": "lstm"}.get(case, case)
    keras_shapes, torch_shapes = CASES[case]
    w = {"layer": _layer(keras_shapes)}
    expected = {f"m.{k}": s for k, s in torch_shapes.items()}
    sd, rep = keras_to_torch(w, [LayerMap("layer", "m", kind)], expected=expected)
    assert rep.ok and rep.conventions
    assert {k: v.shape for k, v in sd.items()} == expected
    back, rep2 = torch_to_keras(sd, [LayerMap("layer", "m", kind)], expected={"layer": keras_shapes})
    assert rep2.ok
    for v, a in w["layer"].items():
        assert back["layer"][v].dtype == a.dtype and np.array_equal(back["layer"][v], a), v


def test_gru_gate_order_swapped_and_lstm_not():
    h = 2
    k = np.concatenate([np.full((3, h), g) for g in (0.0, 1.0, 2.0)], axis=1)  # Keras blocks z, r, h
    w = var_to_torch("gru", "kernel", k)
    assert [float(w[i * h, 0]) for i in range(3)] == [1.0, 0.0, 2.0]  # torch r, z, n
    k4 = np.concatenate([np.full((3, h), g) for g in range(4)], axis=1)
    assert [float(var_to_torch("lstm", "kernel", k4)[i * h, 0]) for i in range(4)] == [0, 1, 2, 3]


def test_one_keras_bias_fills_bias_ih_and_zero_bias_hh():
    w = {"l": _layer(CASES["lstm"][0])}
    sd, rep = keras_to_torch(w, [LayerMap("l", "m", "lstm")])
    assert np.array_equal(sd["m.bias_ih_l0"], w["l"]["bias"]) and not sd["m.bias_hh_l0"].any()
    assert recurrent.ONE_BIAS in rep.conventions


def test_gru_reset_before_refused():
    w = {"g": {"kernel": RNG.normal(size=(5, 9)), "recurrent_kernel": RNG.normal(size=(3, 9)),
               "bias": RNG.normal(size=(9,))}}
    with pytest.raises(ConversionError, match="reset_after=False"):
        keras_to_torch(w, [LayerMap("g", "gru", "gru")])


def test_prelu_alpha_per_position_refused():
    with pytest.raises(ConversionError, match="non-channel axis"):
        keras_to_torch({"p": {"alpha": RNG.normal(size=(4, 6))}}, [LayerMap("p", "act", "prelu")])


def test_torch_bias_hh_nonzero_folds_into_keras_bias():
    sd = {"m.weight_ih_l0": np.ones((8, 3)), "m.weight_hh_l0": np.ones((8, 2)), "m.bias_ih_l0": np.ones(8),
          "m.bias_hh_l0": np.full(8, 0.5)}
    back, _ = torch_to_keras(sd, [LayerMap("l", "m", "lstm")])
    assert np.array_equal(back["l"]["bias"], np.full(8, 1.5))


def test_attention_packed_is_query_key_value_head_major():
    d, h, k = 4, 2, 2
    q = np.arange(d * h * k, dtype=float).reshape(d, h, k)
    w = {"m": {"query/kernel": q, "key/kernel": q + 100, "value/kernel": q + 200,
               "query/bias": np.zeros((h, k)), "key/bias": np.ones((h, k)), "value/bias": np.full((h, k), 2.0),
               "attention_output/kernel": np.ones((h, k, d)), "attention_output/bias": np.zeros(d)}}
    sd, rep = keras_to_torch(w, [LayerMap("m", "att", "attention_packed")])
    packed = sd["att.in_proj_weight"]
    assert np.array_equal(packed[:h * k], q.reshape(d, h * k).T) and np.array_equal(packed[h * k:2 * h * k] - 100,
                                                                                    packed[:h * k])
    assert np.array_equal(sd["att.in_proj_bias"], np.repeat([0.0, 1.0, 2.0], h * k))
    # head j owns rows j*k .. (j+1)*k: row 1 is head 0, dim 1 = Keras q[:, 0, 1]
    assert np.array_equal(packed[1], q[:, 0, 1])
