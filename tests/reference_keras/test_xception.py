"""The Xception reference is keras.applications.Xception itself, with stable layer names."""
from __future__ import annotations

import parity.core.env  # noqa: F401

import re

import pytest

from parity.pairs.xception import SPEC, taps
from reference_keras.xception import MIN_INPUT_SIZE, rename_layers, stable_names, xception

COUNTER_NAME = re.compile(r"^(conv2d|batch_normalization|add|input_layer)(_\d+)?$")


@pytest.fixture(scope="module")
def full():
    return xception()


def _split(model):
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return {"total": model.count_params(), "trainable": trainable, "non_trainable": non_trainable}


def test_published_param_counts(full):
    assert _split(full) == SPEC.published_params == {
        "total": 22_910_480, "trainable": 22_855_952, "non_trainable": 54_528}
    assert xception(include_top=False).count_params() == 20_861_480


def test_stable_names_do_not_depend_on_how_many_models_were_built(full):
    again = xception()
    names = [lay.name for lay in full.layers]
    assert names == [lay.name for lay in again.layers]
    assert not [n for n in names if COUNTER_NAME.match(n)]
    for n in (2, 3, 4, 13):
        for suffix in ("residual_conv", "residual_bn", "add"):
            assert f"block{n}_{suffix}" in names
    assert [f"block{n}_add" for n in range(2, 14)] == [n for n in names if n.endswith("_add")]
    assert names[0] == "image"


def test_architecture_is_keras_applications_unchanged():
    """keras.applications.Xception's own config, with only the counter names replaced, is ours."""
    import keras

    ours = xception((75, 75, 3), 10)
    theirs = keras.applications.Xception(weights=None, input_shape=(75, 75, 3), classes=10)
    cfg = theirs.get_config()
    renames = stable_names(cfg)
    assert set(renames.values()) >= {"block2_residual_conv", "block13_residual_bn", "block12_add", "image"}
    assert ours.get_config() == rename_layers(cfg, renames)
    assert ours.count_params() == theirs.count_params()


def test_smallest_input_and_cifar_upsampling():
    with pytest.raises(ValueError, match="at least 71x71"):
        xception((MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE - 1, 3), 10)
    small = xception((MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), 10)
    assert small.output_shape == (None, 10)
    cifar = xception((32, 32, 3), 10, upsample=3)
    assert [lay.name for lay in cifar.layers[:3]] == ["image", "upsample", "block1_conv1"]
    assert cifar.count_params() == small.count_params()


@pytest.mark.parametrize("config", [SPEC.default_config, {"include_top": False},
                                    {"include_top": False, "pooling": "avg"},
                                    {"input_shape": (32, 32, 3), "num_classes": 10, "upsample": 3}])
def test_taps_name_every_layer_in_order(config):
    cfg = SPEC.config(**config)
    model = xception(**cfg)
    assert [t.ref for t in taps(cfg)] == [lay.name for lay in model.layers[1:]]
