"""The loaded-port stages on a side lane (``parity.stages.lane.SideLane``): the eval forward, the structure and the
isolated layers over a copy of the port on a thread of their own while the training stages run — the same
numbers, findings and draws from torch's generator as in line, in line wherever that would not hold, its errors
raised by the check, and stopped at once when a stage fails."""
from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest

from parity import harness
from parity.backends.torch_side import TorchSide
from parity.core import background, buffers
from parity.core.spec import resolve
from parity.pairs import registry
from parity.stages import isolated, lane, structure, train
from parity.stages.context import CheckContext

torch = pytest.importorskip("torch")
SPEC = registry.get("minixception")
STAGE = isolated.isolated_stage  # (the tests below wrap it)
FORWARD_EVAL = TorchSide.forward_eval
SHARED = structure.shared_module_findings
STAGES = "forward_eval,isolated,forward_train,gradients,step"
ALL = "structure,forward_eval,isolated,forward_train,gradients,step"


def _numbers(result):
    return {(st.name, t.path): repr(dataclasses.asdict(t)) for st in result.stages for t in st.tensors}


def _findings(result):
    return [(f.cause, f.path, f.stage, f.severity, f.message) for f in result.findings]


@pytest.fixture(scope="module")
def mini_run():
    """mini_XCEPTION's reference run (fast config, every stage), shared by the checks below (a reference run
    passed to a check is read, never changed)."""
    pytest.importorskip("keras")
    from parity.backends.keras_side import run_reference
    from parity.core.options import optimizer_spec

    return run_reference(SPEC, config=SPEC.config(**SPEC.fast_config), dtype="float64", seed=0, batch=4,
                         optimizer=optimizer_spec(SPEC, None), steps=1, stages=set(ALL.split(",")))


def _spied(monkeypatch, lane_on: bool):
    """Two CPUs (the lane) or one (in line) whatever this machine has; returns {stage: [thread names]} filled
    by spies on the eval forward, the structure stage and the isolated stage."""
    monkeypatch.setattr(lane, "_cpus", lambda: 2 if lane_on else 1)
    threads = {"forward_eval": [], "structure": [], "isolated": []}

    def forward_eval(self, *a, **kw):
        threads["forward_eval"].append(threading.current_thread().name)
        return FORWARD_EVAL(self, *a, **kw)

    def shared(ctx):
        threads["structure"].append(threading.current_thread().name)
        return SHARED(ctx)

    def iso(ctx, *a, **kw):
        threads["isolated"].append(threading.current_thread().name)
        return STAGE(ctx, *a, **kw)

    monkeypatch.setattr(TorchSide, "forward_eval", forward_eval)
    monkeypatch.setattr(structure, "shared_module_findings", shared)
    monkeypatch.setattr(isolated, "isolated_stage", iso)
    return threads


def _both(monkeypatch, run_check):
    """``run_check()`` in line, then on a lane: ({False: result, True: result}, {False: threads, True: ...})."""
    results, threads = {}, {}
    for on in (False, True):
        threads[on] = _spied(monkeypatch, on)
        results[on] = run_check()
    return results, threads


def test_the_side_lane_gives_the_numbers_and_findings_of_the_stages_in_line(monkeypatch, mini_run):
    said = {False: [], True: []}
    results, threads = _both(monkeypatch, lambda: harness.check(
        SPEC, reference_run=mini_run, stages=ALL, progress=said[len(said[False]) > 0].append))
    in_line, on_lane = results[False], results[True]
    assert threads[False] == {"forward_eval": ["MainThread"], "structure": ["MainThread"], "isolated": ["MainThread"]}
    assert threads[True] == {"forward_eval": ["parity-lane"], "structure": ["parity-lane"], "isolated": ["parity-lane"]}
    assert "port: forward (eval)" in said[False] and "port: isolated layers" in said[False]
    assert ("port: forward (eval), structure and isolated layers on a second core, alongside training"
            in said[True])
    assert in_line.passed and on_lane.passed
    assert [st.name for st in on_lane.stages] == [st.name for st in in_line.stages]
    assert {st.name for st in on_lane.stages} == set(ALL.split(","))
    iso = on_lane.stage("isolated")
    assert len(iso.tensors) > 10 and not iso.errors
    assert _numbers(on_lane) == _numbers(in_line)  # every field of every tensor of every stage
    assert _findings(on_lane) == _findings(in_line)
    assert on_lane.stage("structure").info == in_line.stage("structure").info
    assert on_lane.environment["loaded_port_stages"] == "on a second core, alongside training"
    assert buffers.POOL.free_bytes == 0  # a check alone keeps no recycled buffers (parity.core.buffers)


