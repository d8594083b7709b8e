"""The ``caffe_sgd`` optimizer adapter: Caffe's SGD solver on both sides, with per-parameter ``lr_mult`` and
``decay_mult`` (caffe/src/caffe/solvers/sgd_solver.cpp, ``Regularize`` + ``ComputeUpdateValue``)::

    history = momentum * history + lr * lr_mult * (g + weight_decay * decay_mult * w)
    w      -= history

The learning rate enters *before* the momentum, so ``history`` carries the lr of every past step; torch's
``SGD`` keeps ``buf = momentum * buf + g`` and multiplies by the *current* lr. The two agree while lr is constant
and part ways at the first lr change (``lr_policy: "step"``).

Keras side: :class:`reference_keras.optimizers.CaffeSGD`; torch side: :class:`ported_torch.optim.CaffeSGD`.
Slot convention: ``"momentum"`` is Caffe's ``history`` on both sides (it includes lr), compared as is.
Registered on import; frameworks are imported inside the methods only.
"""
from __future__ import annotations

from parity.core.conventions import torch_weight_decay_from_keras_l2
from parity.optim.adapters import OptimizerAdapter, ParamRef, l2_for, multiplier, register_adapter
from parity.core.spec import OptimizerSpec

CAFFE_SGD_RULE = ("Caffe SGD (sgd_solver.cpp): history = momentum*history + lr*lr_mult*(g + weight_decay*"
                  "decay_mult*w); w -= history")
CAFFE_LR_BEFORE_MOMENTUM = ("lr is applied before momentum (history carries past lrs): differs from "
                            "torch.optim.SGD (buf = mu*buf + g; w -= lr*buf) after an lr change")
CAFFE_SLOT = "slot 'momentum' = Caffe's history (includes lr) on both sides, compared as is"


def variable_key(ref: ParamRef) -> str:
    """The Keras variable path CaffeSGD looks multipliers up by (``"fc6/kernel"``)."""
    return f"{ref.layer}/{ref.var}"


class CaffeSGDAdapter(OptimizerAdapter):
    kind = "caffe_sgd"
    slot_names = ("momentum",)
    torch_state_keys = {"momentum": "momentum_buffer"}  # CaffeSGD's buffer is Caffe's history blob as-is
    rules = (CAFFE_SGD_RULE, CAFFE_LR_BEFORE_MOMENTUM, CAFFE_SLOT,
             "Keras l2(lam) kernel regulariser -> torch extra coupled decay 2*lam on that kernel")

    @staticmethod
    def _check(spec: OptimizerSpec) -> None:
        if spec.nesterov:
            raise ValueError("caffe_sgd: expected nesterov=False. Received: nesterov=True. Caffe's SGD solver has "
                             "no Nesterov form (that is the 'Nesterov' solver type): use kind='sgd'.")

    # -- Keras side -------------------------------------------------------------------------------------
    def keras_optimizer(self, spec, refs):
        from reference_keras.optimizers import CaffeSGD

        self._check(spec)
        return CaffeSGD(learning_rate=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                        lr_mult={variable_key(r): multiplier(spec.lr_mult, r) for r in refs},
                        decay_mult={variable_key(r): multiplier(spec.decay_mult, r) for r in refs})

    def keras_prepare(self, spec, step, opt, grads, variables, refs):
        # Caffe's "rate" is the base lr: lr_mult and the weight decay are applied inside CaffeSGD.
        opt.learning_rate = spec.lr_at(step)
        return grads

    def keras_slots(self, opt, variables, refs):
        return {r.key: {"momentum": opt.momentums[opt._get_variable_index(v)].numpy()}
                for v, r in zip(variables, refs)}

    # -- torch side -------------------------------------------------------------------------------------
    def torch_optimizer(self, spec, refs, l2):
        from ported_torch.optim import CaffeSGD

        self._check(spec)
        groups = [{"params": [r.param], "lr_mult": multiplier(spec.lr_mult, r), "decay_mult": multiplier(spec.decay_mult, r),
                   "extra_weight_decay": torch_weight_decay_from_keras_l2(l2_for(spec, l2, r)), "name": r.key}
                  for r in refs]
        return CaffeSGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)

    def torch_prepare(self, spec, step, opt):
        for group in opt.param_groups:
            group["lr"] = spec.lr_at(step)  # base rate; CaffeSGD multiplies by the group's lr_mult

    def torch_slots(self, spec, step, opt, refs):
        out = {}
        for r in refs:
            buf = opt.state.get(r.param, {}).get("momentum_buffer")
            if buf is not None:
                out[r.key] = {"momentum": buf.detach().cpu().numpy()}
        return out

    def describe(self, spec):
        d = super().describe(spec)
        d.update({"lr": spec.lr, "momentum": spec.momentum, "weight_decay": spec.weight_decay,
                  "lr_mult": dict(spec.lr_mult), "decay_mult": dict(spec.decay_mult)})
        return d


ADAPTER = register_adapter(CaffeSGDAdapter())
