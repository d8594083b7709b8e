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

from parity.core.data import make_batch, randomize_weights
from parity.core.families import keras_call_kwargs, keras_info, keras_var_name, refuse_unsupported
from parity.core.errors import UsageError
from parity.core.families.embedding import mask_zero_refusal, masks_zero, token_range
from parity.core.env import import_tensorflow, trim_heap
from parity.core.spill import SpillDict
from parity.optim.adapters import ParamRef, get_adapter
from parity.core.spec import LossSpec, OptimizerSpec, PairSpec, Tap, resolve
from weight_converters.attention import PACKED_PARAMS, packed_value
from weight_converters.keras import LAYER_VARS, companion_vars

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
    #: where the large arrays live when the run was made with ``spill`` (see :mod:`parity.core.spill`); None: memory
    store: Any = None
    #: the reference's arrays already in the port's layout, kept across the checks of a ``--watch`` session
    #: (``parity.stages.forward.PortLayoutMemo``); None: each check moves them
    port_layout: Any = None


def _var(layer, w) -> str:
    """The variable's name inside its layer (``kernel``; ``forward/kernel`` in a Bidirectional)."""
    return keras_var_name(layer.name, w.name.split("/")[-1].split(":")[0], getattr(w, "path", ""))


def keras_weights(model, store=None, only=None) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {var: array}}`` of every layer that has variables (Keras 3 ``variable.name`` is the var).
    With a :class:`parity.core.spill.SpillStore`, each array goes to it as it is read (one array in memory at a
    time); ``only(layer, var)`` selects variables."""
    out = {}
    for layer in model.layers:
        if layer.weights:
            vals = {}
            for w in layer.weights:
                var = _var(layer, w)
                if only is None or only(layer.name, var):
                    # (a variable's .numpy() is a copy of its own: handed over, not copied again)
                    vals[var] = store.put(w.numpy(), owned=True) if store is not None else np.array(w.numpy())
            if vals:
                out[layer.name] = vals
    if store is not None:
        return SpillDict.from_handles(store, {k: SpillDict.from_handles(store, v) for k, v in out.items()})
    return out


def expected_weights(model) -> dict[str, dict[str, tuple]]:
    return {layer.name: {_var(layer, w): tuple(w.shape) for w in layer.weights}
            for layer in model.layers if layer.weights}


def set_keras_weights(model, weights: dict[str, dict[str, np.ndarray]]) -> None:
    for layer in model.layers:
        if layer.name in weights:
            vals = weights[layer.name]
            for w in layer.weights:
                name = _var(layer, w)
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
    info.update({k: _jsonable(v) for k, v in keras_info(type(layer).__name__, {**cfg, **keras_call_kwargs(layer)}
                                                          ).items()})  # layer families (and call kwargs they read)
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
            var = _var(layer, w)
            tap = by_layer.get(layer.name)
            if tap is not None and var in LAYER_VARS[tap.kind]:
                prefix = f"{tap.port}." if tap.port else ""
                refs.append(ParamRef(prefix + LAYER_VARS[tap.kind][var], layer.name, var, tap.kind))
            else:
                refs.append(ParamRef(f"<unaligned:{layer.name}/{var}>", layer.name, var, "other"))
    return refs


def with_companions(refs: list[ParamRef]) -> list[ParamRef]:
    """``refs`` plus, after each, the port parameters its Keras variable also fills (``companion_vars``: a GRU
    ``reset_after`` bias (2, 3H) is ``bias_ih`` = row 0 and ``bias_hh`` = row 1): their gradients, updates and
    slots are judged against that part of the variable, and the port's optimizer trains them. The reference's
    own list stays one ref per Keras variable (its gradients and slots are zipped with the variables)."""
    out = []
    for r in refs:
        out.append(r)
        prefix = r.key[: len(r.key) - len(LAYER_VARS.get(r.kind, {}).get(r.var, r.key))]
        out += [ParamRef(prefix + suffix, r.layer, var, r.kind) for suffix, var in companion_vars(r.kind, r.var)]
    return out


def keras_loss(ops, keras, spec: LossSpec, y, pred, from_logits: bool = False):
    """The reference loss. ``categorical_crossentropy``: Keras' own function (clips probabilities to
    [eps, 1 - eps], eps = keras.config.epsilon()); ``mse``; ``l1_sum`` (Caffe ASUM). Several outputs
    (``spec.parts``): Keras' ``sum_i loss_weight_i * loss_i`` over the outputs' columns, in output order."""
    if spec.parts:
        total, at = None, 0
        for part, width, weight, _ in spec.parts:
            term = keras_loss(ops, keras, part, y[:, at:at + width], pred[:, at:at + width],
                              part.reference_from_logits) * weight
            total = term if total is None else total + term
            at += width
        return total
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


class _Recorder:
    """Where the tap layers send values: ``forward(path, tensor)`` as each tapped layer's output (or a layer
    input, path ``"<tap path><in K>"``) is computed, ``backward(path, tensor)`` as its gradient is."""

    def __init__(self):
        self.forward = None
        self.backward = None


#: suffix of a tap-layer path that records a layer's input (for the isolated stage), not its output
INPUT_TAP = "<in"


def _tap_layer(keras, tf, path: str, recorder: _Recorder, name: str):
    """An identity layer that hands its value to ``recorder`` in the forward pass and its gradient in the
    backward pass (``tf.custom_gradient``): activations and their gradients leave TensorFlow one at a time,
    instead of as one list of every tap output (a persistent tape plus a full set of activation gradients
    held at once was the peak of an Xception check)."""

    class ParityTap(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=name, trainable=False, autocast=False)
            self.tap_path = path
            self.supports_masking = True  # an Embedding(mask_zero=True)'s mask passes through to the next layer

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, dtype=x.dtype)

        def call(self, x):
            @tf.custom_gradient
            def identity(t):
                if recorder.forward is not None:
                    recorder.forward(path, t)

                def grad(dy):
                    if recorder.backward is not None:
                        recorder.backward(path, dy)
                    return dy

                return tf.identity(t), grad

            out = identity(x)
            # Keras' softmax marks its output with the logits, and crossentropy then works from those (no
            # probability clipping): keep the mark, or the tap would change the reference's loss
            logits = getattr(x, "_keras_logits", None)
            if logits is not None:
                out._keras_logits = logits
            return out

    return ParityTap()


class KerasSide:
    """A built Keras reference with tap layers inserted after every tapped layer (the same layers, so the
    same weights: ``keras.models.clone_model`` with ``clone_function`` returning each layer itself); every
    call leaves the model's weights as they were."""

    def __init__(self, model, taps: list[Tap]):
        import keras

        self.keras = keras
        self.model = model
        self.taps = taps
        self.tap_list = [t for t in taps if t.ref]
        missing = [t.ref for t in self.tap_list if t.ref not in {layer.name for layer in model.layers}]
        if missing:
            raise KeyError(f"reference model has no layer(s) {missing[:5]}: check the pair's taps")
        self.recorder = _Recorder()
        self._build_tap_model()

    def _build_tap_model(self):
        import tensorflow as tf

        keras = self.keras
        by_ref = {t.ref: t for t in self.tap_list}
        produced: dict[int, str] = {}   # id(symbolic tensor) -> the recorded path that carries its value
        wrapped: dict[int, Any] = {}    # id(untapped symbolic tensor) -> its input-tap output
        self.inputs_of: dict[str, list[str]] = {}
        counter = [0]

        def tap_layer(path):
            counter[0] += 1
            return _tap_layer(keras, tf, path, self.recorder, f"parity_tap_{counter[0]}")

        def call_function(layer, *args, **kwargs):
            tap = by_ref.get(layer.name)
            if tap is None or tap.path in self.inputs_of:
                return layer(*args, **kwargs)
            names: list[str] = []

            def through(a):
                if not isinstance(a, keras.KerasTensor):
                    return a
                if id(a) in produced:
                    names.append(produced[id(a)])
                    return a
                if id(a) not in wrapped:
                    key = f"{tap.path}{INPUT_TAP}{len(names)}>"
                    out = tap_layer(key)(a)
                    wrapped[id(a)] = out
                    produced[id(out)] = key
                out = wrapped[id(a)]
                names.append(produced[id(out)])
                return out

            args = keras.tree.map_structure(through, args)
            self.inputs_of[tap.path] = names
            out = layer(*args, **kwargs)
            if not isinstance(out, keras.KerasTensor):  # a multi-output layer: not tapped
                return out
            out = tap_layer(tap.path)(out)
            produced[id(out)] = tap.path
            return out

        if isinstance(self.model, keras.Sequential):  # clone_model takes no call_function for these
            first = self.model.inputs[0]
            x = inp = keras.Input(batch_shape=tuple(first.shape), dtype=first.dtype)
            for layer in self.model.layers:
                x = call_function(layer, x)
            self.tap_model = keras.Model(inp, x)
        else:
            self.tap_model = keras.models.clone_model(self.model, clone_function=lambda layer: layer,
                                                      call_function=call_function)
        self.input_keys = sorted({k for names in self.inputs_of.values() for k in names if INPUT_TAP in k})

    def snapshot(self):
        return [v.numpy().copy() for v in self.model.weights]

    def restore(self, snap):
        for v, a in zip(self.model.weights, snap):
            v.assign(a)

    @contextlib.contextmanager
    def recording(self, forward=None, backward=None):
        self.recorder.forward, self.recorder.backward = forward, backward
        try:
            yield
        finally:
            self.recorder.forward = self.recorder.backward = None

    def forward_eval(self, x, store=None):
        """Every tap's output and every tapped layer's inputs in inference mode: ``(acts, inputs)``, with
        ``inputs[path]`` sharing the arrays of ``acts`` where a layer's input is another tap's output."""
        import tensorflow as tf

        values: dict[str, Any] = {}

        def forward(path, t):
            if path not in values:
                # spilled: the tensor's own buffer (an eager tensor is immutable, the array keeps it alive),
                # written by the store's thread without a copy; in memory: a copy
                values[path] = store.put(np.asarray(t), owned=True) if store is not None else t.numpy()

        # an explicit float64 tensor: a raw numpy float64 array handed to TF ops was measured coming back
        # float32-rounded on a later call in the same process (tf.nn.max_pool2d)
        with self.recording(forward=forward):
            out = self.tap_model(tf.constant(x), training=False)
        del out
        if store is not None:
            acts = SpillDict.from_handles(store, {t.path: values[t.path] for t in self.tap_list if t.path in values})
            inputs = SpillDict.from_handles(store, {p: [values[k] for k in names]
                                                    for p, names in self.inputs_of.items()})
            return acts, inputs
        acts = {t.path: values[t.path] for t in self.tap_list if t.path in values}
        inputs = {p: [values[k] for k in names] for p, names in self.inputs_of.items()}
        return acts, inputs