def test_a_failing_port_with_a_shared_block_gets_the_same_verdict_and_causes_on_the_lane(monkeypatch):
    """Xception with the list-multiplication bug (one middle block called 8 times) and a BatchNorm eps of 1e-5:
    the structure stage counts the calls on the lane's copy, the diagnosis probes the check's port, and both name
    the causes the in-line check names."""
    pytest.importorskip("keras")
    from parity.backends.keras_side import run_reference
    from parity.core.options import optimizer_spec

    spec = registry.get("xception")
    run = run_reference(spec, config=spec.config(**spec.fast_config), dtype="float64", seed=0, batch=2,
                        optimizer=optimizer_spec(spec, None), steps=1, stages=set(ALL.split(",")))
    build = resolve(spec.port)

    def port(**kw):
        return build(**kw, shared_middle=True, bn_eps=1e-5)

    results, threads = _both(monkeypatch, lambda: harness.check(spec, reference_run=run, stages=ALL, port=port))
    assert threads[True]["structure"] == ["parity-lane"]
    assert not results[True].passed and not results[False].passed
    causes = {f.cause for f in results[True].findings}
    assert {"shared_module", "bn_eps"} <= causes, causes
    assert _findings(results[True]) == _findings(results[False])
    assert _numbers(results[True]) == _numbers(results[False])
    assert str(results[True]) == str(results[False])


def _noisy(**kw):
    """mini_XCEPTION with noise drawn from torch's generator after its first block, in eval mode too (a port
    that hard-codes ``F.dropout(x, training=True)`` draws alike)."""
    m = resolve(SPEC.port)(**kw)
    first = next(mod for _, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d))
    first.register_forward_hook(lambda mod, inp, out: out + 1e-3 * torch.randn_like(out))
    return m


def test_a_port_drawing_random_numbers_in_eval_draws_the_same_numbers_on_the_lane(monkeypatch, mini_run):
    """The lane's first draw waits for the training stages, then draws from the state they started from: the
    eval forward, the isolated layers and the training stages see the draws they see in line."""
    results, threads = _both(monkeypatch, lambda: harness.check(SPEC, reference_run=mini_run, stages=ALL,
                                                                port=_noisy))
    assert threads[True]["forward_eval"][0] == "parity-lane"
    assert not results[True].passed
    assert _numbers(results[True]) == _numbers(results[False])
    assert _findings(results[True]) == _findings(results[False])
    assert any(f.cause == "eval_randomness" or "random" in f.message for f in results[True].findings)


def test_the_training_stages_start_from_the_generator_state_after_the_build(monkeypatch, mini_run):
    """Whatever the eval forward drew: the training's numbers of a noisy port are those of a check without the
    eval-mode stages (in line)."""
    monkeypatch.setattr(lane, "_cpus", lambda: 1)
    with_eval = harness.check(SPEC, reference_run=mini_run, stages="forward_eval,forward_train,gradients",
                              port=_noisy)
    alone = harness.check(SPEC, reference_run=mini_run, stages="forward_train,gradients", port=_noisy)
    train_numbers = {k: v for k, v in _numbers(with_eval).items() if k[0] != "forward_eval"}
    assert train_numbers and train_numbers == _numbers(alone)


def _forward_closure(**kw):
    """A ``forward`` assigned as a closure over the module (``copy.deepcopy`` copies a function as is: the copy's
    forward calls the original's modules)."""
    m = resolve(SPEC.port)(**kw)
    m.forward = lambda x: type(m).forward(m, x)
    return m


def _weight_closure(**kw):
    """A conv whose ``forward`` reads the original's weight (a module of the copy would compute with the port's
    weight, which the training stages change meanwhile)."""
    import torch.nn.functional as F

    m = resolve(SPEC.port)(**kw)
    c = next(mod for _, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d))
    c.forward = lambda x: F.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
    return m


@pytest.mark.parametrize("port, where", [(_forward_closure, "Xception.forward"), (_weight_closure, "conv")],
                         ids=["forward closure", "weight read in a closure"])
