"""What the model traces of both frameworks produce (:mod:`parity.backends.keras_trace`,
:mod:`parity.backends.torch_trace`) and :mod:`parity.user.align` aligns: one :class:`Node` per layer or module
call, the tables that give each its kind, and the marks that name port paths. Framework-free."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from parity.core.errors import UsageError

#: the kinds whose shape rules :func:`parity.backends.keras_trace.keras_param_shapes` writes out (the other
#: families' converters are asked)
CNN_KINDS = ("conv2d", "depthwise_conv2d", "separable_conv2d", "dense", "batchnorm")

#: Keras layer class -> tap kind (custom layers fall back to name heuristics, see :func:`kind_from_name`).
KERAS_KINDS = {
    "Conv2D": "conv2d", "Convolution2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d",
    "SeparableConv2D": "separable_conv2d", "SeparableConvolution2D": "separable_conv2d", "Dense": "dense",
    "BatchNormalization": "batchnorm", "Activation": "activation", "ReLU": "activation",
    "LeakyReLU": "activation", "ELU": "activation", "PReLU": "other", "Softmax": "softmax",
    "MaxPooling2D": "maxpool", "MaxPool2D": "maxpool", "AveragePooling2D": "avgpool", "AvgPool2D": "avgpool",
    "GlobalAveragePooling2D": "gap", "GlobalAvgPool2D": "gap", "GlobalMaxPooling2D": "other",
    "Add": "add", "Concatenate": "concat", "Flatten": "flatten", "Dropout": "dropout",
    "SpatialDropout2D": "dropout", "GaussianDropout": "dropout", "Reshape": "reshape",
}
#: Reference layers that ports usually express without a module (padding inside the conv, a view): skipping
#: them costs little.
CHEAP_REF = {"ZeroPadding2D", "ZeroPadding3D", "Reshape", "InputLayer", "Permute", "UnpackInput"}
#: torch activation classes -> Keras activation name
TORCH_ACTIVATIONS = {
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "ELU": "elu", "GELU": "gelu", "SiLU": "swish",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Hardsigmoid": "hard_sigmoid", "Hardswish": "hard_swish",
    "Softplus": "softplus", "Identity": "linear", "Mish": "mish", "SELU": "selu",
}
#: functional torch ops (fx ``call_function`` / ``call_method`` targets, by name) -> (kind, activation)
FUNCTIONAL_OPS = {
    "add": ("add", None), "iadd": ("add", None), "cat": ("concat", None), "concat": ("concat", None),
    "relu": ("activation", "relu"), "relu6": ("activation", "relu6"), "sigmoid": ("activation", "sigmoid"),
    "tanh": ("activation", "tanh"), "gelu": ("activation", "gelu"), "elu": ("activation", "elu"),
    "leaky_relu": ("activation", "leaky_relu"), "silu": ("activation", "swish"),
    "softmax": ("softmax", None), "flatten": ("flatten", None), "view": ("flatten", None),
    "reshape": ("flatten", None), "max_pool2d": ("maxpool", None), "avg_pool2d": ("avgpool", None),
    "adaptive_avg_pool2d": ("gap", None), "mean": ("gap", None), "dropout": ("dropout", None),
}

#: a port path for one call of a module called repeatedly: ``act#2`` (module names cannot hold a ``#``)
CALL_MARK = "#"
#: a port conv that pads itself, seen from a reference that pads with an explicit ZeroPadding2D layer
PADDED_MARK = "#unpadded"
#: separator between the member paths of a module group (a group is not a module of the user's port; its name
#: must not contain a dot, so the members' dots become slashes)
GROUP_JOIN = "+"


@dataclass
class Node:
    """One layer of either side. ``params``: torch-layout parameter shapes keyed by the torch suffix
    (``weight``, ``pointwise.weight``, ``running_var``...); ``out_shape``: per-sample, NCHW."""

    name: str
    cls: str
    kind: str
    act: str | None = None
    params: dict[str, tuple] = field(default_factory=dict)
    out_shape: tuple | None = None
    in_shapes: list[tuple] = field(default_factory=list)
    functional: bool = False
    cheap: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    #: indices (same side) of the nodes whose outputs feed this one; -1 = the model input
    producers: list[int] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        return bool(self.params)


class AlignmentError(UsageError):
    """Bad pins or models that cannot be aligned; the message says what to do (the CLI exits 2)."""


def kind_from_name(cls: str) -> str:
    """The tap kind a layer or module class name suggests (custom classes of either side)."""
    c = cls.lower()
    if "lrn" in c or "localresponse" in c:
        return "lrn"
    if "pool" in c and "global" in c:
        return "gap" if "avg" in c or "average" in c else "other"
    if "maxpool" in c or ("max" in c and "pool" in c):
        return "maxpool"
    if "avgpool" in c or ("pool" in c and ("avg" in c or "average" in c)):
        return "avgpool"
    if "flatten" in c:
        return "flatten"
    if "concat" in c:
        return "concat"
    if c in ("add", "sum") or c.endswith("add"):
        return "add"
    if "softmax" in c:
        return "softmax"
    if "dropout" in c:
        return "dropout"
    return "other"


def close_names(name: str, names: list[str], k: int = 3) -> str:
    """`` Did you mean a, b?`` with the names closest to ``name`` (empty when none is close)."""
    near = difflib.get_close_matches(name, names, n=k, cutoff=0.4)
    return f" Did you mean {', '.join(near)}?" if near else ""
