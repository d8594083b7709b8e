"""The isolated stage on a side lane (``parity.stages.isolated.SideLane``): a copy of the port on a thread of its
own while the training stages run — the same numbers as in line, in line wherever that would not hold, and
its errors raised by the check."""
from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import pytest

from parity import harness
from parity.backends.torch_side import TorchSide
from parity.core import background, buffers
from parity.pairs import registry
from parity.stages import isolated
from parity.stages.context import CheckContext

torch = pytest.importorskip("torch")
SPEC = registry.get("minixception")
STAGE = isolated.isolated_stage  # (the tests below wrap it)
STAGES = "forward_eval,isolated,forward_train,gradients,step"


def _numbers(result):
    return {(st.name, t.path): repr(dataclasses.asdict(t)) for st in result.stages for t in st.tensors}


def _check(monkeypatch, *, lane: bool):
    """A check with the side lane forced on (two CPUs whatever this machine has) or off; returns (result,
    the names of the threads the isolated stage ran on, the progress messages)."""
    monkeypatch.setattr(isolated, "_cpus", lambda: 2 if lane else 1)
    threads, said = [], []

    def spy(ctx, *a, **kw):
        threads.append(threading.current_thread().name)
        return STAGE(ctx, *a, **kw)

    monkeypatch.setattr(isolated, "isolated_stage", spy)
    r = harness.check(SPEC, stages=STAGES, config=dict(SPEC.fast_config), progress=said.append)
    return r, threads, said


def test_the_side_lane_gives_the_numbers_of_the_stage_in_line(monkeypatch):
    pytest.importorskip("keras")
    in_line, t_in, said_in = _check(monkeypatch, lane=False)
    lane, t_lane, said_lane = _check(monkeypatch, lane=True)
    assert t_in == ["MainThread"] and t_lane == ["parity-isolated"]
    assert "port: isolated layers" in said_in
    assert "port: isolated layers (on a second core, alongside training)" in said_lane
    assert in_line.passed and lane.passed
    assert [st.name for st in lane.stages] == [st.name for st in in_line.stages]
    iso = next(st for st in lane.stages if st.name == "isolated")
    assert len(iso.tensors) > 10 and not iso.errors
    assert _numbers(lane) == _numbers(in_line)  # every field of every tensor of every stage
    assert buffers.POOL.free_bytes == 0  # a check alone keeps no recycled buffers (parity.core.buffers)


def test_a_port_that_cannot_be_copied_runs_the_stage_in_line(monkeypatch):
    pytest.importorskip("keras")

    def refuse(self):
        raise RuntimeError("Only Tensors created explicitly by the user support the deepcopy protocol")

    monkeypatch.setattr(TorchSide, "twin", refuse)
    r, threads, _ = _check(monkeypatch, lane=True)
    assert r.passed and threads == ["MainThread"]
    assert any(st.name == "isolated" and st.tensors for st in r.stages)


def test_an_error_on_the_lane_is_raised_by_the_check_and_the_port_is_restored(monkeypatch):
    pytest.importorskip("keras")
    monkeypatch.setattr(isolated, "_cpus", lambda: 2)
    restored = []
    real_restore = TorchSide.restore
    monkeypatch.setattr(TorchSide, "restore", lambda self, snap: (restored.append(1), real_restore(self, snap)))

    def boom(ctx, ts=None, **kw):
        raise OSError("spill file vanished")

    monkeypatch.setattr(isolated, "isolated_stage", boom)
    with pytest.raises(OSError, match="spill file vanished"):
        harness.check(SPEC, stages=STAGES, config=dict(SPEC.fast_config))
    assert restored == [1]


def test_a_failing_stage_stops_the_lane(monkeypatch):
    """A training stage that raises (or Ctrl-C) does not wait for the lane to finish its layers."""
    pytest.importorskip("keras")
    monkeypatch.setattr(isolated, "_cpus", lambda: 2)
    seen, started = {}, threading.Event()

    def slow(ctx, ts=None, *, in_line=False, stop=None):
        seen["stop"] = stop
        started.set()
        stop.wait(30)  # until cancelled
        return STAGE(ctx, ts, in_line=in_line, stop=stop)

    monkeypatch.setattr(isolated, "isolated_stage", slow)
    from parity.stages import train

    def interrupted(ctx):
        assert started.wait(30)
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "PIPELINE", tuple(interrupted if f is train.run else f for f in harness.PIPELINE))
    with pytest.raises(KeyboardInterrupt):
        harness.check(SPEC, stages=STAGES, config=dict(SPEC.fast_config))
    assert seen["stop"].is_set()
    assert not any(t.name == "parity-isolated" for t in threading.enumerate())


def _ctx(**kw):
    module = torch.nn.Linear(4, 3)
    ts = SimpleNamespace(device=torch.device("cpu"), module=module)
    base = dict(spec=SPEC, stages={"isolated", "forward_train"}, dtype="float64", device="cpu", seed=0, batch=2,
                optimizer=None, steps=1, store=None, ts=ts, eval_draws_random=False)
    return CheckContext(**(base | kw))