def test_a_port_whose_closures_a_copy_would_share_runs_the_stages_in_line(port, where, monkeypatch, mini_run):
    """``copy.deepcopy`` copies a function as it is: a port holding a closure over its modules runs the stages in
    line (the copy would call the modules the training changes); a correct one passes, with the numbers in line."""
    results, threads = _both(monkeypatch, lambda: harness.check(SPEC, reference_run=mini_run, stages=ALL,
                                                                port=port))
    assert threads[True] == threads[False] == {"forward_eval": ["MainThread"], "structure": ["MainThread"],
                                                "isolated": ["MainThread"]}
    note = results[True].environment["loaded_port_stages"]
    assert note.startswith("in line: ") and "captured objects a copy of the port would share" in note
    assert where in note, note
    assert results[True].passed and results[False].passed
    assert _numbers(results[True]) == _numbers(results[False])


def test_closures_that_share_nothing_keep_the_lane():
    """Captured numbers, strings, dtypes, classes and functions of such are copied safely: not listed."""
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    scale, name, dtype = 2.0, "x", torch.float64

    def helper(t):
        return t * scale

    m[1].register_forward_hook(lambda mod, i, o: helper(o) if name else o.to(dtype))
    m[0].register_forward_pre_hook(TorchSide.__init__.__get__)  # a bound method: copied with its object
    assert lane.closures_sharing_state(m) == []
    feats = {}
    m[1].register_forward_hook(lambda mod, i, o: feats.setdefault("relu", o))
    assert lane.closures_sharing_state(m) == ["1._forward_hooks"]


def test_the_lane_stops_before_its_first_call_of_a_port_module():
    """A module of the port without parameters (nothing for the tensor check to see) called on the lane: its hooks
    (the training's taps) never see the lane's call."""
    from parity.core.results import CheckResult

    port = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 2)).double()
    ts = TorchSide(port, [], dtype="float64")
    ctx = CheckContext(spec=SPEC, stages=set(), dtype="float64", device="cpu", seed=0, batch=2, optimizer=None,
                       steps=1, store=None, ts=ts, result=CheckResult(pair="p", dtype="float64", device="cpu", seed=0,
                                                                      batch=2, optimizer={}, config={}))
    seen, done = [], []
    twin = ts.twin()
    port[0].register_forward_hook(lambda m, i, o: seen.append(threading.current_thread().name))  # the port's only

    def stage(c):
        c.ts.module(torch.ones(1, 2, dtype=torch.float64))  # the copy's own modules
        done.append("copy")
        port[0](torch.ones(2))  # the port's ReLU
        done.append("port")

    side = lane.SideLane(ctx, twin, (stage,), torch.random.get_rng_state())
    assert side.finish(ctx) is False
    assert done == ["copy"] and seen == [] and "ReLU" in side.leak
    port(torch.ones(1, 2, dtype=torch.float64))  # the process's module hook is gone with the lane
    assert seen == ["MainThread"]


def test_the_lane_stops_before_its_first_operation_on_a_port_tensor():
    """A function held elsewhere reading the port's weight on the lane: stopped before the operation runs."""
    from parity.core.results import CheckResult

    port = torch.nn.Linear(2, 2).double()
    ts = TorchSide(port, [], dtype="float64")
    ctx = CheckContext(spec=SPEC, stages=set(), dtype="float64", device="cpu", seed=0, batch=2, optimizer=None,
                       steps=1, store=None, ts=ts, result=CheckResult(pair="p", dtype="float64", device="cpu", seed=0,
                                                                      batch=2, optimizer={}, config={}))
    done = []

    def stage(c):
        c.ts.module.weight * 2  # the copy's own weight
        done.append("copy")
        torch.nn.functional.linear(torch.ones(1, 2, dtype=torch.float64), port.weight[:, :1].t().t().expand(2, 2))
        done.append("port")

    side = lane.SideLane(ctx, ts.twin(), (stage,), torch.random.get_rng_state())
    assert side.finish(ctx) is False and done == ["copy"] and "read a tensor of the check's port" in side.leak


def test_a_port_that_cannot_be_copied_runs_the_stages_in_line(monkeypatch, mini_run):
    def refuse(self):
        raise RuntimeError("Only Tensors created explicitly by the user support the deepcopy protocol")

    threads = _spied(monkeypatch, True)
    monkeypatch.setattr(TorchSide, "twin", refuse)
    r = harness.check(SPEC, reference_run=mini_run, stages=STAGES)
    assert r.passed and threads["isolated"] == ["MainThread"] and threads["forward_eval"] == ["MainThread"]
    assert any(st.name == "isolated" and st.tensors for st in r.stages)


