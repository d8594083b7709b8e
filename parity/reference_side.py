"""Run the reference (Keras) side once and keep everything the stages compare, as numpy: a
:class:`ReferenceRun`. This is also what ``parity record`` stores, so that ``parity replay`` can check a
port with PyTorch alone.

The Keras model is left as it was found: ``training=True`` calls and optimizer steps mutate BatchNorm
moving statistics and weights, so every weight is snapshot before and restored after.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.data import make_batch, randomize_weights
from parity.optimizers import ParamRef, get_adapter
from parity.spec import LossSpec, OptimizerSpec, PairSpec, Tap
from weight_converters.keras import LAYER_VARS

#: get_config keys copied into the structure description of a Keras layer
CONFIG_KEYS = ("kernel_size", "strides", "padding", "use_bias", "epsilon", "momentum", "activation", "pool_size",
               "depth_multiplier", "groups", "dilation_rate", "center", "scale", "rate", "axis", "units",
               "filters", "data_format", "alpha", "beta", "bias", "depth_radius", "negative_slope", "max_value",
               "size", "k", "ceil_mode", "kernel_initializer", "bias_initializer", "depthwise_initializer",
               "pointwise_initializer")


@dataclass
class ReferenceRun:
    meta: dict[str, Any]
    taps: list[Tap]
    inputs: list[np.ndarray]                  # per step, NHWC
    labels: list[np.ndarray]
    weights: dict[str, dict[str, np.ndarray]]  # initial weights, Keras layout
    structure: dict[str, dict[str, Any]]       # per Keras layer name
    model_params: dict[str, int]
    l2: dict[str, float]
    param_refs: list[ParamRef]
    eval_acts: dict[str, np.ndarray] = field(default_factory=dict)
    eval_inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    train_acts: dict[str, np.ndarray] = field(default_factory=dict)
    bn_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    bn_n: dict[str, int] = field(default_factory=dict)
    loss: float | None = None
    act_grads: dict[str, np.ndarray] = field(default_factory=dict)
    param_grads: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def keras_weights(model) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {var: array}}`` of every layer that has variables (Keras 3 ``variable.name`` is the var)."""
    out = {}
    for layer in model.layers:
        if layer.weights:
            out[layer.name] = {w.name.split("/")[-1].split(":")[0]: np.array(w.numpy()) for w in layer.weights}
    return out


def expected_weights(model) -> dict[str, dict[str, tuple]]:
    return {layer.name: {w.name.split("/")[-1].split(":")[0]: tuple(w.shape) for w in layer.weights}
            for layer in model.layers if layer.weights}


def set_keras_weights(model, weights: dict[str, dict[str, np.ndarray]]) -> None:
    for layer in model.layers:
        if layer.name in weights:
            vals = weights[layer.name]
            for w in layer.weights:
                name = w.name.split("/")[-1].split(":")[0]
                if name in vals:
                    w.assign(np.asarray(vals[name], dtype=w.dtype))


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _shape(t) -> list:
    return [None if d is None else int(d) for d in t.shape[1:]]


def layer_info(layer) -> dict[str, Any]:
    cfg = layer.get_config()
    info: dict[str, Any] = {"class": type(layer).__name__}
    for k in CONFIG_KEYS:
        if k in cfg:
            info[k] = _jsonable(cfg[k])
    info["trainable_params"] = int(sum(math.prod(w.shape) for w in layer.trainable_weights))
    info["non_trainable_params"] = int(sum(math.prod(w.shape) for w in layer.non_trainable_weights))
    try:
        info["output_shape"] = _shape(layer.output)
        inp = layer.input
        info["input_shape"] = [_shape(t) for t in inp] if isinstance(inp, (list, tuple)) else _shape(inp)
    except (AttributeError, ValueError):
        pass
    reg = getattr(layer, "kernel_regularizer", None)
    if reg is not None and hasattr(reg, "l2"):
        info["kernel_l2"] = float(reg.l2)
    return info


def param_refs_for(model, taps: list[Tap]) -> list[ParamRef]:
    """Every trainable Keras variable, with the torch key its tap maps it to."""
    by_layer = {t.ref: t for t in taps if t.weighted}
    refs = []
    for layer in model.layers:
        for w in layer.trainable_weights:
            var = w.name.split("/")[-1].split(":")[0]
            tap = by_layer.get(layer.name)
            if tap is not None and var in LAYER_VARS[tap.kind]:
                prefix = f"{tap.port}." if tap.port else ""
                refs.append(ParamRef(prefix + LAYER_VARS[tap.kind][var], layer.name, var, tap.kind))
            else:
                refs.append(ParamRef(f"<unaligned:{layer.name}/{var}>", layer.name, var, "other"))
    return refs


