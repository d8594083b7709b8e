"""Your own models: a :class:`parity.core.spec.PairSpec` built from a Keras model and a torch port that parity has
never seen, aligned automatically (:mod:`parity.user.align`), so that every stage of the check runs on them.

Two entry points:

- ``parity check --reference mymod:build_keras|model.keras --port mymod:build_torch [--input-shape [NAME=]SHAPE
  ...] [--loss mse] [--align keras_layer=port.module.path ...] [--custom-objects MOD]`` ->
  :func:`spec_from_user_models`;
- ``parity.compare(keras_model, torch_module, **check_kwargs)`` -> :func:`compare`, on live objects.

What is inferred: the taps (alignment), the loss (a reference that ends in softmax is trained with
categorical cross-entropy, the port's logits going through ``F.cross_entropy``; anything else with MSE),
the target (one-hot classes or regression values of the output's width) and the inputs (any per-sample shape,
several inputs packed into one array and handed to the port's ``forward`` in the Keras model's order and the
port's layout: :mod:`parity.user.inputs`); several outputs are packed the same way, each compared, the loss
summed with the compiled ``loss_weights`` (:mod:`parity.user.outputs`). The port is checked through a view (:mod:`parity.user.view`) that
adds the module groups and call aliases the alignment found. The alignment travels on the spec
(``spec.alignment``) into the result; an incomplete one (weights left on either side, one port module for
several reference layers) is the check's first verdict (:func:`alignment_verdict`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Any, Callable

from parity.core.env import import_tensorflow
from parity.core.errors import UsageError, UserCodeError, label_of
from parity.core.options import check_input_file, resolve_user
from parity.core.results import CheckResult, Finding
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap
from parity.optim.user import SAVED_TRAINING_CONFIG, training_config_from_file
from parity.diagnosis.alignment import alignment_findings, annotate_alignment  # noqa: F401  (public names)
from parity.diagnosis.registry import result_rule
from parity.harness import check
from parity.user.align import PACKED_OUTPUTS, AlignmentError, align, parse_pins, trace_keras
from parity.user.saved_model import SavedModelError, describe_training_config, load_saved_model
from parity.user.inputs import describe as describe_inputs
from parity.user.inputs import (LAYOUT_SEQ_CHANNELS_FIRST, assign_shapes, choose_layouts, example_inputs,
                                input_names, packed_reference, parse_input_shapes, to_port_layout, torch_unpacker)
from parity.user.view import port_view
from parity.user.outputs import (COMPILE_ATTR, HEADS_ATTR, heads_of, multi_loss, packed_outputs, target_of,
                                 torch_packer)
from parity.user.outputs import describe as describe_outputs

#: Optimizers offered for user pairs (``--optimizer``): plain SGD with momentum by default, Adam with Keras 3's
#: epsilon (the harness converts it to torch's per-step equivalent).
USER_SGD = OptimizerSpec(kind="sgd", lr=0.01, momentum=0.9)
USER_ADAM = OptimizerSpec(kind="adam", lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
LOSSES = ("categorical_crossentropy", "mse", "l1_sum")

class UserPairError(UsageError):
    """A problem with the user's models or options; one line that says what to do (the CLI exits 2)."""


def _usage_error(msg: str):
    return UserPairError(msg)


def parse_input_shape(text) -> list[tuple[str | None, tuple[int, ...]]]:
    """``--input-shape`` value(s) -> ``[(name or None, per-sample shape)]`` (any shape, in the Keras model's
    layout; repeated or ``name=`` for several inputs): :func:`parity.user.inputs.parse_input_shapes`."""
    return parse_input_shapes(text)


#: what ``--reference FILE`` accepts: a model saved by Keras 3 (``.keras``, ``.h5``) or a Keras 2-era full-model
#: HDF5 file (``model.save("m.h5")``), loaded under ``safe_mode=True`` (:mod:`parity.user.saved_model`)
MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_model_file(reference) -> bool:
    """``--reference`` names a saved model (by its suffix) rather than a ``module:function`` builder."""
    return isinstance(reference, str) and reference.lower().endswith(MODEL_FILE_SUFFIXES) and ":" not in reference


