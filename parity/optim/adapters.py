"""One optimizer description (:class:`parity.core.spec.OptimizerSpec`) -> a Keras optimizer and a torch optimizer,
with the named conversion rules of :mod:`parity.core.conventions`, and their state ("slots") expressed in one
convention so that they can be compared.

An adapter per ``OptimizerSpec.kind``; a pair with its own optimizer (Caffe SGD) registers another with
:func:`register_adapter`. Frameworks are imported inside the methods only.

Parameters are described by :class:`ParamRef` (reference layer + variable name <-> torch key), which is also
how per-parameter settings are looked up: ``l2`` by layer (kernels only, as Keras ``kernel_regularizer``),
``lr_mult``/``decay_mult`` by ``"layer:var"`` then ``"layer"``, where ``var`` is ``kernel`` for any weight
variable (kernel, depthwise_kernel, pointwise_kernel, gamma) and ``bias`` for bias/beta.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parity.core.conventions import (KERAS_SGD_MOMENTUM_SLOT, float32_rounded, torch_adam_eps_from_keras, torch_adam_lr_eps_from_keras,
                                torch_weight_decay_from_keras_l2)
from parity.core.spec import OptimizerSpec

BIAS_VARS = ("bias", "beta")


@dataclass
class ParamRef:
    """A trainable parameter seen from both sides."""

    key: str        # torch state_dict key, e.g. "block1.sepconv1.depthwise.weight"
    layer: str      # reference (Keras) layer name
    var: str        # reference variable name, e.g. "depthwise_kernel"
    kind: str       # tap kind (conv2d, batchnorm, ...)
    param: Any = None  # the torch Parameter (port side only)

    @property
    def role(self) -> str:
        return "bias" if self.var in BIAS_VARS else "kernel"


def multiplier(table: dict[str, float], ref: ParamRef, default: float = 1.0) -> float:
    for k in (f"{ref.layer}:{ref.var}", f"{ref.layer}:{ref.role}", ref.layer):
        if k in table:
            return float(table[k])
    return default


def l2_for(spec: OptimizerSpec, l2: dict[str, float], ref: ParamRef) -> float:
    """Keras L2 coefficient that applies to this parameter (kernel regularisers hit kernels only)."""
    if ref.role != "kernel" or ref.kind == "batchnorm":
        return 0.0
    return float(l2.get(ref.layer, 0.0))


class OptimizerAdapter:
    """Base adapter. Subclasses implement the Keras and torch sides of one optimizer kind."""

    kind = ""
    #: names of the slots, in the Keras convention, compared by the step stage
    slot_names: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    #: the slot whose sign sets each element's update when the update is normalised per element (Adam's first
    #: moment ``m``: the update is about +-lr whatever the gradient's size), else None; read by the float32
    #: step policy (``parity.core.spec.StageTolerance.sign_noise``)
    sign_slot: str | None = None
    #: slots held as-is in torch's optimizer state (Keras slot name -> torch state key): the float32 multi-step
    #: policy sets the port's slots to the reference's values through them (``torch_state_from_slot``)
    torch_state_keys: dict[str, str] = {}

    # -- Keras side -------------------------------------------------------------------------------------
    def keras_optimizer(self, spec: OptimizerSpec, refs: list[ParamRef]):
        raise NotImplementedError

    def keras_prepare(self, spec: OptimizerSpec, step: int, opt, grads, variables, refs):
        """Set the step's learning rate; return the gradients to apply (identity by default)."""
        opt.learning_rate = spec.lr_at(step)
        return grads

    def keras_slots(self, opt, variables, refs: list[ParamRef]) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    # -- torch side -------------------------------------------------------------------------------------
    def torch_optimizer(self, spec: OptimizerSpec, refs: list[ParamRef], l2: dict[str, float]):
        raise NotImplementedError

    def torch_prepare(self, spec: OptimizerSpec, step: int, opt) -> None:
        for group in opt.param_groups:
            group["lr"] = spec.lr_at(step) * group.get("lr_mult", 1.0)

    def torch_slots(self, spec: OptimizerSpec, step: int, opt, refs: list[ParamRef]) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def torch_state_from_slot(self, spec: OptimizerSpec, step: int, slot: str, value, opt=None, param=None):
        """The inverse of ``torch_slots`` for one slot after step ``step``: ``(torch state key, value)`` holding
        the Keras-convention ``value``, or None when this adapter cannot set it (the float32 step policy then
        resyncs the weights only, see ``parity.core.spec.StageTolerance.resync``). ``opt`` / ``param``: the
        port's optimizer and the parameter the slot belongs to, for adapters whose conversion depends on them
        (the user's optimizer: the learning rate its group used)."""
        key = self.torch_state_keys.get(slot)
        return (key, value) if key else None

    def describe(self, spec: OptimizerSpec) -> dict:
        return {"kind": spec.kind, "rules": list(self.rules)}


def torch_param_groups(spec: OptimizerSpec, refs: list[ParamRef], l2: dict[str, float]) -> list[dict]:
    """One param group per parameter: coupled weight decay = spec.weight_decay*decay_mult + 2*l2."""
    groups = []
    for r in refs:
        wd = spec.weight_decay * multiplier(spec.decay_mult, r) + torch_weight_decay_from_keras_l2(l2_for(spec, l2, r))
        groups.append({"params": [r.param], "weight_decay": wd, "lr_mult": multiplier(spec.lr_mult, r),
                       "lr": spec.lr * multiplier(spec.lr_mult, r), "name": r.key})
    return groups


