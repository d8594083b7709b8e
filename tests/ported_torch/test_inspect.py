"""ported_torch.inspect: shared-module detection and Keras-comparable parameter counts."""
from __future__ import annotations

import parity.core.env  # noqa: F401

import torch
from torch import nn

from ported_torch.inspect import find_shared_modules, param_counts
from ported_torch.xception import xception

SMALL = {"input_shape": (71, 71, 3), "num_classes": 10}


def _x():
    return torch.zeros(1, 3, 71, 71)


def test_shared_middle_xception_is_reported_once_with_its_aliases():
    model = xception(**SMALL, shared_middle=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = find_shared_modules(model, _x())
    assert len(found) == 1  # middle.0's submodules are explained by middle.0 and not listed again
    (f,) = found
    assert f["path"] == "middle.0" and f["calls"] == 8
    assert f["params"] == 3 * (728 * 9 + 728 * 728 + 2 * 728)
    assert f["aliases"] == [f"middle.{i}" for i in range(8)]
    assert f["note"] == ("module `middle.0` called 8x in one forward (shared weights: 8 blocks' worth of "
                         "computation with 1 block of parameters)")
    assert model.training  # mode and BN statistics are left as found
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_faithful_xception_has_no_shared_modules():
    assert find_shared_modules(xception(**SMALL), _x()) == []


def test_one_layer_called_in_a_loop_and_a_reused_relu():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()  # reused, but has no parameters: harmless, not reported

        def forward(self, x):
            for _ in range(3):
                x = self.act(self.fc(x))
            return x

    (f,) = find_shared_modules(Loop(), torch.zeros(2, 4))
    assert (f["path"], f["calls"], f["params"], f["aliases"]) == ("fc", 3, 20, ["fc"])
    assert "3 layers' worth of computation with 1 layer of parameters" in f["note"]


def test_param_counts_split_like_keras():
    bn = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
    bn[0].weight.requires_grad_(False)
    assert param_counts(bn) == {"trainable": 16, "frozen": 216, "buffers": 16, "num_batches_tracked": 1,
                                "non_trainable": 232, "total": 248}
