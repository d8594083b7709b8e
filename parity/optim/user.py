"""The user's own training step: the reference trains with the Keras model's compiled configuration
(``model.compile(optimizer=..., loss=...)``: the optimizer with its hyper-parameters, the loss, the layers'
regularisers), the port with the user's own torch optimizer factory and loss.

- :class:`UserOptimizerSpec` (kind ``"user"``): the compiled optimizer as Keras serialises it
  (``keras.optimizers.serialize``; rebuilt with ``keras.optimizers.deserialize``, Keras' built-in classes
  only, nothing read from a file is run) and the user's factory ``fn(port_module) -> optimizer`` (or
  ``(optimizer, scheduler)``, or any object with ``.step()``);
- :class:`UserAdapter`: both sides of one step; slots compared by name (torch ``exp_avg`` / ``exp_avg_sq``
  == Keras ``m`` / ``v``; torch ``momentum_buffer`` == Keras SGD ``momentum`` as ``-lr * buf``);
- :class:`UserLoss`: the user's loss callable ``loss(output, target)`` (class indices for a classification
  model, the float targets otherwise);
- :func:`compiled_training`: what a compiled Keras model says about its training.

The user's torch optimizer runs as given, with two exceptions, each only where the user's value already IS the
Keras value (equal within float32 precision) and each listed in the step stage's rules: Keras 3 computes with
float32-rounded hyper-parameters even in a float64 model (SGD momentum, Adam betas, ``l2`` lambda), and adds
Adam's epsilon to the uncorrected ``sqrt(v)`` (:func:`parity.core.conventions.torch_adam_lr_eps_from_keras`).
A value that differs is left alone: the numbers diverge and :mod:`parity.diagnosis.training_config` names it.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from parity.core.conventions import (KERAS_SGD_MOMENTUM_SLOT, float32_rounded, keras_l2_effective,
                                     torch_adam_lr_eps_from_keras)
from parity.core.errors import UsageError, call_user, label_of
from parity.core.spec import LossSpec, OptimizerSpec
from parity.optim.adapters import OptimizerAdapter, ParamRef, register_adapter

USER_KIND = "user"
"""``OptimizerSpec.kind`` of a check that trains with the user's own configuration on both sides."""

SAME_SETTING_RTOL = 1e-6
"""Two hyper-parameters are the same setting when they agree to float32 precision (Keras stores a compiled
learning rate in a float32 variable and casts momentum, betas and l2 lambda to float32: keras/src/optimizers/
base_optimizer.py ``_build_learning_rate``, sgd.py, adam.py, keras/src/regularizers/regularizers.py)."""

KERAS_REDUCTIONS = {"sum_over_batch_size": "mean", "sum": "sum", None: "mean", "auto": "mean"}
"""Keras 3 loss ``reduction`` -> the batch reduction of :class:`parity.core.spec.LossSpec`
(keras/src/losses/loss.py: ``sum_over_batch_size`` is the mean over the batch)."""

KERAS_LOSSES = {"categorical_crossentropy": "categorical_crossentropy",
                "sparse_categorical_crossentropy": "categorical_crossentropy",
                "mean_squared_error": "mse", "mse": "mse"}
"""The compiled losses a user check trains with (Keras name -> :class:`LossSpec` name). The sparse form gives
the same numbers as the one-hot form on the same classes (keras/src/losses/losses.py)."""

KERAS_SLOTS = {"SGD": {"momentum": "momentum_buffer"}, "Adam": {"m": "exp_avg", "v": "exp_avg_sq"},
               "AdamW": {"m": "exp_avg", "v": "exp_avg_sq"}}
"""Keras optimizer class -> {Keras slot: torch ``optimizer.state`` key} (keras/src/optimizers/{sgd,adam}.py;
torch/optim/{sgd,adam}.py). Other classes: updates compared, slots not."""


SAVED_TRAINING_CONFIG = "_parity_training_config"
"""Attribute a saved reference model carries: ``(optimizer config, loss)`` read from its file
(:func:`training_config_from_file`), since it is loaded with ``compile=False``."""


def same_setting(a, b) -> bool:
    """``a`` and ``b`` are the same hyper-parameter value (to float32 precision, :data:`SAME_SETTING_RTOL`)."""
    if a is None or b is None:
        return a is b
    a, b = float(a), float(b)
    return a == b or abs(a - b) <= SAME_SETTING_RTOL * max(abs(a), abs(b))