@pytest.mark.parametrize("change, says", [
    ({}, None),
    ({"onnx": True}, "--onnx"),
    ({"stages": {"isolated", "forward_eval"}}, "no training stage"),
    ({"eval_draws_random": True}, "draws random numbers"),
    ({"eval_draws_random": None}, "no eval forward"),
])
def test_where_the_stage_stays_in_line(change, says, monkeypatch):
    monkeypatch.setattr(isolated, "_cpus", lambda: 2)
    why = isolated.lane_refusal(_ctx(**change))
    assert (why is None) if says is None else (says in why)


def test_one_cpu_a_gpu_a_large_port_and_parity_background_0_stay_in_line(monkeypatch):
    monkeypatch.setattr(isolated, "_cpus", lambda: 1)
    assert isolated.lane_refusal(_ctx()) == "one CPU"
    monkeypatch.setattr(isolated, "_cpus", lambda: 2)
    gpu = _ctx()
    gpu.ts.device = SimpleNamespace(type="cuda", __str__=lambda self: "cuda:0")
    assert "runs on" in isolated.lane_refusal(gpu)
    monkeypatch.setattr(isolated, "SIDE_LANE_MAX_BYTES", 10)
    assert "weights take" in isolated.lane_refusal(_ctx())
    monkeypatch.setenv(background.BACKGROUND_ENV, "0")
    assert isolated.lane_refusal(_ctx()) == f"{background.BACKGROUND_ENV}=0"


def test_a_twin_shares_nothing_the_training_stages_change():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    shared = torch.nn.ReLU()
    m.add_module("again", shared)
    m.add_module("twice", shared)  # one module at two paths
    ts = TorchSide(m, [], dtype="float64")
    ts._attention_calls = {"x": ((), {})}
    tw = ts.twin()
    assert tw.module is not ts.module and set(tw.modules) == set(ts.modules)
    assert tw.modules["again"] is tw.modules["twice"] is not shared
    with torch.no_grad():
        ts.module[0].weight.add_(1.0)
        ts.module[1].running_mean.add_(1.0)
    assert not torch.equal(tw.module[0].weight, ts.module[0].weight)
    assert not torch.equal(tw.module[1].running_mean, ts.module[1].running_mean)
    tw.error = "x"
    assert ts.error is None and tw._attention_calls == ts._attention_calls
    assert tw._attention_calls is not ts._attention_calls


def _user_styles():
    """Ports written unlike this project's own, with their references: (reference builder, port builder)."""
    from benchmarks import user_zoo as Z
    from reference_keras.decoder import decoder_block
    from tests.families.test_attention_masks import annotated_transformer_style

    return {
        "named children": (Z.keras_mini_xception, Z.port_named_children),
        "nn.Sequential": (Z.keras_mini_xception, Z.port_sequential),
        "functional calls": (Z.keras_mini_xception, Z.port_functional),
        "in-place ReLUs": (Z.keras_mini_xception, Z.port_inplace),
        "two inputs": (Z.keras_two_input, Z.port_two_input),
        "attention, its mask an argument": (decoder_block, annotated_transformer_style),
    }


@pytest.mark.parametrize("style", ["named children", "nn.Sequential", "functional calls", "in-place ReLUs",
                                   "two inputs", "attention, its mask an argument"])
def test_ports_in_other_styles_give_the_same_numbers_on_the_lane(style, monkeypatch):
    """Ports other people write (``parity.compare``): the side lane's copy runs their modules (shared, functional,
    in place, several inputs, an attention module replayed with the mask argument its forward passed) to the
    numbers of the stage in line, and they pass."""
    pytest.importorskip("keras")
    from parity.user.pair import compare
    from tests.keras_dtype import keras_float64

    ref_fn, port_fn = _user_styles()[style]
    with keras_float64():
        ref = ref_fn()
    results = {}
    for lane in (False, True):
        monkeypatch.setattr(isolated, "_cpus", lambda lane=lane: 2 if lane else 1)
        threads = []

        def spy(ctx, *a, **kw):
            threads.append(threading.current_thread().name)
            return STAGE(ctx, *a, **kw)

        monkeypatch.setattr(isolated, "isolated_stage", spy)
        torch.manual_seed(0)
        results[lane] = compare(ref, port_fn(), stages=STAGES, batch=2)
        assert threads == (["parity-isolated"] if lane else ["MainThread"])
    assert results[True].passed, results[True].findings
    assert _numbers(results[True]) == _numbers(results[False])
    assert any(st.name == "isolated" and st.tensors for st in results[True].stages)


@pytest.mark.parametrize("pair", ["textgru", "transformer"])
def test_recurrent_and_attention_pairs_give_the_same_numbers_on_the_lane(pair, monkeypatch):
    pytest.importorskip("keras")
    spec = registry.get(pair)
    out = {}
    for lane in (False, True):
        monkeypatch.setattr(isolated, "_cpus", lambda lane=lane: 2 if lane else 1)
        out[lane] = harness.check(spec, stages=STAGES)
    assert out[True].passed and _numbers(out[True]) == _numbers(out[False])
