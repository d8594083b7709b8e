"""Ports written the way people write them (benchmarks.user_zoo): named children with any names,
nn.Sequential, ModuleDict/ModuleList, functional F.* calls, in-place activations, a padding conv for a
ZeroPadding2D + Conv2D, a fused activation, a view for Flatten. Each correct port PASSES through
``parity.compare``; the alignment pairs a Keras SeparableConv2D with a depthwise conv and the 1x1 conv it
feeds, wherever they live."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

from benchmarks import mutations as M
from benchmarks import user_zoo
from parity.cli import main
from parity.core.errors import UsageError
from parity.core.spec import resolve
from parity.harness import check
from parity.pairs import registry
from parity.user.align import align
from parity.user.inputs import LAYOUT_IMAGE, assign_shapes, packed_reference, parse_input_shapes, torch_unpacker
from parity.user.pair import compare, reference_from_file, spec_from_user_models

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

IMAGE_ZOO = [z for z in user_zoo.ZOO if z[0] in ("keras_mini_xception", "keras_conv_head")]




@pytest.mark.parametrize("ref_fn, port_fn", IMAGE_ZOO, ids=[p for _, p in IMAGE_ZOO])
def test_a_correct_port_in_any_style_passes(float64, ref_fn, port_fn):
    result = compare(getattr(user_zoo, ref_fn)(), getattr(user_zoo, port_fn)(), seed=2)
    assert result.passed, result.summary_line()
    table = result.stage("structure").info["alignment"]
    weighted = {n for n in ("conv1", "conv2", "sep1", "sep2", "head", "conv_a", "conv_b", "out")}
    assert all(r["status"] in ("aligned", "pinned") for r in table if r["ref"] in weighted), table
    assert result.conversion.get("missing", []) == [] and result.conversion.get("unexpected", []) == []


@pytest.mark.parametrize("port_fn, dw, pw", [
    ("port_named_children", "block.first.dw", "block.first.pw"),
    ("port_sequential", "main.0.0", "main.0.1"),
    ("port_module_dict", "layers.depthwise_conv", "layers.project"),
    ("port_functional", "depthwise_conv1", "conv1x1_1"),
])
def test_the_separable_conv_is_found_by_structure(port_fn, dw, pw):
    al = align(user_zoo.keras_mini_xception(), getattr(user_zoo, port_fn)())
    group = next(name for name, members in al.groups.items() if members == (dw, pw))
    tap = next(t for t in al.taps if t.ref == "sep1")
    assert (tap.port, tap.kind) == (group, "separable_conv2d")


def test_a_parameter_free_module_called_repeatedly_is_tapped_per_call():
    """``self.act`` after every norm: each call is compared with its own reference layer."""
    al = align(user_zoo.keras_mini_xception(), user_zoo.port_module_dict())
    ports = {t.ref: t.port for t in al.taps}
    assert (ports["relu1"], ports["relu2"], ports["sep1_relu"]) == ("act", "act#2", "act#3")


def test_zero_padding_and_a_valid_conv_is_a_padding_conv():
    al = align(user_zoo.keras_conv_head(), user_zoo.port_conv_head())
    ports = {t.ref: t.port for t in al.taps}
    assert ports["conv_b"] == "conv_b#unpadded" and al.aliases["conv_b#unpadded"] == ("padded", "conv_b", (1, 1))
    pad = next(r for r in al.rows if r.ref == "pad")
    assert pad.status == "unaligned-ref" and ports["conv_a"] == "conv_a"
    assert next(r for r in al.rows if r.port == "relu_a").status == "fused"


def test_a_wrong_separable_split_is_caught_at_the_separable_layer(float64):
    """A planted bug in a zoo port (depthwise and pointwise swapped in order is impossible by shapes; here the
    pointwise conv gets a bias the reference does not have): found at that layer, not downstream noise."""
    port = user_zoo.port_named_children()
    pw = port.block.first.pw
    port.block.first.pw = torch.nn.Conv2d(pw.in_channels, pw.out_channels, 1, bias=True)
    result = compare(user_zoo.keras_mini_xception(), port, stages="structure,forward_eval")
    assert not result.passed
    assert "sep1" in result.summary_line()


def test_an_incomplete_alignment_is_the_verdict_not_the_numbers_after_it(float64):
    """A port without the BatchNorm after its first separable conv: the check fails on the alignment, first,
    naming the layer and where the port lacks it; no numeric divergence downstream is given as the cause."""
    port = user_zoo.port_named_children()
    port.block.first_norm = torch.nn.Identity()
    result = compare(user_zoo.keras_mini_xception(), port, stages="structure,forward_eval,gradients")
    line = result.summary_line()
    assert line.startswith("FAILED: structure: alignment incomplete: 1 reference layer(s) with weights left "
                           "(sep1_bn)"), line
    first = result.causes()[0]
    assert (first.cause, first.path) == ("alignment_incomplete", "alignment")
    assert "after block/first/dw+pw" in first.message
    assert result.first_divergence.tensor is None


def test_an_extra_weighted_port_module_is_named_with_the_pin(float64):
    """A reference Dense the port computes with a differently shaped Linear: both are left over, the closest
    candidate and the exact --align pin are named."""
    from torch import nn

    inp = keras.Input((6,))
    x = keras.layers.Dense(5, name="a")(inp)
    x = keras.layers.Dense(3, name="b")(x)
    km = keras.Model(inp, x)
    port = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3))
    result = compare(km, port, stages="structure,forward_eval")
    first = result.causes()[0]
    assert first.cause == "alignment_incomplete"
    assert "port module 2 (Linear) has parameters (bias, weight) and no reference counterpart" in first.message
    assert result.summary_line().startswith("FAILED: structure: alignment incomplete: 1 port module(s) with "
                                            "parameters left (2)")


def test_a_module_called_for_distinct_reference_layers_is_named_and_the_optimizer_builds(float64):
    """One Linear called three times where Keras has three Dense layers: found and named (module, calls,
    reference layers); the optimizer gets each parameter once (no crash in the step stage)."""
    from torch import nn

    inp = keras.Input((4,))
    x = inp
    for k in range(3):
        x = keras.layers.Dense(4, name=f"d{k}")(x)
    km = keras.Model(inp, keras.layers.Dense(2, name="out")(x))

    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            for _ in range(3):
                x = self.block(x)
            return self.out(x)

    result = compare(km, Reused())
    assert not result.passed
    first = result.causes()[0]
    assert first.cause == "alignment_incomplete"
    assert "port module block is called 3 times for distinct reference layers d0, d1, d2" in first.message
    assert result.stage("step") is not None


@pytest.mark.parametrize("ref_fn, port_fn", [("keras_two_input", "port_two_input"), ("keras_mlp", "port_mlp")])
def test_two_inputs_and_a_non_image_model_pass(float64, ref_fn, port_fn):
    """``forward(target, image)`` is called with the reference's inputs in the Keras model's order, each in
    the port's layout; a (20,) feature vector is passed as it is."""
    result = compare(getattr(user_zoo, ref_fn)(), getattr(user_zoo, port_fn)())
    assert result.passed, result.summary_line()