def typed_value(x: float) -> float:
    """The number the user typed, from its float32 image: the shortest decimal that rounds to the same float32
    (a learning rate compiled in float32 reads back as 0.05000000074505806 for 0.05)."""
    x = float(x)
    return float(str(np.float32(x))) if float32_rounded(x) == x else x


# -- what a compiled Keras model says ---------------------------------------------------------------------------
def compiled_training(model) -> tuple[dict | None, Any]:
    """``(serialised optimizer, loss)`` of a compiled Keras model; ``(None, None)`` when it was not compiled.
    The loss is a Keras name or a serialised ``keras.losses.Loss``."""
    import keras

    opt = getattr(model, "optimizer", None)
    loss = getattr(model, "loss", None)
    if opt is None:  # a saved model loaded without compiling: the configuration its file holds
        saved = getattr(model, SAVED_TRAINING_CONFIG, None)
        return saved if saved is not None else (None, loss)
    cfg = keras.optimizers.serialize(opt)
    cfg["class_name"] = type(opt).__name__  # the class itself (serialize may give its registered short name)
    if isinstance(cfg.get("config", {}).get("learning_rate"), (float, int)):
        cfg["config"]["learning_rate"] = typed_value(cfg["config"]["learning_rate"])
    if loss is not None and not isinstance(loss, str):
        try:
            loss = keras.losses.serialize(loss)
        except (TypeError, ValueError):
            loss = getattr(loss, "__name__", str(loss))
    return cfg, loss


def loss_spec_from_keras(loss, softmax_output: bool) -> LossSpec:
    """The compiled loss as a :class:`LossSpec` (the reference side computes it with Keras' own function)."""
    if isinstance(loss, dict):
        cfg = loss.get("config") or {}
        name = str(cfg.get("fn") or cfg.get("name") or loss.get("class_name", ""))
        from_logits, smoothing = bool(cfg.get("from_logits", False)), float(cfg.get("label_smoothing") or 0.0)
        reduction = KERAS_REDUCTIONS.get(cfg.get("reduction"), None)
    else:
        name, from_logits, smoothing, reduction = str(loss), False, 0.0, "mean"
    key = name.lower()
    if key not in KERAS_LOSSES or reduction is None:
        raise UsageError(f"the reference's compiled loss: expected one of {', '.join(sorted(KERAS_LOSSES))} "
                         f"(reduction sum_over_batch_size or sum). Received: {loss!r}. Compile the Keras model "
                         "with one of these, or drop --port-loss/--port-optimizer to use parity's own loss.")
    spec_name = KERAS_LOSSES[key]
    return LossSpec(spec_name, reduction, reference_from_logits=from_logits if spec_name != "mse" else False,
                    label_smoothing=smoothing if spec_name == "categorical_crossentropy" else 0.0)


def describe_keras(cfg: dict | None) -> dict:
    """The compiled optimizer's class and hyper-parameters (JSON-ready)."""
    if not cfg:
        return {}
    c = cfg.get("config") or {}
    out = {"class": cfg.get("class_name")}
    for k in ("learning_rate", "momentum", "nesterov", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay",
              "clipnorm", "clipvalue", "global_clipnorm", "rho"):
        if k in c and c[k] is not None:
            out[k] = c[k] if isinstance(c[k], (int, float, bool, str)) else str(c[k])
    return out


# -- the spec ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserOptimizerSpec(OptimizerSpec):
    """The compiled Keras optimizer (``keras_config``) against the user's torch factory (``factory``). The base
    fields (``lr``, ``momentum``, ``epsilon``...) hold the Keras values, for the rules that read them."""

    kind: str = USER_KIND
    keras_config: dict = field(default_factory=dict)
    factory: Any = None
    factory_label: str = ""
    loss_label: str = ""

    @classmethod
    def from_keras(cls, keras_config: dict, factory: Callable | None, factory_label: str = "",
                   loss_label: str = "") -> "UserOptimizerSpec":
        c = keras_config.get("config") or {}
        lr = c.get("learning_rate")
        kw = {k: float(c[k]) for k in ("momentum", "beta_1", "beta_2", "epsilon") if c.get(k) is not None}
        return cls(lr=float(lr) if isinstance(lr, (int, float)) else 0.0, nesterov=bool(c.get("nesterov", False)),
                   keras_config=keras_config, factory=factory, factory_label=factory_label, loss_label=loss_label,
                   **kw)

    def as_dict(self) -> dict:
        """What the report shows (JSON-ready): the reference's compiled optimizer and the port's functions."""
        return {"kind": self.kind, "training_configuration": "yours: the reference's model.compile(...) "
                f"configuration against your port optimizer {self.factory_label or '(parity SGD)'} and loss "
                f"{self.loss_label or '(parity loss)'}", "reference": describe_keras(self.keras_config),
                "port_optimizer": self.factory_label, "port_loss": self.loss_label}


