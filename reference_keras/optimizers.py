"""Optimizers of the reference frameworks that Keras lacks. Never imports torch.

:class:`CaffeSGD`: Caffe's SGD solver (caffe/src/caffe/solvers/sgd_solver.cpp: ``Regularize`` then
``ComputeUpdateValue`` then ``Blob::Update``), per variable::

    local_rate  = learning_rate * lr_mult[var]
    local_decay = weight_decay * decay_mult[var]
    history     = momentum * history + local_rate * (g + local_decay * w)
    w          -= history

The rate is applied before the momentum (``history`` carries every past rate), unlike Keras' and torch's SGD.
``weight_decay`` is Caffe's *coupled* L2 (added to the gradient); Keras' own ``weight_decay`` argument is a
decoupled decay and is not used.

``lr_mult`` / ``decay_mult``: ``{key: multiplier}``, where a key is a variable path (``"fc6/kernel"``), a
``"layer:var"`` (``"fc6:kernel"``), ``"layer:kernel"``/``"layer:bias"`` (role) or a layer name (``"fc6"``), looked
up in that order; default 1 (Caffe's ``ParamSpec`` defaults).

Exactness in float64 (measured with Keras 3.15 / TF 2.21): ``keras.ops.cast(0.9, "float64")`` rounds through
float32 (0.8999999762), and the base optimizer creates its learning-rate variable in ``floatx()`` at construction
(1e-6 in float32 is 2.5e-9 off). CaffeSGD turns every hyperparameter into a tensor with
``convert_to_tensor(value, dtype)`` and keeps its learning rate in a float64 variable (:data:`LR_DTYPE`),
cast to each variable's dtype in ``update_step``.
"""
from __future__ import annotations

import keras
from keras import ops

BIAS_VARS = ("bias", "beta")
LR_DTYPE = "float64"
"""dtype of CaffeSGD's learning-rate variable, whatever ``keras.config.floatx()`` was at construction."""


def _const(value: float, dtype):
    return ops.convert_to_tensor(value, dtype=dtype)


def multiplier(table: dict, path: str, default: float = 1.0) -> float:
    """The multiplier of the variable at ``path`` (``"fc6/kernel"``), see the module docstring."""
    parts = path.split("/")
    layer, var = (parts[-2], parts[-1]) if len(parts) >= 2 else (path, "")
    role = "bias" if var in BIAS_VARS else "kernel"
    for key in (path, f"{layer}/{var}", f"{layer}:{var}", f"{layer}:{role}", layer):
        if key in table:
            return float(table[key])
    return default


@keras.saving.register_keras_serializable(package="parity")
class CaffeSGD(keras.optimizers.Optimizer):
    """Caffe's SGD with per-variable ``lr_mult`` / ``decay_mult``. Slots: ``momentums`` (Caffe's history)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, weight_decay=0.0, lr_mult=None, decay_mult=None,
                 name="caffe_sgd", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"CaffeSGD: expected 0 <= momentum <= 1. Received: momentum={momentum}.")
        self.momentum = float(momentum)
        self.caffe_weight_decay = float(weight_decay)
        self.lr_mult = dict(lr_mult or {})
        self.decay_mult = dict(decay_mult or {})
        lr_var = self._learning_rate
        if isinstance(lr_var, keras.Variable) and lr_var.dtype != LR_DTYPE:
            self._untrack_variable(lr_var)
            with keras.name_scope(self.name, caller=self):
                lr_var = keras.Variable(float(learning_rate), name="learning_rate", dtype=LR_DTYPE, trainable=False,
                                        aggregation="only_first_replica")
            self._track_variable(lr_var)
            self._learning_rate = lr_var

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Caffe's history starts at zero (SGDSolver::PreSolve).
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._local_lr_mult = [multiplier(self.lr_mult, v.path) for v in variables]
        self._local_decay = [self.caffe_weight_decay * multiplier(self.decay_mult, v.path) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        dtype = variable.dtype
        g = ops.cast(gradient, dtype)
        local_rate = ops.multiply(ops.cast(learning_rate, dtype), _const(self._local_lr_mult[i], dtype))
        local_decay = self._local_decay[i]
        if local_decay:  # Regularize: diff += local_decay * data
            g = ops.add(g, ops.multiply(_const(local_decay, dtype), variable))
        m = self.momentums[i]
        # ComputeUpdateValue: history = momentum * history + local_rate * diff; Update: data -= history
        self.assign(m, ops.add(ops.multiply(m, _const(self.momentum, dtype)), ops.multiply(local_rate, g)))
        self.assign_sub(variable, m)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.caffe_weight_decay,
                       "lr_mult": dict(self.lr_mult), "decay_mult": dict(self.decay_mult)})
        return config