def test_an_error_on_the_lane_is_raised_by_the_check_and_the_port_is_restored(monkeypatch, mini_run):
    monkeypatch.setattr(lane, "_cpus", lambda: 2)
    restored = []
    real_restore = TorchSide.restore
    monkeypatch.setattr(TorchSide, "restore", lambda self, snap: (restored.append(1), real_restore(self, snap)))

    def boom(ctx, **kw):
        raise OSError("spill file vanished")

    monkeypatch.setattr(isolated, "isolated_stage", boom)
    with pytest.raises(OSError, match="spill file vanished"):
        harness.check(SPEC, reference_run=mini_run, stages=STAGES)
    assert restored == [1]


def test_a_failing_stage_stops_the_lane_at_its_next_operation(monkeypatch, mini_run):
    """A training stage that raises (or Ctrl-C) does not wait for the lane: its next torch operation raises
    ``LaneCancelled`` (not an ``Exception``: a port's ``except Exception`` does not swallow it)."""
    monkeypatch.setattr(lane, "_cpus", lambda: 2)
    seen, started = {}, threading.Event()

    def busy(ctx, **kw):
        started.set()
        try:
            for _ in range(10 ** 7):  # minutes of small torch operations, unless stopped
                try:
                    torch.zeros(2) + 1
                except Exception:  # noqa: BLE001 - a port's own handler
                    seen["swallowed"] = True
        except lane.LaneCancelled:
            seen["cancelled"] = time.perf_counter()
            raise
        return STAGE(ctx, **kw)

    def interrupted(ctx):
        assert started.wait(30)
        seen["raised"] = time.perf_counter()
        raise KeyboardInterrupt

    monkeypatch.setattr(isolated, "isolated_stage", busy)
    monkeypatch.setattr(harness, "PIPELINE", tuple(interrupted if f is train.run else f for f in harness.PIPELINE))
    with pytest.raises(KeyboardInterrupt):
        harness.check(SPEC, reference_run=mini_run, stages=STAGES)
    assert "swallowed" not in seen and seen["cancelled"] - seen["raised"] < 5.0
    assert not any(t.name == lane.LANE_THREAD for t in threading.enumerate())


def _ctx(**kw):
    module = torch.nn.Linear(4, 3)
    ts = SimpleNamespace(device=torch.device("cpu"), module=module)
    base = dict(spec=SPEC, stages={"isolated", "forward_train"}, dtype="float64", device="cpu", seed=0, batch=2,
                optimizer=None, steps=1, store=None, ts=ts)
    return CheckContext(**(base | kw))


@pytest.mark.parametrize("change, says", [
    ({}, None),
    ({"stages": {"structure", "gradients"}}, None),
    ({"onnx": True}, "--onnx"),
    ({"stages": {"isolated", "forward_eval"}}, "no training stage"),
    ({"stages": {"forward_train", "step"}}, "no loaded-port stage"),
])
def test_where_the_stages_stay_in_line(change, says, monkeypatch):
    monkeypatch.setattr(lane, "_cpus", lambda: 2)
    why = lane.lane_refusal(_ctx(**change))
    assert (why is None) if says is None else (says in why)


def test_one_cpu_a_gpu_a_large_port_and_parity_background_0_stay_in_line(monkeypatch):
    monkeypatch.setattr(lane, "_cpus", lambda: 1)
    assert lane.lane_refusal(_ctx()) == "one CPU"
    monkeypatch.setattr(lane, "_cpus", lambda: 2)
    gpu = _ctx()
    gpu.ts.device = SimpleNamespace(type="cuda", __str__=lambda self: "cuda:0")
    assert "runs on" in lane.lane_refusal(gpu)
    monkeypatch.setattr(lane, "SIDE_LANE_MAX_BYTES", 10)
    assert "weights take" in lane.lane_refusal(_ctx())
    monkeypatch.setenv(background.BACKGROUND_ENV, "0")
    assert lane.lane_refusal(_ctx()) == f"{background.BACKGROUND_ENV}=0"


