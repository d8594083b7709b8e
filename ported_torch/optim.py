"""Optimizers of the reference frameworks that torch lacks.

:class:`CaffeSGD`: Caffe's SGD solver (caffe/src/caffe/solvers/sgd_solver.cpp), per parameter group::

    local_rate  = lr * lr_mult
    local_decay = weight_decay * decay_mult (+ extra_weight_decay)
    history     = momentum * history + local_rate * (g + local_decay * w)
    w          -= history

``history`` starts at zero and is stored as ``state["momentum_buffer"]``. Unlike ``torch.optim.SGD``
(``buf = momentum * buf + g; w -= lr * buf``) the rate is applied before the momentum, so after an lr change
(Caffe ``lr_policy: "step"``) the two differ: Caffe's history still carries the old rate.

``lr`` in a group is the solver's base rate (what a torch lr scheduler scales); ``lr_mult`` / ``decay_mult``
are Caffe's per-blob ``param { lr_mult decay_mult }`` (default 1). ``extra_weight_decay`` is coupled decay that
is not scaled by ``decay_mult``: the port's form of a Keras ``l2(lam)`` regulariser (``2 * lam``).
"""
from __future__ import annotations

import torch


class CaffeSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 lr_mult: float = 1.0, decay_mult: float = 1.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"CaffeSGD: expected lr, momentum, weight_decay >= 0. Received: lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}.")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, lr_mult=lr_mult,
                        decay_mult=decay_mult, extra_weight_decay=0.0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            local_rate = group["lr"] * group["lr_mult"]
            local_decay = group["weight_decay"] * group["decay_mult"] + group["extra_weight_decay"]
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if local_decay:
                    g = g.add(p, alpha=local_decay)  # Regularize: diff += local_decay * data
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf.mul_(mu).add_(g, alpha=local_rate)  # history = mu * history + local_rate * diff
                p.sub_(buf)                              # Update: data -= history
        return loss