def custom_objects_of(module_name: str | None) -> dict[str, Any]:
    """``--custom-objects MOD``: the public classes and functions of the module the user named (imported, as
    a builder module is); Keras uses those the file's config refers to by name."""
    if not module_name:
        return {}
    import importlib

    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise _usage_error(f"--custom-objects {module_name}: expected an importable module holding the model's "
                           f"custom layers. Received: {type(exc).__name__}: {exc}.") from None
    except Exception as exc:  # noqa: BLE001  (the user's module raised on import)
        raise UserCodeError(f"--custom-objects {module_name} (importing it)", exc) from exc
    return {k: v for k, v in vars(mod).items() if not k.startswith("_") and callable(v)}


def reference_from_file(path: str, custom_objects: str | None = None) -> Callable:
    """A builder that loads the saved model at ``path`` with its own weights. Loading executes nothing named in
    the file beyond Keras' own deserialisation under ``safe_mode=True`` (a ``Lambda`` holding Python code is
    refused); the optimizer state is not loaded (``compile=False``)."""
    check_input_file(path, "--reference", "saved Keras model (.keras, .h5)")
    objects = custom_objects_of(custom_objects)

    def load_reference(**_config):
        try:
            model = in_current_floatx(load_saved_model(path, objects))
        except SavedModelError:
            raise
        except (ValueError, TypeError, OSError, KeyError) as exc:
            text = str(exc).strip().splitlines()
            raise _usage_error(f"--reference {path}: expected a model saved by Keras (model.save) whose layers "
                               f"Keras can rebuild safely. Received: {type(exc).__name__}: "
                               f"{text[0] if text else ''}. Pass its custom layers with --custom-objects MODULE "
                               "(a Lambda layer is refused: rebuild the model with a builder instead).") from None
        # its training configuration, read as data (parity.optim.user: --port-optimizer compares with it); one
        # Keras 3 cannot express (a Keras 2 'decay') leaves the model uncompiled, the reason in its settings
        try:
            saved = training_config_from_file(path)
        except UsageError as exc:
            saved, unusable[path] = (None, None), str(exc)
        object.__setattr__(model, SAVED_TRAINING_CONFIG, saved)  # not a tracked weight
        return model

    unusable: dict[str, str] = {}
    load_reference.unusable_training_config = unusable
    load_reference.__qualname__ = load_reference.__name__ = re.sub(r"\W+", "_", os.path.basename(path)) or "saved"
    return load_reference


def in_current_floatx(model):
    """A loaded model computes in the dtype it was saved with; the check runs in ``keras.config.floatx()``
    (float64 by default): the same layers rebuilt in that dtype, with the saved weights cast to it (exact
    for float32 -> float64)."""
    import keras
    import numpy as np

    want = keras.config.floatx()
    have = {str(w.dtype) for w in model.weights if "float" in str(w.dtype)}
    # a Keras 2 file's InputLayer keeps its "float32" while its other layers (no dtype saved) take the policy's
    have |= {str(t.dtype) for t in model.inputs if "float" in str(t.dtype)}
    if not have or have == {want}:
        return model

    def rebuild(layer):
        cfg = layer.get_config()
        if "dtype" in cfg:
            cfg["dtype"] = want
        return layer.__class__.from_config(cfg)

    names = input_names(model)
    inputs = [keras.Input(tuple(t.shape[1:]), dtype=want if "float" in str(t.dtype) else t.dtype, name=n)
              for t, n in zip(model.inputs, names)]
    try:
        clone = keras.models.clone_model(model, clone_function=rebuild,
                                         input_tensors=inputs if len(inputs) > 1 or isinstance(
                                             model.input, (list, tuple)) else inputs[0])  # a Keras 2 file: [x]
    except (ValueError, TypeError, KeyError, NotImplementedError):
        return model  # a layer that cannot be rebuilt: checked in its saved dtype (the tolerance says so)
    clone.set_weights([np.asarray(w, dtype=want) if np.issubdtype(np.asarray(w).dtype, np.floating) else w
                       for w in model.get_weights()])
    return clone


