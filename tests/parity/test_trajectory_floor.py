"""The trajectory judges each weight against its layer's largest weight, like gradients and updates: a conv bias
feeding a BatchNorm has an analytically zero gradient, Adam turns its rounding noise into steps of either sign,
and a purely relative test on that bias alone would fail a correct port (seen with a saved model whose biases
are the initial zeros). A real divergence of the same bias still fails."""
from __future__ import annotations

import pytest

from parity.cli import main
from tests.keras_dtype import keras_float64

INPUT = (8, 8, 2)
FILTERS = 4
CLASSES = 3


def keras_conv_bn(bias_offset: float = 0.0):
    import keras

    inp = keras.Input(INPUT)
    x = keras.layers.Conv2D(FILTERS, 3, use_bias=True, name="conv")(inp)  # bias initialised to zeros
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="fc")(x)
    return keras.Model(inp, out)


def port():
    from torch import nn

    return nn.Sequential(nn.Conv2d(INPUT[2], FILTERS, 3), nn.BatchNorm2d(FILTERS, eps=1e-3, momentum=0.01),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(FILTERS, CLASSES))


def port_bias_moved():
    """The same port whose conv bias trains at 100x the learning rate: a real difference in that bias."""
    import torch

    m = port()

    def hook(grad):
        return grad * 100.0 + 1e-3

    m[0].bias.register_hook(hook)
    torch.nn.init.zeros_(m[0].bias)
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import parity  # noqa: F401  (environment first)
    with keras_float64():
        path = tmp_path_factory.mktemp("traj") / "conv_bn.keras"
        keras_conv_bn().save(path)
    return str(path)


def _check(saved, port_fn, tmp_path, capsys):
    rc = main(["check", "--reference", saved, "--port", f"{__name__}:{port_fn}", "--optimizer", "adam",
               "--steps", "3", "--no-cache", "-q", "--out", str(tmp_path / "out")])
    return rc, capsys.readouterr()


def test_a_zero_bias_before_batchnorm_passes_the_adam_trajectory(saved, tmp_path, capsys):
    rc, cap = _check(saved, "port", tmp_path, capsys)
    assert rc == 0, cap.out[-2000:] + cap.err[-2000:]
    assert cap.out.strip().splitlines()[-1].startswith("PASSED")


def test_a_real_difference_in_that_bias_still_fails(saved, tmp_path, capsys):
    rc, cap = _check(saved, "port_bias_moved", tmp_path, capsys)
    assert rc == 1, cap.out[-2000:] + cap.err[-2000:]
    assert cap.out.strip().splitlines()[-1].startswith("FAILED")
