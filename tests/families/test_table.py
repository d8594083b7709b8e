"""The family table (parity.core.families.FAMILIES): one consistent source for tap kinds, converters, config
rules, conventions with origins, and the refusal of what is not covered."""
from __future__ import annotations

import importlib

import pytest

from parity.core import families
from parity.core.errors import UsageError
from parity.core.families import activations, dense, embedding, normalization, recurrent
from parity.core.spec import TAP_KINDS, WEIGHTED_KINDS
from weight_converters.families import CONVERTERS
from weight_converters.keras import LAYER_VARS


def test_every_weighted_family_kind_has_a_converter_and_a_tap_kind():
    for f in families.FAMILIES.values():
        for kind in f.weighted:
            assert kind in WEIGHTED_KINDS and kind in TAP_KINDS and kind in LAYER_VARS, (f.name, kind)
            if kind in f.kinds:  # a new kind: its converter module is the family's
                assert CONVERTERS[kind] is not None
                assert importlib.import_module(f.converter) is not None


def test_every_convention_names_a_public_origin():
    for fam, c in families.conventions():
        assert c.origin and "shared" not in c.origin and "issue" not in c.origin.lower(), (fam, c)


@pytest.mark.parametrize("cls, cfg, kind", [
    ("LSTM", {}, "lstm"), ("GRU", {}, "gru"), ("SimpleRNN", {}, "rnn"),
    ("Bidirectional", {"layer": {"class_name": "GRU", "config": {}}}, "gru"),
    ("Embedding", {}, "embedding"), ("LayerNormalization", {}, "layernorm"), ("PReLU", {}, "prelu"),
    ("Conv2D", {}, "conv2d"), ("Conv3D", {}, "conv3d"), ("ConvLSTM2D", {}, None),
])
def test_keras_kind(cls, cfg, kind):
    assert families.keras_kind(cls, cfg) == kind


@pytest.mark.parametrize("cls, cfg, words", [
    ("GRU", {"reset_after": False}, "reset_after=False"),
    ("LSTM", {"recurrent_activation": "hard_sigmoid"}, "hard_sigmoid"),
    ("Bidirectional", {"layer": {"class_name": "LSTM", "config": {"go_backwards": True}}}, "go_backwards"),
    ("LayerNormalization", {"rms_scaling": True}, "rms_scaling"),
    ("ConvLSTM2D", {}, "ConvLSTM2D is not yet supported"),
    ("MaxPooling3D", {"dtype": "float64"}, "float32"),
])
def test_unsupported_names_layer_and_reason(cls, cfg, words):
    (line,) = families.unsupported([("the_layer", cls, cfg)])
    assert line.startswith(f"layer 'the_layer' ({cls}): ") and words in line and "not yet supported" in line


def test_supported_variants_pass():
    assert families.unsupported([("a", "LSTM", {"recurrent_activation": "sigmoid", "activation": "tanh"}),
                                 ("b", "GRU", {"reset_after": True}), ("c", "Embedding", {"mask_zero": False}),
                                 ("c2", "Embedding", {"mask_zero": True}),
                                 ("d", "Dense", {}), ("e", "InputLayer", {})]) == []


def test_bidirectional_variable_names():
    assert families.keras_var_name("enc", "kernel", "enc/forward_lstm/lstm_cell/kernel") == "forward/kernel"
    assert families.keras_var_name("enc", "bias", "enc/backward_gru_2/gru_cell/bias") == "backward/bias"
    assert families.keras_var_name("lstm", "kernel", "lstm/lstm_cell/kernel") == "kernel"


@pytest.mark.parametrize("kind, ref, port, cause", [
    ("activation", {"class": "LeakyReLU", "negative_slope": dense.KERAS_LEAKY_RELU_SLOPE},
     {"class": "LeakyReLU", "negative_slope": dense.TORCH_LEAKY_RELU_SLOPE}, "leaky_relu_slope"),
    ("prelu", {"trainable_params": 8, "shared_axes": [1]}, {"num_parameters": 1}, "prelu_shared_axes"),
    ("activation", {"activation": "gelu"}, {"class": "GELU", "approximate": "tanh"}, "gelu_approximate"),
    ("layernorm", {"epsilon": normalization.KERAS_LAYERNORM_EPSILON, "axis": -1, "input_shape": [7, 5]},
     {"eps": normalization.TORCH_LAYERNORM_EPSILON, "normalized_shape": [5]}, "layernorm_eps"),
    ("layernorm", {"epsilon": 1e-3, "axis": -1, "input_shape": [7, 5]}, {"eps": 1e-3, "normalized_shape": [7, 5]},
     "layernorm_axes"),
    ("groupnorm", {"epsilon": 1e-3, "groups": 2}, {"eps": 1e-3, "num_groups": 4}, "groupnorm_groups"),
    ("batchnorm", {"input_shape": [12, 6]}, {"class": "BatchNorm1d", "num_features": 12}, "bn1d_axis"),
    ("conv2d_transpose", {"padding": "same", "kernel_size": [3, 3], "strides": [2, 2]},
     {"class": "ConvTranspose2d", "padding": [1, 1], "output_padding": [1, 1]}, "conv_transpose_same"),
    ("upsample", {"interpolation": "bilinear"}, {"mode": "bilinear", "align_corners": True}, "upsample_align_corners"),
    ("embedding", {"input_dim": 50, "output_dim": 8, "mask_zero": False},
     {"num_embeddings": 50, "embedding_dim": 8, "padding_idx": 0}, "padding_idx"),
    ("lstm", {"units": 6, "bidirectional": True}, {"hidden_size": 6, "bidirectional": True, "batch_first": False},
     "batch_first"),
    ("lstm", {"units": 6, "bidirectional": True}, {"hidden_size": 6, "bidirectional": False, "batch_first": True},
     "bidirectional"),
    ("gru", {"units": 6}, {"hidden_size": 5, "batch_first": True}, "rnn_units"),
    ("lstm", {"units": 6}, {"hidden_size": 6, "batch_first": True, "bias_hh_trainable": True}, "rnn_two_biases"),
])
def test_config_rules_name_the_convention(kind, ref, port, cause):
    assert cause in [h[0] for h in families.config_findings(kind, ref, port)]