def _resolve_builder(target, option: str, what: str) -> Callable:
    """The user's builder, located and checked before it is imported (``parity.core.options.resolve_user``);
    whatever it raises when called is reported as the user's (``UserCodeError``, exit 2)."""
    return resolve_user(target, option, what)


def _is_keras_model(obj) -> bool:
    return hasattr(obj, "layers") and hasattr(obj, "get_layer") and hasattr(obj, "inputs")


def _is_torch_module(obj) -> bool:
    return hasattr(obj, "named_modules") and hasattr(obj, "state_dict") and callable(obj)


def _with_input_shape(model, shapes):
    """A model whose input shapes are fully defined: builds an unbuilt Sequential, or clones a one-input model
    with ``None`` dimensions onto ``keras.Input(shape)`` (same layer names, same weights). ``shapes``: the
    parsed ``--input-shape`` values; a fully defined model keeps its own (and must agree with them)."""
    import keras

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        if not shapes:
            raise _usage_error(f"--input-shape: expected the per-sample input shape of the reference model "
                               f"{model.name!r}, which was built without one. Received: none. Pass --input-shape "
                               "(or input_shape=).")
        model.build((None,) + tuple(shapes[0][1]))
        return model
    own = list(zip(input_names(model), (tuple(t.shape[1:]) for t in inputs)))
    wanted = assign_shapes(own, shapes)
    if all(d is not None for _, dims in own for d in dims):
        return model
    if len(inputs) > 1:
        raise _usage_error(f"reference model {model.name!r}: expected fully defined input shapes for a model with "
                           f"several inputs. Received: {[d for _, d in own]}. Build it with keras.Input(shape).")
    clone = keras.models.clone_model(model, input_tensors=keras.Input(tuple(wanted[0])))
    clone.set_weights(model.get_weights())
    return clone


def _output_width(model) -> int:
    if len(model.outputs) > 1:
        raise _usage_error(f"reference model {model.name!r}: expected one output (several outputs are not compared "
                           f"yet). Received: {len(model.outputs)} outputs of shapes "
                           f"{[tuple(t.shape) for t in model.outputs]}. Check each head on its own: build a "
                           "keras.Model(inputs, that_output) and a port returning that output.")
    shape = tuple(model.outputs[0].shape)
    if len(shape) != 2 or shape[1] is None:
        raise _usage_error(f"reference model {model.name!r}: expected one (batch, D) output (classes or values). "
                           f"Received: output shape {shape}. Add the head the port is trained with.")
    return int(shape[1])


def _packed(model, shapes, source=None):
    """The reference as the check runs it: fully defined input shapes, several outputs packed into one
    (:mod:`parity.user.outputs`), several inputs packed into one (:mod:`parity.user.inputs`); (model, slots)."""
    shaped = _with_input_shape(model, shapes)
    with_outputs = packed_outputs(shaped, source=source if source is not None else model)
    packed, slots = packed_reference(with_outputs)
    if packed is not with_outputs:  # the attributes the packed outputs carry, onto the model the check runs
        for attr in (HEADS_ATTR, COMPILE_ATTR, SAVED_TRAINING_CONFIG):
            if hasattr(with_outputs, attr):
                object.__setattr__(packed, attr, getattr(with_outputs, attr))
    return packed, slots


def _ends_in_softmax(model) -> bool:
    nodes = trace_keras(model)
    return bool(nodes) and (nodes[-1].kind == "softmax" or nodes[-1].act == "softmax")


