"""The Keras reference is mini_XCEPTION as published (oarriaga/face_classification, cnn.py)."""
import math

import pytest


def _counts(model):
    tr = sum(math.prod(w.shape) for w in model.trainable_weights)
    nt = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return tr + nt, tr, nt


@pytest.mark.parametrize("num_classes,expected", [
    (7, (58_423, 56_951, 1_472)),   # published FER2013 model
    (2, (52_658, 51_186, 1_472)),   # published gender model
])
def test_parameter_counts_match_published(num_classes, expected):
    from reference_keras.minixception import mini_xception

    assert _counts(mini_xception(num_classes=num_classes)) == expected


def test_spatial_sizes_and_layer_names_are_stable():
    from reference_keras.minixception import mini_xception

    m = mini_xception()
    shapes = {layer.name: tuple(layer.output.shape[1:3]) for layer in m.layers if "add" in layer.name}
    assert shapes == {"block1_add": (30, 30), "block2_add": (15, 15), "block3_add": (8, 8), "block4_add": (4, 4)}
    assert m.get_layer("base_conv1").output.shape[1:3] == (62, 62)
    assert m.layers[-1].name == "predictions" and m.layers[-1].get_config()["activation"] == "softmax"
    # only the two base convs carry L2(0.01) (Keras 2 ignored it on SeparableConv2D)
    regs = {layer.name for layer in m.layers if getattr(layer, "kernel_regularizer", None) is not None}
    assert regs == {"base_conv1", "base_conv2"}