def test_the_gate_holds_the_first_default_generator_draw_until_opened():
    """Draws from a generator of their own pass; the first from the default generator waits for ``open()``, then
    draws from the start state (the training's end state kept for ``finish``); ``stop`` ends the lane."""
    start = torch.random.get_rng_state()
    expected = torch.rand(3)  # what the start state draws first
    torch.rand(7)  # the training's draws: the state moves on
    main_state = torch.random.get_rng_state()
    stop = threading.Event()
    gate = lane._gate_class()(start, stop)
    got, order = {}, []

    def on_lane():
        with gate:
            got["own"] = torch.rand(2, generator=torch.Generator().manual_seed(1))
            order.append("own generator drew")
            got["default"] = torch.rand(3)
            order.append("default drew")

    t = threading.Thread(target=on_lane)
    t.start()
    time.sleep(0.3)
    assert order == ["own generator drew"]  # held at the first default draw
    torch.rand(1)  # this thread is not gated
    order.append("opened")
    after_main = torch.random.get_rng_state()
    gate.open()
    t.join(10)
    assert order == ["own generator drew", "opened", "default drew"]
    assert torch.equal(got["default"], expected)
    assert torch.equal(gate.main_state, after_main) and not torch.equal(after_main, main_state)
    stop.set()
    with pytest.raises(lane.LaneCancelled):
        with gate:
            torch.zeros(1)


def test_the_attention_calls_recorded_on_the_lane_are_the_ones_the_diagnosis_replays():
    """The eval forward's recorded attention calls (masks, flags) replace what the training forward recorded on the
    check's port: in line, the eval forward records first."""
    from parity.core.results import CheckResult

    ts = TorchSide(torch.nn.Linear(2, 2).double(), [], dtype="float64")
    ctx = CheckContext(spec=SPEC, stages=set(), dtype="float64", device="cpu", seed=0, batch=2, optimizer=None,
                       steps=1, store=None, ts=ts, result=CheckResult(pair="p", dtype="float64", device="cpu", seed=0,
                                                                      batch=2, optimizer={}, config={}))
    ts._attention_calls = {"attn": ((), {"need_weights": True})}  # as a training forward records it

    def stage(c):
        c.ts._attention_calls["attn"] = ((), {"need_weights": False})  # the eval forward's (the copy's own dict)

    side = lane.SideLane(ctx, ts.twin(), (stage,), torch.random.get_rng_state())
    assert side.finish(ctx) is True
    assert ts._attention_calls == {"attn": ((), {"need_weights": False})}


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
    from tests.parity import user_multi_output_models as M

    return {
        "named children": (Z.keras_mini_xception, Z.port_named_children),
        "nn.Sequential": (Z.keras_mini_xception, Z.port_sequential),
        "functional calls": (Z.keras_mini_xception, Z.port_functional),
        "in-place ReLUs": (Z.keras_mini_xception, Z.port_inplace),
        "two inputs": (Z.keras_two_input, Z.port_two_input),
        "attention, its mask an argument": (decoder_block, annotated_transformer_style),
        "two outputs, a dict": (M.keras_two_heads, M.port_dict),
    }


@pytest.mark.parametrize("style", ["named children", "nn.Sequential", "functional calls", "in-place ReLUs",
                                   "two inputs", "attention, its mask an argument", "two outputs, a dict"])
def test_ports_in_other_styles_give_the_same_numbers_on_the_lane(style, monkeypatch):
    """Ports other people write (``parity.compare``): the side lane's copy runs their modules (shared, functional,
    in place, several inputs, an attention module replayed with the mask argument its forward passed, several
    outputs returned as a dict) to the numbers of the stages in line, and they pass."""
    pytest.importorskip("keras")
    from parity.user.pair import compare
    from tests.keras_dtype import keras_float64

    ref_fn, port_fn = _user_styles()[style]
    with keras_float64():
        ref = ref_fn()

    def run():
        torch.manual_seed(0)
        return compare(ref, port_fn(), stages=ALL, batch=2)

    results, threads = _both(monkeypatch, run)
    for on in (False, True):
        assert threads[on]["isolated"] == ["parity-lane" if on else "MainThread"]
        assert threads[on]["forward_eval"][0] == ("parity-lane" if on else "MainThread")
    assert results[True].passed, results[True].findings
    assert _numbers(results[True]) == _numbers(results[False])
    assert _findings(results[True]) == _findings(results[False])
    assert any(st.name == "isolated" and st.tensors for st in results[True].stages)


@pytest.mark.parametrize("pair", ["textgru", "transformer"])
def test_recurrent_and_attention_pairs_give_the_same_numbers_on_the_lane(pair, monkeypatch):
    pytest.importorskip("keras")
    spec = registry.get(pair)
    results, threads = _both(monkeypatch, lambda: harness.check(spec, stages=ALL))
    assert threads[True]["isolated"] == ["parity-lane"]
    assert results[True].passed and _numbers(results[True]) == _numbers(results[False])
    assert _findings(results[True]) == _findings(results[False])