def run_reference(spec: PairSpec, *, config: dict, dtype: str, seed: int, batch: int, optimizer: OptimizerSpec,
                  steps: int, stages: set[str], weights: dict | None = None, weights_file=None, model=None,
                  taps: list[Tap] | None = None, progress=None, spill=None) -> ReferenceRun:
    """Build (or take) the Keras model, run every requested stage, return numpy results. With ``spill`` (a
    :class:`parity.core.spill.SpillStore`) the large arrays go to disk as they are produced; a model built here
    is released before returning (a model passed in is restored to its weights instead)."""
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
                              weights_file=weights_file, taps=taps, say=say, t0=t0, store=spill)


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
                   weights_file, taps, say, t0, store=None) -> ReferenceRun:
    owned = model is None and not spec.reference_shared
    if model is None:
        keras.utils.set_random_seed(seed)
        model = resolve(spec.reference)(**config)
    taps = taps if taps is not None else spec.taps(config)
    refuse_unsupported(model.layers, {t.ref: t.kind for t in taps})  # one line, exit 2, before any conversion
    side = KerasSide(model, taps)
    # a model passed in is given back as it came; one built here is dropped (no copy of its weights needed)
    original = None if owned else side.snapshot()
    kinds = {t.ref: t.kind for t in taps}
    weights_report = None
    if weights_file is not None:
        weights, weights_report = weights_file(expected_weights(model))
    if weights is not None:
        set_keras_weights(model, weights)
        weights = None
    elif spec.randomize_bn:
        # only the variables randomize_weights draws for (BatchNorm and biases): not a copy of every kernel
        # "forward/bias", "query/bias": the biases of a Bidirectional or MultiHeadAttention layer too
        w = keras_weights(model, only=lambda layer, var: kinds.get(layer) == "batchnorm"
                          or var.rsplit("/", 1)[-1] == "bias")
        randomize_weights(w, kinds, seed)
        set_keras_weights(model, w)
        del w
    initial = keras_weights(model, store=store)
    structure = {layer.name: layer_info(layer) for layer in model.layers}
    tr = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    ntr = int(sum(math.prod(w.shape) for w in model.non_trainable_weights))
    l2 = {name: info["kernel_l2"] for name, info in structure.items() if info.get("kernel_l2")}
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    refs = param_refs_for(model, taps)
    n_steps = max(steps, 1) if "step" in stages else (1 if ({"gradients", "forward_train"} & stages) else 0)
    inputs, labels = [], []
    integer = "int" in str(model.inputs[0].dtype)  # token ids for an Embedding, within its vocabulary
    in_range = token_range(model.layers, spec.input_range) if integer else spec.input_range
    refused = mask_zero_refusal(model.layers) if integer else None
    if refused:
        raise UsageError(refused)
    for k in range(max(n_steps, 1)):
        x, y = make_batch(seed, k, batch, input_shape, spec.target(config), in_range, dtype, integer=integer,
                          post_padded=integer and masks_zero(model.layers))
        inputs.append(x)
        labels.append(y)
    run = ReferenceRun(
        meta={"pair": spec.name, "config": _jsonable(config), "dtype": dtype, "seed": seed, "batch": batch,
              "steps": steps, "loss": {"name": spec.loss.name, "reduction": spec.loss.reduction},
              "keras_version": keras.__version__, "tensorflow_version": tf.__version__,
              "input_shape": list(input_shape)},
        taps=taps, inputs=inputs, labels=labels, weights=initial, structure=structure,
        model_params={"total": tr + ntr, "trainable": tr, "non_trainable": ntr}, l2=l2, param_refs=refs,
        store=store)
    if weights_report is not None:
        run.meta["weights_report"] = weights_report.to_dict()
    run.seconds["build"] = time.perf_counter() - t0
    try:
        if stages & {"forward_eval", "isolated", "structure"}:
            t = time.perf_counter()
            say("reference: forward (eval)")
            run.eval_acts, run.eval_inputs = side.forward_eval(inputs[0], store=store)
            run.seconds["forward_eval"] = time.perf_counter() - t
        if n_steps:
            _train(run, side, spec, optimizer, n_steps, stages, keras, tf, ops, say)
    finally:
        if original is not None:
            side.restore(original)
    del side, model, original
    if owned:
        _release_keras(keras)
    pack_attention_refs(run)
    return run