class UserLoss:
    """The port's loss: the user's ``loss(output, target)``, with class indices (int64) as the target of a
    classification model (the reference's one-hot labels' argmax: what a torch data loader gives) and the
    float targets otherwise. Whatever it raises is the user's error (exit 2, named).

    A model with several outputs (``parts``: ``(width, classes)`` per output, in the Keras model's output order):
    the user's ``loss(outputs, targets)`` receives both as tuples in that order (each target class indices or
    floats as above), and returns the total, weighted as the reference's ``loss_weights`` weigh it."""

    def __init__(self, fn: Callable, label: str, classes: bool, parts: tuple = ()):
        self.fn, self.label, self.classes, self.parts = fn, label, classes, tuple(parts)

    def __call__(self, out, y):
        if self.parts:
            outs, targets, at = [], [], 0
            for width, classes in self.parts:
                outs.append(out[:, at:at + width])
                targets.append(y[:, at:at + width].argmax(dim=-1) if classes else y[:, at:at + width])
                at += width
            out, target = tuple(outs), tuple(targets)
        else:
            target = y.argmax(dim=-1) if self.classes else y
        loss = call_user(self.fn, self.label, out, target)
        if not hasattr(loss, "backward") or getattr(loss, "dim", lambda: 1)() != 0:
            raise UsageError(f"{self.label}: expected a loss returning a scalar torch tensor. Received: "
                             f"{type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}. Reduce it (mean or sum).")
        return loss