def keras_loss(ops, keras, spec: LossSpec, y, pred, from_logits: bool = False):
    """The reference loss. ``categorical_crossentropy``: Keras' own function (clips probabilities to
    [eps, 1 - eps], eps = keras.config.epsilon()); ``mse``; ``l1_sum`` (Caffe ASUM)."""
    if spec.name == "categorical_crossentropy":
        per = keras.losses.categorical_crossentropy(y, pred, from_logits=from_logits,
                                                    label_smoothing=spec.label_smoothing)
    elif spec.name == "mse":
        per = ops.mean(ops.square(pred - y), axis=-1)
    elif spec.name == "l1_sum":
        return ops.sum(ops.abs(pred - y))
    else:
        raise ValueError(f"expected loss categorical_crossentropy, mse or l1_sum. Received: {spec.name!r}.")
    return ops.mean(per) if spec.reduction == "mean" else ops.sum(per)


class KerasSide:
    """A built Keras reference with tap models; every call leaves the model's weights as they were."""

    def __init__(self, model, taps: list[Tap]):
        import keras

        self.keras = keras
        self.model = model
        self.taps = taps
        self.tap_list = [t for t in taps if t.ref]
        missing = [t.ref for t in self.tap_list if t.ref not in {layer.name for layer in model.layers}]
        if missing:
            raise KeyError(f"reference model has no layer(s) {missing[:5]}: check the pair's taps")
        self._build_tap_model()

    def _build_tap_model(self):
        keras = self.keras
        outs, index = [], {}

        def slot(t):
            if id(t) not in index:
                index[id(t)] = len(outs)
                outs.append(t)
            return index[id(t)]

        self.out_idx = {}
        self.in_idx = {}
        for tap in self.tap_list:
            layer = self.model.get_layer(tap.ref)
            self.out_idx[tap.path] = slot(layer.output)
            try:
                inp = layer.input
            except (AttributeError, ValueError):
                continue
            inps = list(inp) if isinstance(inp, (list, tuple)) else [inp]
            self.in_idx[tap.path] = [slot(i) for i in inps]
        self.final_idx = slot(self.model.outputs[0])
        self.tap_model = keras.Model(self.model.inputs, outs)

    def snapshot(self):
        return [v.numpy().copy() for v in self.model.weights]

    def restore(self, snap):
        for v, a in zip(self.model.weights, snap):
            v.assign(a)

    def forward_eval(self, x):
        import tensorflow as tf

        # an explicit float64 tensor: a raw numpy float64 array handed to TF ops was measured coming back
        # float32-rounded on a later call in the same process (tf.nn.max_pool2d)
        outs = self.tap_model([tf.constant(x)], training=False)
        arrays = [np.array(o) for o in outs]  # one numpy copy per distinct tensor, shared by acts and inputs
        del outs
        acts = {p: arrays[i] for p, i in self.out_idx.items()}
        inputs = {p: [arrays[i] for i in idx] for p, idx in self.in_idx.items()}
        return acts, inputs


def run_reference(spec: PairSpec, *, config: dict, dtype: str, seed: int, batch: int, optimizer: OptimizerSpec,
                  steps: int, stages: set[str], weights: dict | None = None, weights_file=None, model=None,
                  taps: list[Tap] | None = None, progress=None) -> ReferenceRun:
    """Build (or take) the Keras model, run every requested stage, return numpy results."""
    from parity.env import import_tensorflow

    keras = import_tensorflow()
    import tensorflow as tf
    from keras import ops

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    # The dtype stays the check's for the whole run: Keras creates optimizer variables (the learning rate
    # too) in floatx, and a float32 lr of 0.01 is off by 2.2e-8 relative.
    with keras_dtype(dtype):
        return _run_reference(spec, keras, tf, ops, model, config=config, dtype=dtype, seed=seed, batch=batch,
                              optimizer=optimizer, steps=steps, stages=stages, weights=weights,
                              weights_file=weights_file, taps=taps, say=say, t0=t0)


@contextlib.contextmanager
def keras_dtype(dtype: str):
    """Build and run Keras models in ``dtype``, then restore the previous settings. Sets both floatx and the
    global dtype policy: in Keras 3.15, once any layer exists, new layers follow the policy, not floatx alone
    (a float64 check silently built float32 layers before this was set)."""
    import keras

    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