def coupled_decay_keras(spec: OptimizerSpec, grads, variables, refs):
    """torch's coupled ``weight_decay`` on the Keras side: g += wd * decay_mult * w before the update
    (Keras' own ``weight_decay`` argument is *decoupled*: w -= lr * wd * w, a different rule)."""
    if not spec.weight_decay:
        return grads
    out = []
    for g, v, r in zip(grads, variables, refs):
        wd = spec.weight_decay * multiplier(spec.decay_mult, r)
        out.append(g + wd * v if wd else g)
    return out


class SGDAdapter(OptimizerAdapter):
    kind = "sgd"
    slot_names = ("momentum",)
    rules = (KERAS_SGD_MOMENTUM_SLOT,
             "Keras SGD multiplies by ops.cast(momentum, dtype), a float32-rounded momentum even in float64: "
             "torch momentum = float32(mu) (parity.core.conventions.float32_rounded)",
             "Keras l2(lam) kernel regulariser -> torch coupled weight_decay 2*lam on that kernel",
             "OptimizerSpec.weight_decay is torch's coupled decay; applied on the Keras side as g += wd*w")

    def keras_optimizer(self, spec, refs):
        import keras

        if spec.lr_mult and any(v != 1 for v in spec.lr_mult.values()):
            raise ValueError("keras.optimizers.SGD has no per-parameter lr_mult: use kind='caffe_sgd'.")
        return keras.optimizers.SGD(learning_rate=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)

    def keras_prepare(self, spec, step, opt, grads, variables, refs):
        opt.learning_rate = spec.lr_at(step)
        return coupled_decay_keras(spec, grads, variables, refs)

    def keras_slots(self, opt, variables, refs):
        if not opt.momentum:
            return {}
        return {r.key: {"momentum": opt.momentums[opt._get_variable_index(v)].numpy()}
                for v, r in zip(variables, refs)}

    def torch_optimizer(self, spec, refs, l2):
        import torch

        return torch.optim.SGD(torch_param_groups(spec, refs, l2), lr=spec.lr, momentum=float32_rounded(spec.momentum),
                               nesterov=spec.nesterov, dampening=0.0)

    def torch_slots(self, spec, step, opt, refs):
        if not spec.momentum:
            return {}
        lr = spec.lr_at(step)
        out = {}
        for r in refs:
            buf = opt.state.get(r.param, {}).get("momentum_buffer")
            if buf is not None:
                # Keras m == -lr * torch buf (constant lr); after an lr change the two rules part ways.
                out[r.key] = {"momentum": (-lr * buf).detach().cpu().numpy()}
        return out

    def torch_state_from_slot(self, spec, step, slot, value, opt=None, param=None):
        return ("momentum_buffer", value / -spec.lr_at(step)) if slot == "momentum" else None


class AdamAdapter(OptimizerAdapter):
    kind = "adam"
    slot_names = ("m", "v")
    sign_slot = "m"
    torch_state_keys = {"m": "exp_avg", "v": "exp_avg_sq"}
    rules = ("Keras adds epsilon to the uncorrected sqrt(v); torch to the corrected one: torch eps at step t = "
             "eps_keras / sqrt(1 - beta_2**t), set on every step (parity.core.conventions.torch_adam_eps_from_keras)",
             "Keras' bias corrections use float32-rounded betas (tf.cast of a Python float): torch lr scaled per "
             "step by the ratio of bias corrections (parity.core.conventions.torch_adam_lr_eps_from_keras)",
             "Keras l2(lam) kernel regulariser -> torch (coupled) Adam weight_decay 2*lam on that kernel")

    def keras_optimizer(self, spec, refs):
        import keras

        return keras.optimizers.Adam(learning_rate=spec.lr, beta_1=spec.beta_1, beta_2=spec.beta_2,
                                     epsilon=spec.epsilon)

    def keras_prepare(self, spec, step, opt, grads, variables, refs):
        opt.learning_rate = spec.lr_at(step)
        return coupled_decay_keras(spec, grads, variables, refs)

    def keras_slots(self, opt, variables, refs):
        out = {}
        for v, r in zip(variables, refs):
            i = opt._get_variable_index(v)
            out[r.key] = {"m": opt._momentums[i].numpy(), "v": opt._velocities[i].numpy()}
        return out

    def torch_optimizer(self, spec, refs, l2):
        import torch

        groups = torch_param_groups(spec, refs, l2)
        return torch.optim.Adam(groups, lr=spec.lr, betas=(spec.beta_1, spec.beta_2),
                                eps=torch_adam_eps_from_keras(spec.epsilon, spec.beta_2, 1))

    def torch_prepare(self, spec, step, opt):
        lr_t, eps_t = torch_adam_lr_eps_from_keras(spec.lr_at(step), spec.epsilon, spec.beta_1, spec.beta_2, step + 1)
        for group in opt.param_groups:
            group["lr"] = lr_t * group.get("lr_mult", 1.0)
            group["eps"] = eps_t

    def torch_slots(self, spec, step, opt, refs):
        out = {}
        for r in refs:
            st = opt.state.get(r.param, {})
            if "exp_avg" in st:
                out[r.key] = {"m": st["exp_avg"].detach().cpu().numpy(),
                              "v": st["exp_avg_sq"].detach().cpu().numpy()}
        return out


_ADAPTERS: dict[str, OptimizerAdapter] = {}


def register_adapter(adapter: OptimizerAdapter) -> OptimizerAdapter:
    _ADAPTERS[adapter.kind] = adapter
    return adapter


register_adapter(SGDAdapter())
register_adapter(AdamAdapter())


def get_adapter(kind: str) -> OptimizerAdapter:
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise KeyError(f"unknown optimizer {kind!r}. Expected one of: {', '.join(sorted(_ADAPTERS))}.") from None