def infer_loss(model, loss: str | None = None) -> LossSpec:
    """Reference ends in softmax -> categorical cross-entropy (port logits into ``F.cross_entropy``); else MSE.
    ``loss`` overrides (``categorical_crossentropy`` on a model without softmax = from logits). A model with
    several outputs: each output's compiled loss (else this default) and ``loss_weights``
    (:func:`parity.user.outputs.multi_loss`)."""
    several = multi_loss(model, loss)
    if several is not None:
        return several
    softmax = _ends_in_softmax(model)
    if loss is None:
        return LossSpec("categorical_crossentropy", "mean") if softmax else LossSpec("mse", "mean")
    if loss not in LOSSES:
        raise _usage_error(f"--loss: expected one of {', '.join(LOSSES)}. Received: {loss!r}.")
    if loss == "categorical_crossentropy":
        return LossSpec(loss, "mean", reference_from_logits=not softmax)
    return LossSpec(loss, "sum" if loss == "l1_sum" else "mean")


class UserTaps:
    """``spec.taps``: aligns the reference model the harness just built (recorded by the reference builder)
    with a port instance, once per config; keeps the :class:`parity.user.align.Alignment`."""

    def __init__(self, port_builder, pins, slots, port_object=None):
        self.port_builder = port_builder
        self.pins = pins
        #: the reference's inputs (:class:`parity.user.inputs.InputSlot`), packed into one array when several
        self.slots = slots
        self.port_object = port_object
        self.model = None          # the reference model the harness built last
        self.alignment = None
        self.spec: PairSpec | None = None
        self.groups: dict[str, tuple[str, ...]] = {}
        self.aliases: dict[str, tuple] = {}
        #: the reference's outputs when it has several (:class:`parity.user.outputs.OutputHead`)
        self.heads: list = []

    def view(self, module):
        """The port as the check sees it (:func:`parity.user.view.port_view`): the module groups the alignment
        found, the input unpacking and the output packing."""
        return port_view(module, self.groups, aliases=self.aliases, unpack=self.unpack(),
                         pack=torch_packer(self.heads) if self.heads else None)

    def unpack(self):
        """The view's input function: the packed inputs cut apart (several inputs), or a sequence transposed to
        NCL (one input of a Conv1d port); None when the harness's own NHWC -> NCHW is all it takes."""
        if len(self.slots) > 1:
            return torch_unpacker(self.slots)
        if self.slots and self.slots[0].layout == LAYOUT_SEQ_CHANNELS_FIRST:
            return lambda x: (to_port_layout(x, LAYOUT_SEQ_CHANNELS_FIRST),)
        return None

    def __call__(self, config: dict) -> list[Tap]:
        model = self.model
        if model is None:
            raise _usage_error("user pair: the reference model was not built before the taps were asked for")
        port = self.port_object if self.port_object is not None else self.port_builder(**config)
        if not _is_torch_module(port):
            raise _usage_error(f"{label_of(self.port_builder)}: expected a function returning a torch.nn.Module. "
                               f"Received: {type(port).__name__}.")
        import torch

        dtype = next((p.dtype for p in port.parameters() if p.is_floating_point()), torch.float32)
        self.slots = choose_layouts(port, self.slots, dtype)
        try:
            self.alignment = align(model, port, pins=self.pins, example=example_inputs(self.slots, dtype))
        except AlignmentError as exc:
            raise _usage_error(str(exc)) from None
        if self.spec is not None:
            self.spec.alignment = self.alignment  # travels on the spec (read by the diagnosis)
            loss = self.spec.loss
            if isinstance(loss, LossSpec) and loss.name == "categorical_crossentropy" and not loss.parts and \
                    loss.port_probabilities != self.alignment.port_probabilities:
                # a port returning probabilities like the reference is trained with Keras' loss on them, not
                # F.cross_entropy on logits (a double softmax it never had); the user's own --port-loss is theirs
                self.spec.loss = dataclasses.replace(loss, port_probabilities=self.alignment.port_probabilities)
            self.spec.conventions = tuple(c for c in self.spec.conventions if c.name not in ("alignment", "inputs")) + (
                _alignment_convention(self.alignment), _inputs_convention(self.slots))
        self.groups = dict(self.alignment.groups)
        self.aliases = dict(self.alignment.aliases)
        if not [t for t in self.alignment.taps if t.ref != PACKED_OUTPUTS]:  # the packed outputs alone: none
            raise _usage_error("user pair: expected at least one reference layer with a port counterpart. "
                               "Received: none aligned. Pin layers with --align REF=PORT.\n"
                               + self.alignment.format())
        return self.alignment.taps


