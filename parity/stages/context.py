"""What one check carries through its stages: the request (pair, stage set, dtype, seed, batch, optimizer,
steps), the two sides (the reference run and the port's :class:`parity.backends.torch_side.TorchSide`), the
spill store, the result being filled, the port's snapshot of its loaded weights, and the tolerance policy
resolved once for the check's dtype.

Each stage module (``parity.stages.structure``, ``forward``, ``isolated``, ``onnx``, ``train``) has a
``run(ctx)`` that reads what it needs from the context and appends its :class:`parity.core.results.StageResult`
to ``ctx.result``; :func:`parity.harness.check` builds the context and runs them in order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from parity.core.results import CheckResult
from parity.core.spec import OptimizerSpec, PairSpec, StageTolerance, Tap

TOLERANCE_STAGES = ("forward_eval", "forward_train", "bn_stats", "gradients", "step", "isolated", "trajectory")
"""The names the stages look their tolerance up under (``TolerancePolicy.for_stage``)."""

TRAIN_STAGES = frozenset({"forward_train", "gradients", "step"})
"""The stages that need the port in train mode (and a batch of at least 2 for BatchNorm)."""


def resolve_tolerances(spec: PairSpec, dtype: str) -> dict[str, StageTolerance]:
    """The pair's tolerance policy for ``dtype``, one entry per stage name."""
    return {name: spec.tolerance.for_stage(dtype, name) for name in TOLERANCE_STAGES}


def _quiet(msg: str) -> None:
    """The default progress callback: says nothing."""


@dataclass(eq=False)
class CheckContext:
    """One check's state (see the module docstring). The harness sets the request fields first, then ``ref``
    (the reference run or a recorded trace), then the port's fields (``ts``, ``snapshot``, ``result``,
    ``conversion``, ``tol``); the stages fill ``eval_shapes``, ``final`` and ``calls``."""

    spec: PairSpec
    stages: set[str]
    dtype: str
    device: str
    seed: int
    batch: int
    optimizer: OptimizerSpec
    steps: int
    store: Any  # parity.core.spill.SpillStore: what waits on disk instead of in memory
    config: dict = field(default_factory=dict)
    onnx: bool = False
    say: Callable[[str], None] = _quiet
    # -- the reference ---------------------------------------------------------------------------------------
    ref: Any = None  # parity.backends.keras_side.ReferenceRun (or a replayed trace)
    owned: bool = False  # the check ran the reference itself (a trace's data is never freed here)
    source: str = "keras"  # or "trace:<path>"
    # -- the port ------------------------------------------------------------------------------------------
    ts: Any = None  # parity.backends.torch_side.TorchSide
    snapshot: Any = None  # TorchSide.snapshot(): the loaded weights and mode, restored after the stages
    conversion: Any = None  # weight_converters.ConversionReport of the reference's weights -> the port
    result: CheckResult | None = None
    tol: dict[str, StageTolerance] = field(default_factory=dict)
    # -- filled by the eval-mode forward -------------------------------------------------------------------
    eval_shapes: dict | None = None  # {tap path: the port output's shape} (None: the forward did not run)
    final: Any = None  # the port's final output
    calls: dict | None = None  # {port module: times called in one forward}
    #: this context is a side lane's (``parity.stages.lane.SideLane``): its stages compare on its own thread (it
    #: is the second core already) and leave the releases to the check's context
    on_lane: bool = False
    #: where the eval forward, structure and isolated layers ran ("on a second core, alongside training", or "in
    #: line: <why>"), for the report's environment
    lane_note: str = ""

    @property
    def taps(self) -> list[Tap]:
        return self.ref.taps

    @functools.cached_property
    def path_of_layer(self) -> dict[str, str]:
        """{reference layer name: tap path}."""
        return {t.ref: t.path for t in self.taps}

    @functools.cached_property
    def tap_by_ref(self) -> dict[str, Tap]:
        """{reference layer name: its tap}."""
        return {t.ref: t for t in self.taps}

    @property
    def output_path(self) -> str:
        """The tap of the model's final output (the one whose port module is the whole model)."""
        return next((t.path for t in reversed(self.taps) if t.port == ""), self.taps[-1].path)

    @property
    def frees_reference(self) -> bool:
        """The reference's results are this check's own and held in memory: a stage may drop what no later
        stage reads (a spilled run's files go with the store; a trace's data belongs to its caller)."""
        return self.owned and self.ref.store is None

    def wants(self, *names: str) -> bool:
        """Whether any of the stages ``names`` was asked for."""
        return any(n in self.stages for n in names)

    def as_probe_dict(self) -> dict[str, Any]:
        """What the numeric diagnosis rules read to probe both sides (``parity.diagnosis.numeric_findings``)."""
        return {"loss": self.spec.loss.name, "final": self.final, "calls": self.calls,
                "output_path": self.output_path, "reference_run": self.ref, "torch_side": self.ts,
                "spec": self.spec, "taps": self.taps}
