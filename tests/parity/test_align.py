"""Automatic alignment (parity.user.align): the registered pairs' hand-written taps are recovered from the models
alone; an extra or missing layer on either side is reported, never dropped, and the rest still aligns; pins
override; flatten order and functional ops are detected."""
from __future__ import annotations

import parity.core.env  # noqa: F401  (environment before the frameworks)

import pytest

from parity.pairs import registry
from parity.user.align import AlignmentError, align, parse_pins
from parity.core.spec import resolve

pytest.importorskip("keras")
torch = pytest.importorskip("torch")


def _mapping(taps):
    return {t.ref: (t.port, t.kind, t.port_transform, t.flatten_chw) for t in taps}


@pytest.mark.parametrize("name", registry.names())
def test_alignment_recovers_the_registered_taps(name):
    """Every registered pair: the alignment of its two models, built from nothing but the models, equals the
    pair's hand-written tap list (reference layer -> port module, kind, transform, flatten order)."""
    spec = registry.get(name)
    cfg = spec.config(**spec.fast_config)
    al = align(resolve(spec.reference)(**cfg), resolve(spec.port)(**cfg))
    assert _mapping(al.taps) == _mapping(spec.taps(cfg))
    assert not [r for r in al.rows if r.status.startswith("unaligned")], al.format()


@pytest.fixture(scope="module")
def user():
    from benchmarks import user_models

    return user_models


def test_extra_identity_in_the_port_is_reported_and_skipped(user):
    base = align(user.keras_cnn(), user.torch_cnn())
    al = align(user.keras_cnn(), user.torch_cnn_extra_identity())
    rows = {r.port: r for r in al.rows if r.ref is None}
    assert rows["extra"].status == "unaligned-port" and rows["extra"].kind == "activation"
    assert _mapping(al.taps) == _mapping(base.taps)


def test_extra_linear_activation_in_the_reference_is_reported(user):
    al = align(user.keras_cnn_extra_linear(), user.torch_cnn())
    row = next(r for r in al.rows if r.ref == "noop")
    assert row.status == "unaligned-ref" and row.port is None
    assert "noop" not in {t.ref for t in al.taps}
    assert _mapping(al.taps)["conv2"] == ("down", "conv2d", None, None)


def test_extra_dropout_in_the_port_is_reported(user):
    al = align(user.keras_cnn(), user.torch_cnn_extra_dropout())
    row = next(r for r in al.rows if r.port == "drop")
    assert row.status == "unaligned-port" and "dropout only in the port" in row.note
    assert _mapping(al.taps)["fc1"][0] == "hidden"


def test_user_cnn_alignment_table(user):
    """Different attribute names, a Sequential inside, a shortcut branch run after the main path, softmax in
    the loss: every layer aligned; flatten and the Dense after it carry the CHW (C, H, W)."""
    al = align(user.keras_cnn(), user.torch_cnn())
    m = _mapping(al.taps)
    assert m["conv1"] == ("features.0", "conv2d", None, None)
    assert m["bn1"] == ("features.1", "batchnorm", None, None)
    assert m["shortcut"] == ("skip", "conv2d", None, None)
    assert m["flatten"] == ("flat", "flatten", None, (16, 4, 4))
    assert m["fc1"] == ("hidden", "dense", None, (16, 4, 4))
    assert m["probs"] == ("", "softmax", "softmax", None)
    assert al.counts() == {"aligned": 13}
    assert all(r.score is None or r.score > 0.99 for r in al.rows)


def test_hwc_flatten_in_the_port_needs_no_reordering(user):
    from ported_torch.layers import FlattenHWC

    port = user.torch_cnn()
    port.flat = FlattenHWC()
    m = _mapping(align(user.keras_cnn(), port).taps)
    assert m["flatten"][3] is None and m["fc1"][3] is None


def test_sequential_with_automatic_names(user):
    al = align(user.keras_sequential(), user.torch_sequential())
    kinds = [(t.port, t.kind) for t in al.taps]
    assert kinds == [("0", "conv2d"), ("1", "batchnorm"), ("2", "activation"), ("3", "maxpool"), ("4", "flatten"),
                     ("5", "dense")]
    assert al.taps[-1].flatten_chw == (4, 5, 5)