def _inputs_convention(slots) -> Convention:
    """How the reference's inputs reach the port's ``forward`` (order, layout, token ids): reported."""
    return Convention("inputs", describe_inputs(slots),
                      f"forward({', '.join(s.name for s in slots)})" + (" (one packed array, cut apart by the view)"
                                                                         if len(slots) > 1 else ""),
                      "parity.user.inputs")


def _alignment_convention(al) -> Convention:
    c = al.counts()
    parts = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    return Convention("alignment", f"{len(al.ref_nodes)} reference layers",
                      f"{sum(1 for n in al.port_nodes if not n.functional)} port module calls",
                      f"automatic ({al.traced_with}): {parts}")


def _spec(name, summary, ref_builder, port_builder, taps: UserTaps, model, loss, input_shape,
          port_object=None, shared: bool = False, own_weights: bool = False) -> PairSpec:
    taps.heads = heads_of(model)
    if loss.parts:
        target = target_of(loss)
    else:
        width = _output_width(model)
        target = ("onehot", width) if loss.name == "categorical_crossentropy" else ("regression", width)
    spec = PairSpec(
        name=name, summary=summary, reference=ref_builder, port=port_builder, taps=taps,
        input_shape=lambda c, s=tuple(input_shape): s, target=lambda c, t=target: t, loss=loss,
        optimizer=USER_SGD, optimizers={"adam": USER_ADAM},
        conventions=(Convention("loss", f"{loss.name} ({loss.reduction})" + (
            ", inferred: the model ends in softmax" if loss.name == "categorical_crossentropy" and not
            loss.reference_from_logits else ""), "F.cross_entropy on logits" if loss.name ==
            "categorical_crossentropy" else loss.name, "parity.user.pair.infer_loss"),),
        default_config={}, fast_config={}, default_batch=4, reference_shared=shared,
        randomize_bn=not own_weights)  # a saved model is checked with its own trained weights, as they are
    if loss.parts:
        spec.conventions = (Convention("loss", f"sum of loss_weight x loss per output: "
                                       f"{describe_outputs(taps.heads, loss)}",
                                       "the same sum over the port's outputs (a tuple in the Keras order, or a dict "
                                       "keyed by the output names); F.cross_entropy on a softmax output's logits",
                                       "parity.user.outputs.multi_loss"),)
    taps.spec = spec
    return spec


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "user"