def _required_positional(fn) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return sum(1 for p in sig.parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


def port_loss_callable(obj, label: str) -> Callable:
    """``--port-loss MOD:FN`` / ``port_loss=``: a loss ``(output, target)`` itself (a ``nn.Module`` loss or a
    two-argument function), or a factory taking no argument that returns one (called here)."""
    if not callable(obj):
        raise UsageError(f"{label}: expected a callable loss(output, target) or a function returning one. "
                         f"Received: {type(obj).__name__}.")
    is_module = hasattr(obj, "forward") and hasattr(obj, "parameters")
    if not is_module and _required_positional(obj) == 0:
        made = call_user(obj, label)
        if not callable(made):
            raise UsageError(f"{label}: expected a function returning a callable loss(output, target). Received: "
                             f"{type(made).__name__}.")
        return made
    return obj


# -- the torch side ----------------------------------------------------------------------------------------------
def user_module(module):
    """The user's own module behind parity's view of it (:mod:`parity.user.view`)."""
    return getattr(module, "port", None) if type(module).__name__ == "PortView" else module


class PortTraining:
    """The user's optimizer (and scheduler) as the step stage drives it: ``step()`` = the user's
    ``optimizer.step()`` (with the same-setting conventions of the module docstring for this step only), then
    ``scheduler.step()``. ``state`` / ``param_groups`` are the optimizer's."""

    def __init__(self, optimizer, scheduler, keras_cfg: dict, l2_of: dict[int, float]):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.keras = keras_cfg.get("config") or {}
        self.keras_class = keras_cfg.get("class_name", "")
        self.l2_of = l2_of  # id(param) -> Keras l2 lambda on it (kernels of regularised layers), 0 elsewhere
        self.t = 0
        self.lr_used: dict[int, float] = {}  # id(param) -> the lr of its group at the last step (slot conversion)
        self.applied: list[str] = []
        self.missing: list[str] = []  # parameters the reference trains and the user's optimizer does not hold

    @property
    def state(self):
        return getattr(self.optimizer, "state", {})

    @property
    def param_groups(self):
        return getattr(self.optimizer, "param_groups", [])

    def _conventions(self, group) -> dict:
        """The group's values for this step (only where the user's value already is Keras')."""
        k, new, notes = self.keras, {}, []
        cls = type(self.optimizer).__name__
        if cls == "SGD" and self.keras_class == "SGD" and group.get("momentum") and same_setting(
                group["momentum"], k.get("momentum")):
            new["momentum"] = float32_rounded(k["momentum"])
            notes.append("SGD momentum as Keras computes it: float32(mu) (parity.core.conventions.float32_rounded)")
        if cls in ("Adam", "AdamW") and self.keras_class in ("Adam", "AdamW") and same_setting(
                group.get("eps"), k.get("epsilon")) and all(same_setting(a, b) for a, b in zip(
                group.get("betas", ()), (k.get("beta_1"), k.get("beta_2")))):
            # the reference's own betas: a Keras 2 file stores the float32 image of 0.999 (0.9990000128746033),
            # which Keras 3 uses as is in the moment updates (1 - beta_2 is then 1.3e-5 off 0.001)
            b1, b2 = float(k["beta_1"]), float(k["beta_2"])
            ratio, eps_t = torch_adam_lr_eps_from_keras(1.0, float(k["epsilon"]), b1, b2, self.t + 1)
            new["lr"], new["eps"], new["betas"] = group["lr"] * ratio, eps_t, (b1, b2)
            if cls == "AdamW" and group.get("weight_decay"):  # decoupled decay w *= 1 - lr*wd keeps Keras' lr
                new["weight_decay"] = group["weight_decay"] / ratio
            notes.append("Adam epsilon placement (Keras adds eps to the uncorrected sqrt(v)) and float32 betas in "
                         "the bias corrections: torch eps and lr set per step (parity.core.conventions."
                         "torch_adam_lr_eps_from_keras)")
        wd = group.get("weight_decay") or 0.0
        lams = {self.l2_of.get(id(p), 0.0) for p in group["params"]}
        if wd and len(lams) == 1 and cls != "AdamW":
            lam = lams.pop()
            if lam and same_setting(wd, 2.0 * lam):
                new["weight_decay"] = 2.0 * keras_l2_effective(lam)
                notes.append("Keras l2(lam) computes with float32(lam): weight_decay 2*float32(lam) "
                             "(parity.core.conventions.keras_l2_effective)")
        for n in notes:
            if n not in self.applied:
                self.applied.append(n)
        return new

    def step(self):
        saved = []
        for group in self.param_groups:
            for p in group["params"]:
                self.lr_used[id(p)] = float(group.get("lr", 0.0))
            new = self._conventions(group)
            saved.append({key: group[key] for key in new})
            group.update(new)
        try:
            self.optimizer.step()
        finally:
            for group, old in zip(self.param_groups, saved):
                group.update(old)
        if self.scheduler is not None:
            self.scheduler.step()
        self.t += 1

    def describe(self, names: dict[int, str]) -> dict:
        """The optimizer's class and, per param group, its hyper-parameters and parameters (by torch key)."""
        groups = []
        for group in self.param_groups:
            g = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()
                 if k != "params" and isinstance(v, (int, float, bool, str, tuple, type(None)))}
            g["params"] = [names.get(id(p), "?") for p in group["params"]]
            groups.append(g)
        return {"class": type(self.optimizer).__name__, "groups": groups, "missing": list(self.missing),
                "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None}


def build_port_training(spec: UserOptimizerSpec, module, refs: list[ParamRef], l2: dict[str, float]) -> PortTraining:
    """Call the user's factory with their module; check what it returns."""
    label = spec.factory_label or label_of(spec.factory)
    made = call_user(spec.factory, label, user_module(module))
    opt, sched = (made[0], made[1]) if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not callable(getattr(opt, "step", None)):
        raise UsageError(f"{label}: expected a torch.optim optimizer (or (optimizer, scheduler)). Received: "
                         f"{type(made).__name__}.")
    if sched is not None and not callable(getattr(sched, "step", None)):
        raise UsageError(f"{label}: expected (optimizer, scheduler) with a scheduler that has .step(). Received: "
                         f"{type(sched).__name__} as the scheduler.")
    by_id = {id(r.param): r for r in refs if r.param is not None}
    l2_of = {pid: (float(l2.get(r.layer, 0.0)) if r.role == "kernel" and r.kind != "batchnorm" else 0.0)
             for pid, r in by_id.items()}
    given = {id(p) for g in getattr(opt, "param_groups", []) for p in g["params"]}
    missing = [r.key for r in refs if r.param is not None and not r.key.startswith("<") and id(r.param) not in given]
    training = PortTraining(opt, sched, spec.keras_config, l2_of)
    if getattr(opt, "param_groups", None) is not None:  # never updated by the port: named by the diagnosis
        training.missing = missing
    return training


class UserAdapter(OptimizerAdapter):
    """Kind ``"user"``: the compiled Keras optimizer against the user's torch optimizer (module docstring)."""

    kind = USER_KIND
    rules = ("the reference trains with its model.compile(...) optimizer and loss (regularisers added as Keras "
             "adds them); the port with your optimizer factory and loss, as given",
             "same-setting conventions applied to your optimizer only where your value already is Keras' "
             "(listed in the step stage's info['applied'])",
             KERAS_SGD_MOMENTUM_SLOT)

    def keras_optimizer(self, spec, refs):
        import keras

        return keras.optimizers.deserialize(copy.deepcopy(spec.keras_config))  # it edits the dict it is given

    def keras_prepare(self, spec, step, opt, grads, variables, refs):
        return grads  # the compiled optimizer keeps its own learning rate (and schedule)

    def keras_slots(self, opt, variables, refs):
        names = KERAS_SLOTS.get(type(opt).__name__, {})
        out = {}
        for v, r in zip(variables, refs):
            i = opt._get_variable_index(v)
            slots = {}
            if "momentum" in names and getattr(opt, "momentums", None):
                slots["momentum"] = opt.momentums[i].numpy()
            if "m" in names:
                slots["m"], slots["v"] = opt._momentums[i].numpy(), opt._velocities[i].numpy()
            if slots:
                out[r.key] = slots
        return out

    def torch_optimizer(self, spec, refs, l2):
        raise UsageError("the user optimizer needs the port module: parity.optim.user.build_port_training")

    def torch_optimizer_for_module(self, spec, module, refs, l2):
        return build_port_training(spec, module, refs, l2)

    def torch_prepare(self, spec, step, opt) -> None:
        return None  # the user's learning rates (and scheduler) stand

    def torch_slots(self, spec, step, opt, refs):
        names = KERAS_SLOTS.get(str((spec.keras_config or {}).get("class_name", "")), {})
        out = {}
        for r in refs:
            st = opt.state.get(r.param, {}) if r.param is not None else {}
            slots = {}
            for kslot, tslot in names.items():
                if tslot not in st:
                    continue
                a = st[tslot].detach().cpu().numpy()
                # Keras m == -lr * torch buf (constant lr; the lr of the step that wrote it)
                slots[kslot] = -opt.lr_used.get(id(r.param), 0.0) * a if tslot == "momentum_buffer" else a
            if slots:
                out[r.key] = slots
        return out

    def torch_state_from_slot(self, spec, step, slot, value, opt=None, param=None):
        """The inverse of :meth:`torch_slots`: Adam's ``m`` / ``v`` as-is, SGD's Keras ``momentum`` as torch's
        ``momentum_buffer = m / -lr`` with the lr the parameter's group used at that step (None when unknown)."""
        tslot = KERAS_SLOTS.get(str((spec.keras_config or {}).get("class_name", "")), {}).get(slot)
        if tslot is None:
            return None
        if tslot != "momentum_buffer":
            return tslot, value
        lr = getattr(opt, "lr_used", {}).get(id(param), 0.0) if param is not None else 0.0
        return (tslot, value / -lr) if lr else None

    def describe(self, spec) -> dict:
        return spec.as_dict() | {"rules": list(self.rules)}


register_adapter(UserAdapter())


# -- a pair trained with the user's configuration ------------------------------------------------------------------
def _ends_in_softmax(model) -> bool:
    layers = getattr(model, "layers", None) or []
    if not layers:
        return False
    last = layers[-1]
    act = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(act, "__name__", "") == "softmax"


def with_user_training(spec, model, port_optimizer=None, port_loss=None, *, optimizer_label: str = "",
                       loss_label: str = ""):
    """``spec`` (a :class:`parity.core.spec.PairSpec`, changed in place and returned) trained with the compiled
    configuration of ``model`` on the reference side and ``port_optimizer`` / ``port_loss`` on the port side.
    Without either, ``spec`` is returned unchanged (parity's own training configuration)."""
    if port_optimizer is None and port_loss is None:
        return spec
    what = "--port-optimizer" if port_optimizer is not None else "--port-loss"
    keras_cfg, loss = compiled_training(model)
    if keras_cfg is None or loss is None:
        raise UsageError(f"{what}: expected a reference model compiled with model.compile(optimizer=..., loss=...) "
                         f"(its training configuration is what your port's is compared with). Received: "
                         f"{'a model never compiled' if keras_cfg is None else 'a model compiled without a loss'}. "
                         "Call model.compile(...) in your Keras builder.")
    if spec.loss.parts:
        pass  # several outputs: the compiled loss per output and loss_weights are already the spec's
    else:
        spec.loss = loss_spec_from_keras(loss, _ends_in_softmax(model))
    kind = "onehot" if spec.loss.name == "categorical_crossentropy" else "regression"
    outputs = getattr(model, "outputs", None) or []
    if outputs and outputs[0].shape[-1] is not None and not spec.loss.parts:
        target = (kind, int(outputs[0].shape[-1]))
        spec.target = lambda config, t=target: t
    return apply_user_training(spec, keras_cfg, port_optimizer, port_loss, optimizer_label=optimizer_label,
                               loss_label=loss_label)


def apply_user_training(spec, keras_cfg: dict, port_optimizer=None, port_loss=None, *, optimizer_label: str = "",
                        loss_label: str = ""):
    """``spec`` (whose ``loss`` already is the reference's compiled loss) trained with the compiled optimizer
    ``keras_cfg`` (serialised, plain data) on the reference side and ``port_optimizer`` / ``port_loss`` on the
    port side; changed in place and returned. :func:`with_user_training` reads both from a compiled model;
    ``parity replay`` from a trace's data (``parity.io.trace``)."""
    what = "--port-optimizer" if port_optimizer is not None else "--port-loss"
    if port_loss is not None:
        label = loss_label or f"port_loss {label_of(port_loss)}"
        spec.port_loss = UserLoss(port_loss_callable(port_loss, label), label,
                                  classes=spec.loss.name == "categorical_crossentropy",
                                  parts=tuple((w, p.name == "categorical_crossentropy") for p, w, _, _ in
                                              spec.loss.parts))
    if port_optimizer is not None:
        if not callable(port_optimizer):
            raise UsageError(f"{what}: expected a function(port_module) returning a torch.optim optimizer. "
                             f"Received: {type(port_optimizer).__name__}.")
        label = optimizer_label or f"port_optimizer {label_of(port_optimizer)}"
        user = UserOptimizerSpec.from_keras(keras_cfg, port_optimizer, label,
                                            loss_label or (label_of(port_loss) if port_loss is not None else ""))
        spec.optimizer, spec.optimizers = user, {USER_KIND: user}
    return spec


# -- a saved model's training configuration ------------------------------------------------------------------------
#: Keras 2 optimizer config keys -> Keras 3 names (keras/src/optimizers/base_optimizer.py refuses ``lr``)
KERAS2_OPTIMIZER_KEYS = {"lr": "learning_rate"}


def _keras3_optimizer_config(cfg) -> dict | None:
    """A saved optimizer config as Keras 3 reads it (Keras 2's ``lr`` renamed, a zero ``decay`` dropped); None
    when there is none. A non-zero Keras 2 ``decay`` (a per-iteration lr schedule) is refused."""
    if not isinstance(cfg, dict) or not cfg.get("class_name"):
        return None
    inner = dict(cfg.get("config") or {})
    for old, new in KERAS2_OPTIMIZER_KEYS.items():
        if old in inner:
            inner.setdefault(new, inner.pop(old))
    decay = inner.pop("decay", 0.0)
    if decay:
        raise UsageError(f"the saved model's optimizer: expected no Keras 2 'decay' (Keras 3 has none). Received: "
                         f"decay={decay}. Compile the model again with a LearningRateSchedule and save it.")
    if isinstance(inner.get("learning_rate"), (int, float)):
        inner["learning_rate"] = typed_value(inner["learning_rate"])
    return {"class_name": str(cfg["class_name"]), "config": inner,
            **({"module": cfg["module"]} if cfg.get("module") else {})}


def training_config_from_file(path: str) -> tuple[dict | None, Any]:
    """``(optimizer config, loss)`` stored in a saved model, read as JSON data (never run): a ``.keras`` archive's
    ``config.json`` ``compile_config``, or an HDF5 file's ``training_config`` attribute (Keras 2 and Keras 3
    legacy ``.h5``). ``(None, None)`` when the file holds none."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                cfg = json.loads(zf.read("config.json"))
            cc = cfg.get("compile_config") or {}
            return _keras3_optimizer_config(cc.get("optimizer")), cc.get("loss")
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("training_config")
        if raw is None:
            return None, None
        tc = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        return _keras3_optimizer_config(tc.get("optimizer_config")), tc.get("loss")
    except (OSError, KeyError, ValueError) as exc:
        raise UsageError(f"--reference {path}: expected a readable training configuration in the saved model. "
                         f"Received: {type(exc).__name__}: {exc}. Save it with model.save() after "
                         "model.compile(...).") from None
