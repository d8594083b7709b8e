"""What a model pair is, as data (after timm's ``@register_model``): builders for each side, the taps
that align reference layers with port modules, the loss, the optimizer description, the tolerance policy
and the conventions it assumes. Adding a pair = one reference file + one port file + one ``register``.

Nothing here imports a framework: builders are referenced as ``"module:function"`` strings or callables
and resolved lazily, so ``parity list`` never pays for TensorFlow.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from parity.core.families import new_kinds, new_weighted_kinds

#: Tap kinds whose layers carry weights, and how the converter treats them (the layer families add theirs:
#: ``parity.core.families``).
WEIGHTED_KINDS = ("conv2d", "depthwise_conv2d", "separable_conv2d", "dense", "batchnorm") + new_weighted_kinds()
#: Every tap kind the harness knows (structure checks and diagnosis key on it).
TAP_KINDS = WEIGHTED_KINDS + (
    "activation", "maxpool", "avgpool", "add", "concat", "gap", "flatten", "softmax", "lrn", "dropout",
    "reshape", "output", "other",
) + tuple(k for k in new_kinds() if k not in WEIGHTED_KINDS)


@dataclass(frozen=True)
class Tap:
    """One aligned point: a reference (Keras) layer's output and the port (torch) module's output.

    ``path`` is the tensor path id used in every report (``block1/sepconv1/bn``); parameters get
    ``path:torch_name`` (``block1/sepconv1/bn:running_var``).
    ``ref`` is the Keras layer name. ``port`` is the dotted torch module path (``""`` = the whole model,
    i.e. the model output). ``port_transform`` is applied to the port tensor before comparison: ``"softmax"``
    when the reference ends in a softmax that, in the port, belongs to the loss (CrossEntropyLoss).
    ``flatten_chw`` for a Dense fed by a Flatten: the (C, H, W) shape before flattening, so the converter
    reorders the kernel rows from Keras' HWC flatten to torch's CHW flatten.
    """

    path: str
    ref: str
    port: str
    kind: str
    port_transform: str | None = None
    flatten_chw: tuple[int, int, int] | None = None

    def __post_init__(self):
        if self.kind not in TAP_KINDS:
            raise ValueError(f"Tap {self.path!r}: expected kind in {TAP_KINDS}. Received: {self.kind!r}.")

    @property
    def weighted(self) -> bool:
        return self.kind in WEIGHTED_KINDS


@dataclass(frozen=True)
class LossSpec:
    """The training loss, described once for both sides.

    ``name``: ``categorical_crossentropy`` (reference outputs probabilities, port outputs logits and uses
    ``F.cross_entropy``), ``mse``, ``l1_sum`` (Caffe ASUM: sum |pred - target| over batch and outputs).
    ``reduction``: ``mean`` or ``sum`` over the batch.
    """

    name: str = "categorical_crossentropy"
    reduction: str = "mean"
    #: the reference model outputs logits (no softmax layer): Keras loss with from_logits=True
    reference_from_logits: bool = False
    #: categorical_crossentropy only: Keras ``label_smoothing`` == torch ``F.cross_entropy(label_smoothing=)``
    label_smoothing: float = 0.0
    #: a model with several outputs: ``((LossSpec, width, loss_weight, output name), ...)`` in the Keras model's
    #: output order; the outputs (and targets) are concatenated along the last axis, and the loss is Keras'
    #: ``sum(loss_weight_i * loss_i)`` over them (keras/src/trainers/compile_utils.py ``CompileLoss``)
    parts: tuple = ()
    #: categorical_crossentropy only: the port returns probabilities like the reference (a softmax at the end of
    #: its forward, user mode): its loss is Keras' on probabilities (:data:`parity.core.conventions.
    #: KERAS_CE_ON_PROBABILITIES`), not ``F.cross_entropy`` on logits
    port_probabilities: bool = False


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer description; :mod:`parity.optim.adapters` builds the Keras and torch optimizers from it
    with named conversion rules.

    ``l2``: Keras kernel regularisers (``{keras_layer: lam}``): the reference adds them to its loss, the
    port gets coupled ``weight_decay = 2 * lam`` on those parameters
    (``parity.core.conventions.torch_weight_decay_from_keras_l2``).
    ``lr_mult`` / ``decay_mult``: Caffe-style per-parameter multipliers, keyed by ``"layer"`` or
    ``"layer:kernel"`` / ``"layer:bias"`` (reference names).
    ``lr_schedule``: learning rate per step for multi-step checks (defaults to ``lr`` every step).
    """

    kind: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    l2: dict[str, float] = field(default_factory=dict)
    lr_mult: dict[str, float] = field(default_factory=dict)
    decay_mult: dict[str, float] = field(default_factory=dict)
    lr_schedule: tuple[float, ...] = ()

    def replace(self, **kw) -> "OptimizerSpec":
        return dataclasses.replace(self, **kw)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        if self.lr_schedule:
            return self.lr_schedule[min(step, len(self.lr_schedule) - 1)]
        return self.lr


