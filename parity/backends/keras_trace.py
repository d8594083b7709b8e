"""The reference side of the alignment: a Keras model's layers as :class:`parity.backends.trace_nodes.Node`
(topological order, class, config, weight shapes converted to torch layout by the converter's rules, output
shape in NCHW). Keras is never imported here: the functions read the model object they are given."""
from __future__ import annotations

import numpy as np

from parity.backends.trace_nodes import CHEAP_REF, CNN_KINDS, KERAS_KINDS, Node, kind_from_name
from parity.core import families
from weight_converters.keras import LAYER_VARS, var_to_torch


def _keras_activation(cls: str, cfg: dict) -> str | None:
    if cls == "Activation":
        a = cfg.get("activation")
        return a if isinstance(a, str) else None
    if cls == "ReLU":
        mv = cfg.get("max_value")
        if mv is not None and abs(float(mv) - 6.0) < 1e-12:
            return "relu6"
        if cfg.get("negative_slope"):
            return "leaky_relu"
        return "relu"
    if cls == "LeakyReLU":
        return "leaky_relu"
    if cls == "ELU":
        return "elu"
    if cls == "Softmax":
        return "softmax"
    a = cfg.get("activation")
    if isinstance(a, str) and a != "linear":
        return a  # fused activation of a Conv2D / Dense
    return None


def _nchw(shape) -> tuple | None:
    try:
        s = tuple(None if d is None else int(d) for d in shape[1:])
    except (TypeError, ValueError):
        return None
    if len(s) == 3:
        return (s[2], s[0], s[1])
    if len(s) == 4:  # a volume (D, H, W, C) -> (C, D, H, W)
        return (s[3], s[0], s[1], s[2])
    return s


def keras_param_shapes(kind: str, var_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Keras variable shapes -> the torch parameter shapes the converter produces (same rules as
    :mod:`weight_converters.keras`, on shapes only)."""
    table = LAYER_VARS.get(kind, {})
    out = {}
    for var, shp in var_shapes.items():
        if var not in table:
            continue
        s = tuple(shp)
        if kind not in CNN_KINDS:  # another family: its converter says what shape it makes
            try:
                s = tuple(var_to_torch(kind, var, np.zeros(s, dtype=np.float32)).shape)
            except (ValueError, KeyError, TypeError, IndexError):
                pass
        elif var == "pointwise_kernel" or (kind == "conv2d" and var == "kernel"):
            s = (s[3], s[2], s[0], s[1]) if len(s) == 4 else s
        elif var == "depthwise_kernel" or (kind == "depthwise_conv2d" and var == "kernel"):
            s = (s[2] * s[3], 1, s[0], s[1]) if len(s) == 4 else s
        elif kind == "dense" and var == "kernel":
            s = (s[1], s[0]) if len(s) == 2 else s
        out[table[var]] = s
    return out


def trace_keras(model) -> list[Node]:
    """The reference's layers in topological order (``model.layers``), InputLayer excluded."""
    nodes = []
    index: dict[str, int] = {}
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            index[layer.name] = -1
            continue
        cfg = layer.get_config()
        kind = KERAS_KINDS.get(cls) or families.keras_kind(cls, cfg) or kind_from_name(cls)
        act = _keras_activation(cls, cfg)
        if cls == "Activation" and act == "softmax":
            kind = "softmax"
        # names inside the layer: "forward/kernel" (Bidirectional), "query/kernel" (MultiHeadAttention)
        var_shapes = {families.keras_var_name(layer.name, w.name.split("/")[-1].split(":")[0], getattr(w, "path", "")):
                      tuple(int(d) for d in w.shape) for w in layer.weights}
        params = keras_param_shapes(kind, var_shapes)
        if var_shapes and not params:
            kind = "other"  # weights the converter has no rule for (nested model, custom layer)
        try:
            out_shape = _nchw(layer.output.shape)
            inp = layer.input
            ins = [_nchw(t.shape) for t in (inp if isinstance(inp, (list, tuple)) else [inp])]
        except (AttributeError, ValueError):
            out_shape, ins = None, []
        try:
            parents = [pn.operation.name for pn in layer._inbound_nodes[0].parent_nodes]
        except (AttributeError, IndexError):
            parents = []
        index[layer.name] = len(nodes)
        nodes.append(Node(name=layer.name, cls=cls, kind=kind, act=act, params=params, out_shape=out_shape,
                          in_shapes=ins, producers=[index.get(pn, -1) for pn in parents],
                          cheap=cls in CHEAP_REF or (cls == "Activation" and act == "linear"),
                          info={"var_shapes": var_shapes, "padding_cfg": cfg.get("padding"),
                                "family": families.keras_info(cls, cfg),
                                "config": {k: cfg.get(k) for k in (
                              "use_bias", "padding", "strides", "kernel_size", "pool_size", "rate", "units",
                              "filters") if k in cfg}}))
    return nodes