def test_inputs_are_packed_in_the_keras_order_and_unpacked_in_the_ports_layout(float64):
    km = user_zoo.keras_two_input()
    packed, slots = packed_reference(km)
    assert [(s.name, s.shape, s.start, s.layout) for s in slots] == [
        ("target", (13, 13, 3), 0, LAYOUT_IMAGE), ("image", (13, 13, 3), 507, LAYOUT_IMAGE)]
    assert packed.get_layer("fc") is km.get_layer("fc")  # the same layers, names and weights
    x = torch.arange(2 * 1014, dtype=torch.float64).reshape(2, 1014)
    target, image = torch_unpacker(slots)(x)
    assert target.shape == (2, 3, 13, 13) and float(image[0, 0, 0, 0]) == 507.0 and float(image[0, 1, 0, 0]) == 508.0


def test_input_shapes_by_name_order_and_default():
    own = [("target", (None, None, 3)), ("image", (8, 8, 3))]
    assert assign_shapes(own, parse_input_shapes(["image=8,8,3", "target=5,5,3"])) == [(5, 5, 3), (8, 8, 3)]
    assert assign_shapes(own, parse_input_shapes("5,5,3")) == [(5, 5, 3), (8, 8, 3)]
    with pytest.raises(UsageError, match=r"expected a shape for reference input 'target', whose shape is "
                                         r"\(None, None, 3\)\. Received: none\."):
        assign_shapes(own, [])
    with pytest.raises(UsageError, match=r"expected the name of a reference input \(target, image\)\. "
                                         r"Received: 'search'\."):
        assign_shapes(own, parse_input_shapes("search=8,8,3"))