@dataclass(frozen=True)
class StageTolerance:
    """Elementwise (default): a tensor passes when every ``|ref - port| <= atol + rtol * scale``, with
    ``scale = max|ref|`` of that tensor.

    Norm-wise (``norm_rtol`` set; the float32 policy for gradients and updates): it passes when
    ``||ref - port||_2 <= norm_rtol * ||ref||_2``. Why: in float32, a max-pool window whose two largest inputs
    tie within rounding routes its gradient to a different element in each framework, and float32 sums
    over N*H*W terms differ in order; measured on mini_XCEPTION over seeds 0-7, single elements of input and
    parameter gradients differ by up to 0.3 x scale while the cosine stays >= 0.99989. No elementwise rtol
    separates that from a bug; a bug moves the whole tensor. float64 (the default) stays elementwise.

    Sign noise (``sign_noise`` set; the float32 policy of the step stage): an optimizer whose update is
    normalised per element (Adam: ``m / (sqrt(v) + eps)``, about +-lr whatever the gradient's size) turns a
    gradient element near zero whose sign float32 rounding flips into an update difference of about 2 x lr, as
    large as the update itself. Such elements are not judged, and counted in the tensor's note: those where the
    optimizer's sign slot (the first moment, ``OptimizerAdapter.sign_slot``) differs between the two sides and
    ``|m_ref| <= sign_noise x max(|m_ref - m_port|, FLOAT32_EPS x max|m_ref|)``, i.e. its value is within
    ``sign_noise`` times its own measured float32 noise. float64 has no sign noise: every element is judged.

    Resync (``resync`` set; the float32 policy of the step stage over several steps): after each judged step the
    port's weights and optimizer slots take the reference's values, so step ``k`` is judged from the same
    weights on both sides, on its own. Why: the model amplifies a weight difference into a gradient difference,
    and step 1's float32 gradient noise (norm-wise <= 2% on mini_XCEPTION) leaves weights that differ by up to
    5.5e-4 relative; step 2's gradient from those two weight sets differs by up to 0.28 norm-wise -- as much in
    float64 arithmetic from the same two weight sets, so it is the weights' divergence, not step 2's rounding.
    The trajectory then shows each step's own divergence, and says so. float64 never resyncs (its steps agree
    to ~1e-13 and any growth is a finding)."""

    rtol: float
    atol: float = 0.0
    norm_rtol: float | None = None
    sign_noise: float | None = None
    resync: bool = False

    def allowed(self, scale: float) -> float:
        return self.atol + self.rtol * scale


@dataclass(frozen=True)
class TolerancePolicy:
    """Per dtype, per stage tolerances. Stages: ``forward_eval``, ``forward_train``, ``bn_stats``,
    ``gradients``, ``step``, ``isolated``, ``trajectory``."""

    float64: dict[str, StageTolerance]
    float32: dict[str, StageTolerance]
    note: str = ""

    def for_stage(self, dtype: str, stage: str) -> StageTolerance:
        table = self.float64 if dtype == "float64" else self.float32
        return table.get(stage) or table["default"]


#: float64 default: after an exact weight copy eval agrees to ~1e-16, gradients to ~1e-10 and one SGD step
#: to ~1e-11 (measured on mini_XCEPTION after an exact weight copy, `parity check minixception`). Every stage stays at or under
#: a 1e-8-relative bound.
FLOAT64_POLICY = {
    "default": StageTolerance(rtol=1e-10, atol=1e-300),
    "forward_eval": StageTolerance(rtol=1e-10, atol=1e-300),
    "forward_train": StageTolerance(rtol=1e-10, atol=1e-300),
    "bn_stats": StageTolerance(rtol=1e-10, atol=1e-300),
    "isolated": StageTolerance(rtol=1e-10, atol=1e-300),
    "gradients": StageTolerance(rtol=1e-8, atol=1e-300),
    "step": StageTolerance(rtol=1e-8, atol=1e-300),
    "trajectory": StageTolerance(rtol=1e-8, atol=1e-300),
}
#: float32: a second mode. Forward values carry ~1e-7 relative rounding per op, accumulated over depth;
#: gradients near max-pool ties may route to a different element (measured up to 2e-1 relative on single
#: elements), so gradients and updates are held to a looser bound; see README "float32 policy".
#: float32 machine epsilon (``numpy.finfo(numpy.float32).eps``, IEEE 754 binary32: 2**-23)
FLOAT32_EPS = 2.0 ** -23
#: float32 step stage, normalised-update optimizers (Adam): an element of the update is not judged when its
#: first moment lies within this many times its own float32 noise (see :class:`StageTolerance`)
FLOAT32_SIGN_NOISE = 2.0
FLOAT32_POLICY = {
    "default": StageTolerance(rtol=1e-4),
    "forward_eval": StageTolerance(rtol=1e-4),
    "forward_train": StageTolerance(rtol=1e-3),
    "bn_stats": StageTolerance(rtol=1e-4),
    "isolated": StageTolerance(rtol=1e-4),
    "gradients": StageTolerance(rtol=1e-2, norm_rtol=5e-2),
    "step": StageTolerance(rtol=1e-2, norm_rtol=5e-2, sign_noise=FLOAT32_SIGN_NOISE, resync=True),
    "trajectory": StageTolerance(rtol=1e-2, norm_rtol=5e-2),
}
DEFAULT_TOLERANCE = TolerancePolicy(float64=FLOAT64_POLICY, float32=FLOAT32_POLICY)