def spec_from_user_models(reference, port, *, input_shape=None, loss: str | None = None, pins=None,
                          name: str | None = None, custom_objects: str | None = None) -> PairSpec:
    """A :class:`PairSpec` for your own models: ``reference`` / ``port`` are ``"module:function"`` (or
    callables) returning a Keras model / a torch module; ``input_shape`` ``"H,W,C"`` or a tuple (needed when
    the Keras model does not fix it); ``loss`` overrides the inferred one; ``pins``
    ``["keras_layer=port.module.path", ...]`` override the automatic alignment."""
    from_file = is_model_file(reference)
    ref_fn = (reference_from_file(reference, custom_objects) if from_file
              else _resolve_builder(reference, "--reference", "a Keras model"))
    port_fn = _resolve_builder(port, "--port", "a torch.nn.Module")
    shapes = parse_input_shapes(input_shape)
    try:
        pin_map = parse_pins(pins)
    except AlignmentError as exc:
        raise _usage_error(str(exc)) from None
    import_tensorflow()
    probe = ref_fn()
    if not _is_keras_model(probe):
        raise _usage_error(f"--reference {reference}: expected a function returning a keras.Model. Received: "
                           f"{type(probe).__name__}.")
    saved_training = getattr(probe, SAVED_TRAINING_CONFIG, None)
    probe, slots = _packed(probe, shapes)
    shape = tuple(int(d) for d in probe.inputs[0].shape[1:])
    loss_spec = infer_loss(probe, loss)
    taps = UserTaps(port_fn, pin_map, slots)

    def build_reference(**config):
        model, _ = _packed(ref_fn(**config), shapes)
        taps.model = model
        return model

    def build_port(**config):
        module = port_fn(**config)
        if not _is_torch_module(module):
            raise _usage_error(f"--port {port}: expected a function returning a torch.nn.Module. Received: "
                               f"{type(module).__name__}.")
        return taps.view(module)

    rname = getattr(ref_fn, "__name__", "reference")
    pname = getattr(port_fn, "__name__", "port")
    spec_name = name or _safe_name(f"{rname}-vs-{pname}")
    spec = _spec(spec_name, f"user models {reference} <-> {port}", build_reference, build_port, taps, probe,
                 loss_spec, shape, own_weights=from_file)
    saved = describe_training_config(saved_training) if from_file else None
    if from_file and not saved and getattr(ref_fn, "unusable_training_config", None):
        saved = "not usable, the reference is uncompiled: " + next(iter(ref_fn.unusable_training_config.values()))
    if saved:  # the file's compile(...): what --port-optimizer/--port-loss are compared with
        spec.conventions = (*spec.conventions, Convention(
            "training configuration", f"saved in {os.path.basename(reference)}: {saved}",
            "--port-optimizer/--port-loss (else parity's own)", "parity.optim.user.training_config_from_file"))
    return spec


def spec_from_objects(keras_model, torch_module, *, input_shape=None, loss=None, pins=None,
                      name: str | None = None) -> PairSpec:
    """A :class:`PairSpec` whose builders return the given objects as they are."""
    if not _is_keras_model(keras_model):
        raise _usage_error(f"compare: expected a keras.Model as the reference. Received: {type(keras_model).__name__}.")
    if not _is_torch_module(torch_module):
        raise _usage_error(f"compare: expected a torch.nn.Module as the port. Received: {type(torch_module).__name__}.")
    try:
        pin_map = parse_pins(pins)
    except AlignmentError as exc:
        raise _usage_error(str(exc)) from None
    model, slots = _packed(keras_model, parse_input_shapes(input_shape))
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    taps = UserTaps(None, pin_map, slots, port_object=torch_module)
    taps.model = model

    def build_reference(**config):
        return model

    def build_port(**config):
        return taps.view(torch_module)

    spec_name = name or _safe_name(f"{model.name}-vs-{type(torch_module).__name__}")
    return _spec(spec_name, f"user models {model.name} <-> {type(torch_module).__name__}", build_reference,
                 build_port, taps, model, infer_loss(model, loss), shape, shared=True)


def _keras_dtype(model) -> str:
    ws = getattr(model, "weights", None) or []
    for w in ws:
        d = str(getattr(w, "dtype", "float32"))
        if "float64" in d:
            return "float64"
        if "float" in d:
            return "float32"
    return "float32"