def pack_attention_refs(run: ReferenceRun) -> None:
    """A MultiHeadAttention ported as ``nn.MultiheadAttention`` (tap kind ``attention_packed``): its query, key
    and value variables all live in the port's ``in_proj_weight`` / ``in_proj_bias``. After the reference ran
    (its own lists zip one ref per Keras variable), their six refs become two, one per packed torch parameter,
    and the gradients, updated values and optimizer slots get the packed arrays under those names
    (``weight_converters.attention.packed_value``), so the gradient and step stages judge in_proj like any
    parameter."""
    packed = {t.ref: t for t in run.taps if t.kind == "attention_packed" and t.weighted}
    if not packed:
        return
    refs, done = [], set()
    for r in run.param_refs:
        tap = packed.get(r.layer)
        param = next((p for p, vs in PACKED_PARAMS.items() if r.var in vs), None) if tap is not None else None
        if param is None:
            refs.append(r)
            continue
        if (r.layer, param) in done:
            continue
        done.add((r.layer, param))
        key = f"{tap.port}.{param}" if tap.port else param
        refs.append(ParamRef(key, r.layer, param, "attention_packed"))
        keys = {var: f"<unaligned:{r.layer}/{var}>" for var in PACKED_PARAMS[param]}
        grads = run.param_grads.get(r.layer) if run.param_grads is not None else None
        if grads is not None:
            value = packed_value(param, grads)
            if value is not None:
                _inner(run.param_grads, r.layer)[param] = value
        for step in run.steps:
            value = packed_value(param, step["params"].get(r.layer) or {})
            if value is not None:
                _inner(step["params"], r.layer)[param] = value
            slots = {var: step["slots"].get(k) or {} for var, k in keys.items()}
            names = set.intersection(*(set(v) for v in slots.values()))
            if names:
                step["slots"][key] = {n: packed_value(param, {var: slots[var][n] for var in slots}) for n in names}
    run.param_refs = refs