def test_config_rules_quiet_on_a_correct_pair():
    assert families.config_findings("lstm", {"units": 6, "bidirectional": True},
                                    {"hidden_size": 6, "bidirectional": True, "batch_first": True,
                                     "bias_hh_trainable": False}) == []
    assert families.config_findings("layernorm", {"epsilon": 1e-3, "axis": -1, "input_shape": [7, 5]},
                                    {"eps": 1e-3, "normalized_shape": [5]}) == []


# softplus: torch's threshold changes the value by < 2.1e-9 (relative 1e-10 here), seen only in float64
@pytest.mark.parametrize("name, label, rtol", [("gelu", "tanh", 1e-6), ("hard_sigmoid", "Keras 2", 1e-6),
                                               ("softplus", "threshold", 1e-13)])
def test_which_definition(name, label, rtol):
    import numpy as np

    x = np.linspace(-30.0, 30.0, 241)
    labels = list(activations.DEFINITIONS[name])
    target = next(lbl for lbl in labels if label in lbl)
    assert activations.which_definition(name, x, activations.DEFINITIONS[name][target](x), rtol) == target


def test_refuse_unsupported_raises_one_line_usage_error():
    class Layer:
        def __init__(self, name, weights=()):
            self.name, self.weights = name, list(weights)

        def get_config(self):
            return {}

    ConvLSTM2D = type("ConvLSTM2D", (Layer,), {})
    with pytest.raises(UsageError, match=r"^expected reference layers parity can check\. Received: layer 'c3' "
                                         r"\(ConvLSTM2D\): ConvLSTM2D is not yet supported"):
        families.refuse_unsupported([ConvLSTM2D("c3", weights=[object()])])
    families.refuse_unsupported([ConvLSTM2D("c3", weights=[object()])], tapped={"c3": "conv2d"})  # the pair says how
    families.refuse_unsupported([ConvLSTM2D("nothing_to_transfer")])  # no weights: no silent mis-transfer


def test_recurrent_constants_agree_with_converter():
    from weight_converters import recurrent as conv

    assert recurrent.TORCH_GRU_GATES.replace(" ", "") == ",".join(recurrent.TORCH_GATE_NAMES["gru"])
    assert set(conv.GATES) == set(recurrent.RNN_KINDS)
    assert embedding.FAMILY.converter == "weight_converters.embedding"


@pytest.mark.slow
def test_check_refuses_unsupported_layer_before_conversion():
    """Through the check the CLI runs: one line naming the layer, a UsageError (exit 2 at the CLI)."""
    from parity.core.spec import PairSpec, Tap
    from parity.harness import check

    spec = PairSpec(name="gru_reset_before", summary="", reference="tests.families.models:keras_gru_reset_before",
                    port="tests.families.models:torch_small", taps=lambda c: [Tap("out", "out", "", "dense")],
                    input_shape=lambda c: (6, 4), target=lambda c: ("regression", 2))
    with pytest.raises(UsageError) as exc:
        check(spec, stages="structure,forward_eval")
    msg = str(exc.value)
    assert "\n" not in msg and "layer 'gru' (GRU): GRU(reset_after=False) is not yet supported" in msg


@pytest.mark.parametrize("k, s, want", [(3, 2, (0, None)), (4, 2, (1, 0)), (2, 2, (0, 0)), (3, 1, (1, 0)),
                                        (5, 2, (1, None))])
def test_transposed_same_as_torch_padding(k, s, want):
    """Keras 'same' crops (k - s) // 2 first; torch padding p crops p first and output_padding adds at the end."""
    from parity.core.families.upsampling import same_transpose_crop

    assert same_transpose_crop(k, s) == want
    p, op = want
    if op is not None:  # the torch output size then equals Keras' in * s
        n = 5
        assert (n - 1) * s - 2 * p + k + op == n * s