def compare(keras_model, torch_module, *, input_shape=None, loss: str | None = None, pins=None,
            **check_kwargs) -> CheckResult:
    """Check a live Keras model against a live torch module: every stage of :func:`parity.harness.check`
    (structure, forward, backward, optimizer step, isolated layers), aligned automatically.

    Both objects are used as they are and left as found (weights, dtype, device, train/eval mode). ``dtype``
    defaults to the Keras model's own (build it under ``keras.config.set_floatx("float64")`` and
    ``keras.config.set_dtype_policy("float64")`` for the exact comparison); the rest of ``check_kwargs`` go
    to :func:`parity.harness.check` (``stages``, ``batch``, ``seed``, ``optimizer``, ``steps``, and
    ``port_optimizer=fn(port_module)`` / ``port_loss=loss(output, target)``: your own training step against the
    Keras model's ``model.compile(...)`` configuration, :mod:`parity.optim.user`). A Keras model with several
    outputs: the port returns a tuple in its output order or a dict keyed by the output names, and
    ``port_loss(outputs, targets)`` receives tuples in that order (:mod:`parity.user.outputs`)."""
    import_tensorflow()
    kdtype = _keras_dtype(keras_model)
    asked = check_kwargs.pop("dtype", None)
    dtype = asked or kdtype
    if dtype != kdtype:
        raise _usage_error(f"compare(dtype={dtype!r}): expected the Keras model's own dtype ({kdtype}): Keras "
                           "computes in its variables' dtype. Build the model under keras.config.set_floatx("
                           f"{dtype!r}) and keras.config.set_dtype_policy({dtype!r}), or pass dtype={kdtype!r}.")
    policy = _policy_note(dtype) if dtype != "float64" and asked is None else None
    if policy is not None:  # said loudly: the README's default is float64, this model cannot run it
        warnings.warn(f"parity.compare: {policy.message}; {policy.fix}.", UserWarning, stacklevel=2)
    spec = spec_from_objects(keras_model, torch_module, input_shape=input_shape, loss=loss, pins=pins,
                             name=check_kwargs.pop("name", None))
    saved = _torch_snapshot(torch_module)
    try:
        result = check(spec, dtype=dtype, **check_kwargs)
    finally:
        _torch_restore(torch_module, saved)
    annotate(result, spec)
    if policy is not None:
        result.findings.append(policy)
    return result


def _policy_note(dtype: str) -> Finding:
    """Which tolerance policy a ``compare`` of a float32 Keras model ran, and why (an ``info`` finding)."""
    return Finding("tolerance_policy", "model",
                   f"the {dtype} tolerance policy ran, not float64: the Keras model computes in {dtype} (its "
                   "variables' dtype), so both sides ran in it; this policy cannot see conventions below ~1e-3 "
                   "(e.g. Adam's epsilon placement)",
                   "for the exact float64 check build the Keras model under keras.config.set_floatx('float64') "
                   "and keras.config.set_dtype_policy('float64')", severity="info")


def _torch_snapshot(module) -> dict[str, Any]:
    params = list(module.parameters()) + list(module.buffers())
    floating = [p for p in params if p.is_floating_point()]
    return {"state": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "dtype": floating[0].dtype if floating else None,
            "device": params[0].device if params else None,
            "training": {name: m.training for name, m in module.named_modules()}}


def _torch_restore(module, saved) -> None:
    if saved["dtype"] is not None:
        module.to(dtype=saved["dtype"])
    if saved["device"] is not None:
        module.to(device=saved["device"])
    module.load_state_dict(saved["state"])
    for name, m in module.named_modules():
        m.training = saved["training"].get(name, m.training)


def alignment_of(spec) -> Any:
    """The :class:`parity.user.align.Alignment` of a user pair's spec (once its taps were resolved), else None."""
    return getattr(spec, "alignment", None)


def annotate(result: CheckResult, spec=None) -> CheckResult:
    """Put the alignment table into the structure stage's ``info["alignment"]`` and its unaligned layers into
    the findings (idempotent; :func:`parity.diagnosis.alignment.annotate_alignment`, which the check's
    diagnosis also runs)."""
    return annotate_alignment(result, alignment_of(spec))


# --- an incomplete alignment is a verdict of its own ----------------------------------------------------------
#: the path of the alignment verdict's finding (``CheckResult.first_divergence`` reports it before any number)
ALIGNMENT_VERDICT = "alignment"