def _run_reference(spec, keras, tf, ops, model, *, config, dtype, seed, batch, optimizer, steps, stages, weights,
                   weights_file, taps, say, t0) -> ReferenceRun:
    from parity.spec import resolve

    if model is None:
        keras.utils.set_random_seed(seed)
        model = resolve(spec.reference)(**config)
    taps = taps if taps is not None else spec.taps(config)
    side = KerasSide(model, taps)
    original = side.snapshot()
    kinds = {t.ref: t.kind for t in taps}
    weights_report = None
    if weights_file is not None:
        weights, weights_report = weights_file(expected_weights(model))
    if weights is not None:
        set_keras_weights(model, weights)
    elif spec.randomize_bn:
        w = keras_weights(model)
        randomize_weights(w, kinds, seed)
        set_keras_weights(model, w)
    initial = keras_weights(model)
    structure = {layer.name: layer_info(layer) for layer in model.layers}
    tr = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    ntr = int(sum(math.prod(w.shape) for w in model.non_trainable_weights))
    l2 = {name: info["kernel_l2"] for name, info in structure.items() if info.get("kernel_l2")}
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    refs = param_refs_for(model, taps)
    n_steps = max(steps, 1) if "step" in stages else (1 if ({"gradients", "forward_train"} & stages) else 0)
    inputs, labels = [], []
    for k in range(max(n_steps, 1)):
        x, y = make_batch(seed, k, batch, input_shape, spec.target(config), spec.input_range, dtype)
        inputs.append(x)
        labels.append(y)
    run = ReferenceRun(
        meta={"pair": spec.name, "config": _jsonable(config), "dtype": dtype, "seed": seed, "batch": batch,
              "steps": steps, "loss": {"name": spec.loss.name, "reduction": spec.loss.reduction},
              "keras_version": keras.__version__, "tensorflow_version": tf.__version__,
              "input_shape": list(input_shape)},
        taps=taps, inputs=inputs, labels=labels, weights=initial, structure=structure,
        model_params={"total": tr + ntr, "trainable": tr, "non_trainable": ntr}, l2=l2, param_refs=refs)
    if weights_report is not None:
        run.meta["weights_report"] = weights_report.to_dict()
    run.seconds["build"] = time.perf_counter() - t0
    try:
        if stages & {"forward_eval", "isolated", "structure"}:
            t = time.perf_counter()
            say("reference: forward (eval)")
            run.eval_acts, run.eval_inputs = side.forward_eval(inputs[0])
            run.seconds["forward_eval"] = time.perf_counter() - t
        if n_steps:
            _train(run, side, spec, optimizer, n_steps, stages, keras, tf, ops, say)
    finally:
        side.restore(original)
    return run


def _train(run: ReferenceRun, side: KerasSide, spec: PairSpec, optimizer: OptimizerSpec, n_steps: int,
           stages: set[str], keras, tf, ops, say) -> None:
    model = side.model
    tvars = list(model.trainable_weights)
    sources = [v.value for v in tvars]  # the tf.Variables behind Keras 3 variables (what the tape watches)
    var_refs = run.param_refs
    adapter = get_adapter(optimizer.kind) if "step" in stages else None
    opt = adapter.keras_optimizer(optimizer, var_refs) if adapter else None
    bn_layers = [t for t in run.taps if t.kind == "batchnorm"]
    from_logits = spec.loss.reference_from_logits
    for k in range(n_steps):
        t = time.perf_counter()
        say(f"reference: train forward + backward (step {k + 1}/{n_steps})")
        x = tf.constant(run.inputs[k])
        y = tf.constant(run.labels[k])
        with tf.GradientTape(persistent=True) as tape:
            outs = side.tap_model([x], training=True)
            data_loss = keras_loss(ops, keras, spec.loss, y, outs[side.final_idx], from_logits)
            reg = [loss for loss in model.losses]
            reg_loss = ops.sum(ops.stack(reg)) if reg else None
        if k == 0:
            paths = list(side.out_idx)
            run.train_acts = {p: np.asarray(outs[side.out_idx[p]]) for p in paths}
            for tap in bn_layers:
                layer = model.get_layer(tap.ref)
                run.bn_stats[tap.ref] = {"moving_mean": layer.moving_mean.numpy().copy(),
                                         "moving_variance": layer.moving_variance.numpy().copy()}
                shp = run.train_acts[tap.path].shape
                run.bn_n[tap.ref] = int(np.prod(shp) // shp[-1])
            run.loss = float(data_loss)
            targets = [outs[side.out_idx[p]] for p in paths]
            grads = tape.gradient(data_loss, targets + sources,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            run.act_grads = {p: np.asarray(g) for p, g in zip(paths, grads[:len(paths)])}
            gparams = grads[len(paths):]
            run.param_grads = {}
            for r, g in zip(var_refs, gparams):
                run.param_grads.setdefault(r.layer, {})[r.var] = np.asarray(g)
            del targets, grads
            run.seconds["train"] = time.perf_counter() - t
        else:
            gparams = tape.gradient(data_loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        del outs
        if adapter is None:
            del tape
            break
        t = time.perf_counter()
        total = list(gparams)
        if reg_loss is not None:
            greg = tape.gradient(reg_loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            total = [a + b for a, b in zip(total, greg)]
        del tape
        total = adapter.keras_prepare(optimizer, k, opt, total, tvars, var_refs)
        opt.apply_gradients(zip(total, tvars))
        params = {}
        for r, v in zip(var_refs, tvars):
            params.setdefault(r.layer, {})[r.var] = v.numpy().copy()
        run.steps.append({"lr": optimizer.lr_at(k), "loss": float(data_loss), "params": params,
                          "slots": adapter.keras_slots(opt, tvars, var_refs)})
        run.seconds[f"step{k}"] = time.perf_counter() - t