@dataclass(frozen=True)
class Convention:
    """A convention the pair relies on, shown in the structure stage and the reports."""

    name: str
    reference: str
    port: str
    origin: str = ""


@dataclass
class PairSpec:
    """A registered model pair.

    ``reference`` / ``port``: ``"module:function"`` (or callables) building the Keras model / torch module
    from ``**config`` (``config`` = ``default_config`` updated by the user). The Keras builder receives
    the config only; the harness sets ``keras.config.set_floatx`` for the dtype first. The torch builder
    returns a float32 module; the harness casts it.
    ``taps``: a callable ``(config) -> list[Tap]`` in topological order (the order decides "first divergence").
    ``input_shape``: callable ``(config) -> (H, W, C)`` of one reference input (NHWC).
    ``target``: ``("onehot", num_classes)`` or ``("regression", dims)`` given config.
    """

    name: str
    summary: str
    reference: str | Callable[..., Any]
    port: str | Callable[..., Any]
    taps: Callable[[dict], list[Tap]]
    input_shape: Callable[[dict], tuple[int, ...]]
    target: Callable[[dict], tuple[str, int]]
    loss: LossSpec = field(default_factory=LossSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    optimizers: dict[str, OptimizerSpec] = field(default_factory=dict)
    tolerance: TolerancePolicy = DEFAULT_TOLERANCE
    conventions: tuple[Convention, ...] = ()
    default_config: dict[str, Any] = field(default_factory=dict)
    #: smaller config used by CI tests where the full size is exercised by the benchmark / CLI
    fast_config: dict[str, Any] = field(default_factory=dict)
    default_batch: int = 4
    #: published parameter counts {"total":…, "trainable":…, "non_trainable":…} for the default config
    published_params: dict[str, int] = field(default_factory=dict)
    #: how ``--weights`` files are read: "keras" (h5) or "caffe" (npy dict or .caffemodel)
    weights_format: str = "keras"
    #: ``"module:function"`` ``(path, expected) -> ({keras_layer: {var: array}}, ConversionReport)`` where
    #: ``expected`` is the reference's ``{keras_layer: {var: shape}}``; None = the Keras h5 reader
    weights_loader: str | Callable[..., Any] | None = None
    #: randomise BN statistics / gammas after init so eval-mode BN is not the identity (see harness)
    randomize_bn: bool = True
    #: True when the reference builder returns a model that outlives the check (``parity.compare`` on a live
    #: model): its weights are snapshot and restored. False: each call builds a fresh model, which the check
    #: drops after the reference stages (no copy of its weights kept)
    reference_shared: bool = False
    #: input range of the generated data (mini_XCEPTION scales images to [-1, 1])
    input_range: tuple[float, float] = (-1.0, 1.0)
    #: the port's own training loss when it differs from ``loss`` (a user's training script); None = ``loss``
    port_loss: LossSpec | None = None
    #: a user pair's automatic alignment (``parity.user.align.Alignment``), set when its taps are resolved;
    #: the diagnosis puts its table and unaligned layers into the result. None for registered pairs
    alignment: Any = None

    def config(self, **overrides) -> dict[str, Any]:
        cfg = dict(self.default_config)
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cfg

    def optimizer_for(self, kind: str | None) -> OptimizerSpec:
        if kind is None or kind == self.optimizer.kind:
            return self.optimizer
        if kind in self.optimizers:
            return self.optimizers[kind]
        raise KeyError(kind)


def resolve(target: str | Callable) -> Callable:
    """Resolve ``"package.module:function"`` to the callable (importing lazily)."""
    if callable(target):
        return target
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"expected 'module:function'. Received: {target!r}.")
    mod_name, _, attr = target.partition(":")
    module = importlib.import_module(mod_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