def alignment_verdict(al) -> tuple[str, Finding] | None:
    """The structure error and the finding that say a user pair's alignment left weights untransferred (or a
    port module stands for several reference layers); None when it is complete. Numbers computed after an
    untransferred layer are not evidence of anything, so this is the check's first cause."""
    inc = al.incomplete() if al is not None else None
    if inc is None:
        return None
    parts, fixes = [], []
    for r in inc["ref_left"]:
        cand = (f" (closest port candidates: {', '.join(r['candidates'])})" if r["candidates"] else
                f" (no port module left for it: the port computes nothing here" + (
                    f", after {r['after']})" if r["after"] else ")"))
        parts.append(f"reference layer {r['layer']} ({r['class']}) has weights and no port counterpart{cand}")
        if r["pin"]:
            fixes.append(r["pin"])
    for p in inc["port_left"]:
        parts.append(f"port module {p['module']} ({p['class']}) has parameters ({', '.join(p['params'])}) and no "
                     "reference counterpart: they keep their initial values")
    blocks = _shared_blocks(inc["shared"])
    for s in blocks:
        parts.append(f"port module {s['module']} is called {s['calls']} times for distinct reference layers "
                     f"{', '.join(s['layers'])}: one set of weights where the reference has {s['calls']}")
    n_ref, n_port = len(inc["ref_left"]), len(inc["port_left"])
    head = ("alignment incomplete: " + ", ".join(x for x in (
        f"{n_ref} reference layer(s) with weights left ({', '.join(r['layer'] for r in inc['ref_left'])})" if n_ref
        else "", f"{n_port} port module(s) with parameters left ({', '.join(p['module'] for p in inc['port_left'])})"
        if n_port else "", f"{len(blocks)} port module(s) shared by distinct reference layers ("
        f"{', '.join(s['module'] for s in blocks)})" if blocks else "") if x)
        + "; numbers after these layers are not evidence")
    fix = ("pin them: " + " ".join(fixes)) if fixes else (
        "create one module per reference layer (e.g. nn.ModuleList([Block() for _ in range(n)]))" if inc["shared"]
        else "add the missing layers to the port, or remove its extra modules, or pin with --align REF=PORT")
    return head, Finding("alignment_incomplete", ALIGNMENT_VERDICT, "; ".join(parts), fix, stage="structure",
                         evidence=head, severity="error")


def _shared_blocks(shared: list[dict]) -> list[dict]:
    """Shared leaves called equally often under one parent: the parent block, once (``middle.0`` called 8x
    rather than its six layers), with the first reference layer of each call."""
    by_calls: dict[int, list[dict]] = {}
    for s in shared:
        by_calls.setdefault(s["calls"], []).append(s)
    out = []
    for calls, items in by_calls.items():
        parents = {s["module"].rpartition(".")[0] for s in items}
        if len(items) > 1 and len(parents) == 1 and next(iter(parents)):
            out.append({"module": next(iter(parents)), "calls": calls, "layers": list(items[0]["layers"])})
        else:
            out += items
    return out


@result_rule(order=6)
def missing_fused_activation(run) -> list[Finding]:
    """A reference layer with ``activation=`` fused whose port module is followed by no such activation in the
    port's (fully traced) forward."""
    al = getattr(run.spec, "alignment", None)
    have = {(f.cause, f.path) for f in run.result.findings}
    # a module that applies the activation inside itself (a Conv+ReLU class) compares equal: only a divergence
    # at that layer makes the missing activation a cause
    diverged = {t.path.split(":")[0] for st in run.result.stages for t in st.tensors if not t.passed}
    return [Finding("activation", ref, f"activation {act!r} fused in the reference layer {ref}; the port applies no "
                    f"{act} after {port}", f"apply {act} to {port}'s output in forward (e.g. F.{act} / nn.ReLU())"
                    if act == "relu" else f"apply {act} to {port}'s output in forward", stage="structure")
            for ref, port, act in (getattr(al, "missing_activations", None) or [])
            if ("activation", ref) not in have and ref in diverged]


@result_rule(order=5)
def incomplete_alignment_first(run) -> None:
    """A user pair whose alignment is incomplete fails on that, first (see :func:`alignment_verdict`)."""
    result = run.result
    found = alignment_verdict(getattr(run.spec, "alignment", None))
    st = result.stage("structure")
    if found is None or st is None or any(f.cause == "alignment_incomplete" for f in result.findings):
        return
    head, finding = found
    st.errors.insert(0, head)
    st.info["verdict"] = ALIGNMENT_VERDICT
    result.findings.insert(0, finding)
