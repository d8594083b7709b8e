"""The Xception port: parameter counts against the published ones, the bug switches of its public
constructor, and a float64 forward equal to keras.applications.Xception layer by layer after a weight copy."""
from __future__ import annotations

import parity.core.env  # noqa: F401

import numpy as np
import pytest
import torch

from parity.core.conventions import KERAS_BN_EPSILON, TORCH_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS
from parity.pairs.xception import SPEC
from ported_torch.inspect import param_counts
from ported_torch.xception import MIDDLE_BLOCKS, xception
from tests.ported_torch.pair_forward import build_float64, copy_weights, randomize_bn, tap_diffs

FAST = SPEC.fast_config
#: float64 after an exact weight copy: measured max |diff| 4.0e-15 (exit/block13/residual/bn) over the 133
#: taps at 75x75, 2.8e-17 on the softmax output.
FLOAT64_ATOL = 1e-12


def test_param_counts_reconcile_with_keras():
    """torch trainable parameters == Keras trainable; BN running_mean/var buffers == Keras non-trainable;
    num_batches_tracked (one int per BN, 40 BNs) is torch-only bookkeeping, outside both counts."""
    counts = param_counts(xception())
    pub = SPEC.published_params
    assert counts["trainable"] == pub["trainable"] == 22_855_952
    assert counts["buffers"] == counts["non_trainable"] == pub["non_trainable"] == 54_528
    assert counts["total"] == pub["total"] == 22_910_480
    assert counts["num_batches_tracked"] == 40
    assert param_counts(xception(include_top=False))["total"] == 20_861_480


def test_shared_middle_has_one_block_of_parameters():
    faithful, shared = xception(**FAST), xception(**FAST, shared_middle=True)
    block = param_counts(faithful.middle[0])
    assert len(MIDDLE_BLOCKS) == 8 and block["trainable"] == 3 * (728 * 9 + 728 * 728 + 2 * 728)
    for key in ("trainable", "buffers"):
        assert param_counts(faithful)[key] - param_counts(shared)[key] == 7 * block[key]
    assert all(b is shared.middle[0] for b in shared.middle)
    assert len({id(b) for b in faithful.middle}) == 8


def test_bug_switches_build_through_the_public_constructor():
    base = param_counts(xception(**FAST))
    biased = param_counts(xception(**FAST, conv_bias=True))
    # one bias per output channel: stem 32+64, shortcuts 128+256+728+1024, separable (pointwise) convs
    # 128*2 + 256*2 + 728*2 + 8*3*728 + 728+1024 + 1536+2048
    assert biased["trainable"] - base["trainable"] == 27_264
    no_bn = xception(**FAST, missing_bn="middle.2.sepconv2_bn")
    assert isinstance(no_bn.middle[2].sepconv2_bn, torch.nn.Identity)
    assert param_counts(no_bn)["trainable"] == base["trainable"] - 2 * 728
    assert isinstance(xception(**FAST, missing_bn=True).entry.block3.sepconv2_bn, torch.nn.Identity)
    with pytest.raises(ValueError, match="expected the dotted path of a BatchNorm2d"):
        xception(**FAST, missing_bn="entry.block3.sepconv2")
    eps = xception(**FAST, bn_eps=TORCH_BN_EPSILON)
    assert {m.eps for m in eps.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {TORCH_BN_EPSILON}
    faithful = xception(**FAST)
    assert {(m.eps, m.momentum) for m in faithful.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {
        (KERAS_BN_EPSILON, TORCH_BN_MOMENTUM_FROM_KERAS)}
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in faithful.modules())


@pytest.mark.parametrize("size,differs", [(71, False), (75, True)])
def test_symmetric_pool_is_visible_at_the_fast_size_only_if_a_pool_input_is_even(size, differs):
    """At 71 every pool input is odd (33, 17, 9, 5): TF 'same' pads 1/1 and MaxPool2d(3, 2, padding=1) is the
    same op. At 75 (35, 18, 9, 5, like 299's 147, 74, 37, 19) block3's even input exposes it."""
    torch.manual_seed(0)
    good = xception((size, size, 3), 10).double().eval()
    bad = xception((size, size, 3), 10, symmetric_pool=True).double().eval()
    bad.load_state_dict(good.state_dict())
    x = torch.rand(1, 3, size, size, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        diff = (good.entry(x) - bad.entry(x)).abs().max().item()
    assert (diff > 1e-3) == differs, diff


#: the CIFAR-style variant: nearest UpSampling2D x3 in front (24 -> 72 here to stay fast; 32 -> 96 for CIFAR-10)
UPSAMPLED = {**FAST, "input_shape": (24, 24, 3), "upsample": 3}


@pytest.mark.parametrize("config", [FAST, UPSAMPLED], ids=["fast", "upsampled"])
def test_float64_forward_equals_reference_at_every_tap(config):
    ref, port = build_float64(SPEC, config)
    rng = np.random.default_rng(0)
    randomize_bn(ref, rng)
    report = copy_weights(SPEC, config, ref, port)
    assert report.ok
    x = rng.uniform(-1.0, 1.0, (SPEC.default_batch, *config["input_shape"]))
    diffs = tap_diffs(SPEC, config, ref, port, x)
    assert len(diffs) == 133 + bool(config.get("upsample"))
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= FLOAT64_ATOL, (worst, diffs[worst])