def test_cli_two_named_inputs_and_a_feature_vector(capsys, tmp_path):
    rc = main(["check", "--reference", "benchmarks.user_zoo:keras_mlp", "--port", "benchmarks.user_zoo:port_mlp",
               "--input-shape", "20", "--stages", "structure,forward_eval,gradients", "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1].startswith("PASSED"), out[-3:]
    rc = main(["check", "--reference", "benchmarks.user_zoo:keras_two_input", "--port",
               "benchmarks.user_zoo:port_two_input", "--input-shape", "image=13,13,3", "--input-shape",
               "target=13,13,3", "--stages", "structure,forward_eval", "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1].startswith("PASSED"), out[-3:]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_saved_model_is_a_reference_with_its_own_weights(tmp_path, capsys, suffix):
    """``--reference model.keras`` / ``model.h5``: loaded with safe_mode=True and checked with the weights it
    was saved with (a port that loads them passes; BatchNorm statistics are not redrawn)."""
    import numpy as np

    km = user_zoo.keras_mlp()
    rng = np.random.default_rng(3)
    km.set_weights([rng.normal(0.5, 0.3, w.shape).astype(w.dtype) if "variance" not in w.path
                    else rng.uniform(0.5, 2.0, w.shape).astype(w.dtype) for w in km.weights])
    path = tmp_path / f"mlp{suffix}"
    km.save(path)
    loaded = reference_from_file(str(path))()
    assert all(np.array_equal(a, b) for a, b in zip(km.get_weights(), loaded.get_weights()))
    rc = main(["check", "--reference", str(path), "--port", "benchmarks.user_zoo:port_mlp",
               "--stages", "structure,forward_eval,gradients", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1].startswith("PASSED"), out[-3:]


def test_a_saved_model_with_a_lambda_is_refused_without_running_it(tmp_path, capsys):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(2)(inp))
    path = tmp_path / "lam.keras"
    keras.Model(inp, out).save(path)
    rc = main(["check", "--reference", str(path), "--port", "benchmarks.user_zoo:port_mlp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"parity: error: --reference {path}: expected a model saved by Keras"), err
    assert "Lambda" in err[-1]


def test_a_port_whose_forward_raises_is_the_users_error(capsys):
    rc = main(["check", "--reference", "benchmarks.user_zoo:keras_mlp", "--port", "benchmarks.user_zoo:port_mlp",
               "--input-shape", "21"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "--input-shape: expected a shape that fits reference input" in err[-1]


@pytest.mark.parametrize("name, ref_fn, port_fn, summary, stage, path, cause", user_zoo.ZOO_MUTATIONS,
                         ids=[m[0] for m in user_zoo.ZOO_MUTATIONS])
def test_a_planted_bug_in_a_zoo_port_is_located_and_named(name, ref_fn, port_fn, summary, stage, path, cause):
    """Through the code the CLI runs (benchmarks.mutations.run_mutation -> parity.harness.check): the first
    divergent layer and the cause of each planted convention bug, in every zoo style."""
    m = M.Mutation(name, "user", summary, stage, path, cause, port=None,
                   user=(f"benchmarks.user_zoo:{ref_fn}", f"benchmarks.user_zoo:{port_fn}"))
    o = M.run_mutation(m, stages=("structure", "forward_eval", "forward_train"))
    assert o.error is None and o.detected, o
    assert (o.stage, o.path, o.cause) == (stage, path, cause), o.cause_message


def test_an_xception_sized_user_style_port_aligns_and_passes():
    """The registered Xception port with every separable unit rewritten as an nn.Sequential of two convs: the 34
    separable convs are found by structure and the check passes (the pair's fast size)."""
    pair = registry.get("xception")
    cfg = pair.config(**pair.fast_config)
    spec = spec_from_user_models(lambda: resolve(pair.reference)(**cfg),
                                 lambda: user_zoo.port_xception_user_style(**cfg), name="xception-user-style")
    result = check(spec, stages="structure,forward_eval")
    assert result.passed, result.summary_line()
    assert len(spec.alignment.groups) == 34 and spec.alignment.counts() == {"aligned": len(spec.alignment.rows)}


def test_a_separable_conv_the_structure_cannot_group_is_named_with_its_pin_and_the_pin_fixes_it():
    """A depthwise conv whose output also feeds a side branch is not grouped automatically; the verdict names
    the depthwise + 1x1 pair and the exact pin, and that pin makes the pair one group."""
    from torch import nn

    inp = keras.Input((8, 8, 4))
    x = keras.layers.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep")(inp)
    km = keras.Model(inp, keras.layers.GlobalAveragePooling2D(name="gap")(x))

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.spatial = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
            self.mix = nn.Conv2d(4, 6, 1, bias=False)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.probe = nn.Identity()  # a user's debugging tap on the depthwise output: a second consumer

        def forward(self, x):
            y = self.spatial(x)
            self.probe(y)
            return self.gap(self.mix(y)).flatten(1)

    al = align(km, Port())
    inc = al.incomplete()
    assert inc is not None and inc["ref_left"][0]["pin"] == "--align sep=spatial+mix", inc
    pinned = align(km, Port(), pins=["sep=spatial+mix"])
    assert pinned.groups == {"spatial+mix": ("spatial", "mix")} and pinned.incomplete() is None


def test_the_inputs_convention_is_reported(float64):
    result = compare(user_zoo.keras_two_input(), user_zoo.port_two_input(), stages="structure")
    assert result.passed, result.summary_line()
    text = str(result.to_dict())
    assert "target (13, 13, 3) NHWC -> NCHW; image (13, 13, 3) NHWC -> NCHW" in text
    assert "forward(target, image) (one packed array, cut apart by the view)" in text


def test_a_layer_shared_on_both_sides_is_not_a_leftover(float64):
    """One Dense applied to two inputs in Keras, one Linear called twice in the port: the same weights on both
    sides, no verdict."""
    from torch import nn

    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    shared = keras.layers.Dense(4, name="tower")
    x = keras.layers.Concatenate(name="cat")([shared(a), shared(b)])
    km = keras.Model([a, b], keras.layers.Dense(2, name="out")(x))

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = nn.Linear(6, 4)
            self.out = nn.Linear(8, 2)

        def forward(self, a, b):
            return self.out(torch.cat([self.tower(a), self.tower(b)], dim=1))

    result = compare(km, Port(), stages="structure,forward_eval,gradients,step")
    assert result.passed, result.summary_line()


def test_a_middle_flow_block_reused_8x_is_named_not_a_crash():
    """The Xception port with one middle-flow block called 8x (benchmarks.mutations.xc_shared_middle) as a user
    pair: the verdict names the block, its calls and the distinct reference layers; the optimizer builds."""
    pair = registry.get("xception")
    cfg = pair.config(**pair.fast_config)
    spec = spec_from_user_models(lambda: resolve(pair.reference)(**cfg), lambda: M.xc_shared_middle(**cfg),
                                 name="xception-shared-middle")
    result = check(spec, stages="structure,forward_eval")
    assert result.summary_line().startswith("FAILED: structure: alignment incomplete: 1 port module(s) shared by "
                                            "distinct reference layers (middle.0)"), result.summary_line()
    assert ("port module middle.0 is called 8 times for distinct reference layers block5_sepconv1, "
            "block6_sepconv1") in result.causes()[0].message


def test_several_outputs_with_a_port_returning_one_are_named_not_a_crash(float64):
    """Several outputs are compared (tests/parity/test_user_multi_output.py); a port that returns one of them
    is told what the reference returns."""
    inp = keras.Input((4,))
    km = keras.Model(inp, [keras.layers.Dense(2, name="a")(inp), keras.layers.Dense(3, name="b")(inp)])

    class OneOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x)

    result = compare(km, OneOutput(), stages="structure,forward_eval")
    assert not result.passed
    errors = " ".join(e for st in result.stages for e in st.errors)
    assert "expected the port to return its 2 outputs (a tuple in the Keras order a (2), b (3)" in errors, errors


def test_a_float64_pair_of_two_inputs_passes_when_compared_after_its_float64_block():
    """The reference is built under the float64 policy and compared after it (Keras' global policy back to
    float32): the layers that cut the packed input keep the model's float64, not the policy of the moment
    (they rounded the inputs to float32: max|Δ| 4.2e-08 at the first conv, a correct port FAILED)."""
    from tests.keras_dtype import keras_float64

    with keras_float64():
        km = user_zoo.keras_two_input()
    result = compare(km, user_zoo.port_two_input(), stages="structure,forward_eval")
    assert result.passed, result.summary_line()