def test_pins_override_and_bad_pins_say_what_to_do(user):
    al = align(user.keras_cnn(), user.torch_cnn(), pins=["relu2=hidden_act"])
    row = next(r for r in al.rows if r.ref == "relu2")
    assert (row.port, row.status) == ("hidden_act", "pinned")
    with pytest.raises(AlignmentError, match=r"--align conv9=down: expected a layer of the reference model\. "
                                             r"Received: 'conv9', which it does not have\. "
                                             r"Did you mean conv2, conv1\?"):
        align(user.keras_cnn(), user.torch_cnn(), pins=["conv9=down"])
    with pytest.raises(AlignmentError, match=r"expected a module path of the port that runs in forward\. "
                                             r"Received: 'dwn'\. Did you mean down"):
        align(user.keras_cnn(), user.torch_cnn(), pins=["conv2=dwn"])
    with pytest.raises(AlignmentError, match=r"--align: expected REF_LAYER=PORT\.MODULE\.PATH"):
        parse_pins(["conv2"])


def test_functional_op_in_the_port_holds_its_place(user):
    """``torch.add`` in forward instead of an Add module: the reference's Add is matched to the functional op
    (no tap there) and every other layer still aligns."""
    port = user.torch_cnn()

    class FunctionalAdd(type(port)):
        def forward(self, x):
            y = self.down_act(self.down(self.features(x)))
            y = torch.add(y, self.skip(x))
            y = self.flat(self.pool(y))
            return self.classifier(self.hidden_act(self.hidden(y)))

    al = align(user.keras_cnn(), FunctionalAdd())
    row = next(r for r in al.rows if r.ref == "add")
    assert row.status == "functional" and "add" not in {t.ref for t in al.taps}
    assert al.traced_with == "torch.fx + hooks"
    assert _mapping(al.taps)["pool"] == ("pool", "maxpool", None, None)


def test_two_separate_convs_for_a_separable_conv_are_one_group():
    """A Keras SeparableConv2D <-> a grouped 3x3 conv feeding a 1x1 conv (an nn.Sequential, no names): one
    group, the converter's keys, the depthwise and pointwise paths named."""
    import keras
    from torch import nn

    from parity.core.conventions import KERAS_BN_EPSILON

    inp = keras.Input((8, 8, 4))
    x = keras.layers.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep")(inp)
    out = keras.layers.BatchNormalization(epsilon=KERAS_BN_EPSILON, name="bn")(x)
    ref = keras.Model(inp, out)
    port = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Conv2d(4, 6, 1, bias=False),
                         nn.BatchNorm2d(6, eps=KERAS_BN_EPSILON))
    al = align(ref, port)
    sep = next(r for r in al.rows if r.ref == "sep")
    assert (sep.port, sep.status) == ("0+1", "aligned") and "0 + 1" in sep.note
    assert al.groups == {"0+1": ("0", "1")}
    assert not [r for r in al.rows if r.status.startswith("unaligned")], al.format()
    assert _mapping(al.taps) == {"sep": ("0+1", "separable_conv2d", None, None), "bn": ("2", "batchnorm", None, None)}


def test_a_depthwise_conv_with_two_consumers_is_not_a_separable_conv():
    """The pair is grouped by data flow: a depthwise conv whose output also feeds something else is not the
    first half of a separable conv, whatever the modules are called."""
    import keras
    from torch import nn

    inp = keras.Input((8, 8, 4))
    x = keras.layers.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep")(inp)
    ref = keras.Model(inp, x)

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
            self.pw = nn.Conv2d(4, 6, 1, bias=False)
            self.side = nn.Conv2d(4, 6, 1, bias=False)

        def forward(self, x):
            y = self.dw(x)
            return self.pw(y) + self.side(y)

    al = align(ref, Port())
    assert not al.groups
    assert next(r for r in al.rows if r.ref == "sep").status == "unaligned-ref"