def _release_keras(keras) -> None:
    """Free a model this run built (its variables, the tap model, the optimizer's slots) before the port runs:
    the Keras graph holds reference cycles, so it needs a collection; then return freed heap to the OS.
    (Not ``keras.backend.clear_session()``: it would also reset the caller's Keras settings.)"""
    import gc

    gc.collect()
    trim_heap()


def _new_dict(store):
    """A plain dict, or a :class:`parity.core.spill.SpillDict` (inner dicts assigned to it become SpillDicts too)."""
    if store is None:
        return {}
    return SpillDict(store)


def _adopt(d, key, t) -> None:
    """``d[key] =`` eager tensor ``t``'s value: into a SpillDict its immutable buffer, handed over (no copy; the
    store's thread writes it and lets it go); into a plain dict a copy."""
    if hasattr(d, "adopt"):
        d.adopt(key, np.asarray(t))
    else:
        d[key] = t.numpy()


def _inner(d, key):
    """``d[key]`` for writing: the SpillDict itself, not a loaded copy."""
    return d.handle(key) if hasattr(d, "handle") else d[key]


def _train(run: ReferenceRun, side: KerasSide, spec: PairSpec, optimizer: OptimizerSpec, n_steps: int,
           stages: set[str], keras, tf, ops, say) -> None:
    model = side.model
    store = run.store
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
        record = k == 0
        train_acts, act_grads, shapes = _new_dict(store), _new_dict(store), {}

        def forward(path, value):
            if INPUT_TAP not in path and path not in shapes:
                shapes[path] = tuple(value.shape)
                _adopt(train_acts, path, value)

        def backward(path, g):
            if INPUT_TAP not in path and path not in act_grads:
                _adopt(act_grads, path, g)

        # activations and their gradients leave TF through the tap layers, one at a time
        with side.recording(forward=forward if record else None, backward=backward if record else None):
            with tf.GradientTape() as tape:
                out = side.tap_model(x, training=True)
                data_loss = keras_loss(ops, keras, spec.loss, y, out, from_logits)
            gparams = tape.gradient(data_loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            # an Embedding's gradient is sparse (IndexedSlices): dense, like torch's default
            gparams = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gparams]
        del tape, out
        step_bn = {tap.ref: {"moving_mean": model.get_layer(tap.ref).moving_mean.numpy().copy(),
                             "moving_variance": model.get_layer(tap.ref).moving_variance.numpy().copy()}
                   for tap in bn_layers}  # after this step's train forward (the trajectory tracks them)
        if record:
            run.train_acts = train_acts
            for path in shapes:  # a tap whose output does not reach the loss gets no gradient: zeros
                if path not in act_grads:
                    act_grads[path] = np.zeros(shapes[path], dtype=train_acts[path].dtype)
            run.act_grads = act_grads
            for tap in bn_layers:
                layer = model.get_layer(tap.ref)
                run.bn_stats[tap.ref] = {"moving_mean": layer.moving_mean.numpy().copy(),
                                         "moving_variance": layer.moving_variance.numpy().copy()}
                shp = shapes[tap.path]
                run.bn_n[tap.ref] = int(np.prod(shp) // shp[-1])
            run.loss = float(data_loss)
            run.param_grads = _new_dict(store)
            for r, g in zip(var_refs, gparams):
                if r.layer not in run.param_grads:
                    run.param_grads[r.layer] = {}
                _adopt(_inner(run.param_grads, r.layer), r.var, g)
            run.seconds["train"] = time.perf_counter() - t
        del train_acts, act_grads
        if adapter is None:
            break
        t = time.perf_counter()
        say(f"reference: optimizer step {k + 1}/{n_steps}")
        total = list(gparams)
        with tf.GradientTape() as tape:  # the regularisation losses, from the weights alone
            reg = list(model.losses)
            reg_loss = ops.sum(ops.stack(reg)) if reg else None
        if reg_loss is not None:
            greg = tape.gradient(reg_loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            total = [a + b for a, b in zip(total, greg)]
            del greg
        del tape
        total = adapter.keras_prepare(optimizer, k, opt, total, tvars, var_refs)
        opt.apply_gradients(zip(total, tvars))
        del total, gparams
        params = _new_dict(store)
        for r, v in zip(var_refs, tvars):
            if r.layer not in params:
                params[r.layer] = {}
            if store is None:
                _inner(params, r.layer)[r.var] = v.numpy().copy()
            else:  # a variable's .numpy() is a copy of its own: handed over
                _inner(params, r.layer).adopt(r.var, v.numpy())
        slots = _new_dict(store)
        for r, v in zip(var_refs, tvars):  # one variable's slots at a time (GOTURN's momentum: 0.9 GB)
            for key, val in adapter.keras_slots(opt, [v], [r]).items():
                slots[key] = val
                for c in with_companions([r])[1:]:  # a GRU's bias_hh: row 1 of the same slot (with_companions)
                    slots[c.key] = val
        run.steps.append({"lr": optimizer.lr_at(k), "loss": float(data_loss), "params": params, "slots": slots,
                          "bn_stats": step_bn})
        del slots
        run.seconds[f"step{k}"] = time.perf_counter() - t
