"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions"): the reference is
``keras.applications.Xception(weights=None, ...)`` itself, not a re-implementation.

Published facts (keras-team/keras ``keras/src/applications/xception.py``; Chollet 2017): 299x299x3 -> 1000 classes: 22,910,480 parameters
(22,855,952 trainable, 54,528 non-trainable BN moving statistics); without the top 20,861,480.
Spatial 299 -> 149 -> 147 -> 74 -> 37 -> 19 -> 10.

One thing is changed, and it is not the architecture: keras.applications leaves the residual branch's
``Conv2D`` / ``BatchNormalization``, the ``add`` layers and the ``Input`` unnamed, so Keras names them from a
process-global counter (``conv2d_3``, ``batch_normalization_1``, ``add_7``, ``input_layer_2``): the second
model built in a process gets different names. :func:`stable_names` renames them from the graph itself
(``block2_residual_conv``, ``block2_residual_bn``, ``block2_add``, ``image``) in the model config, and the
model is rebuilt with ``keras.Model.from_config``: same layers, same configs, same connections, same order.

Input sizes (``keras.applications.imagenet_utils.obtain_input_shape``): 3 channels, height and width at
least :data:`MIN_INPUT_SIZE` = 71. A CIFAR-10 32x32 image is refused; ``upsample=3`` puts a nearest-neighbour
``UpSampling2D`` (32 -> 96) in front, given to keras.applications as its ``input_tensor`` (exact in torch
as ``nn.Upsample(mode="nearest")``, unlike a bilinear resize).
"""
from __future__ import annotations

import re

#: keras.applications.Xception's smallest accepted height/width (``min_size=71``).
MIN_INPUT_SIZE = 71
#: Name given to the model input (keras.applications leaves it to the global counter).
INPUT_NAME = "image"
#: Name of the optional nearest-neighbour up-sampling layer in front of the stem (CIFAR-10 variant).
UPSAMPLE_NAME = "upsample"
_BLOCK_NAME = re.compile(r"^block(\d+)_")
#: The top's pooling is named ``avg_pool``; ``include_top=False, pooling="avg"|"max"`` leaves it unnamed.
_POOLING_NAMES = {"GlobalAveragePooling2D": "avg_pool", "GlobalMaxPooling2D": "max_pool"}


def xception(input_shape=(299, 299, 3), num_classes=1000, include_top=True, classifier_activation="softmax",
             upsample=None, pooling=None):
    """``keras.applications.Xception(weights=None)`` with stable layer names (see :func:`stable_names`).

    ``input_shape`` (H, W, 3), H, W >= 71 (after ``upsample``). ``num_classes`` = keras' ``classes``.
    ``classifier_activation``: ``"softmax"`` (the published top; the port returns logits and the softmax
    lives in its loss) or ``None``. ``upsample``: integer factor of a nearest ``UpSampling2D`` placed before
    the stem (``input_shape=(32, 32, 3), upsample=3`` for CIFAR-10). ``pooling``: keras' argument, used
    only without the top.
    """
    import keras

    kwargs = dict(weights=None, include_top=include_top, classes=num_classes,
                  classifier_activation=classifier_activation, pooling=pooling)
    if upsample:
        inp = keras.Input(tuple(input_shape), name=INPUT_NAME)
        x = keras.layers.UpSampling2D(int(upsample), interpolation="nearest", name=UPSAMPLE_NAME)(inp)
        h, w, c = input_shape
        model = keras.applications.Xception(input_tensor=x, input_shape=(h * upsample, w * upsample, c),
                                            **kwargs)
    else:
        model = keras.applications.Xception(input_shape=tuple(input_shape), **kwargs)
    cfg = model.get_config()
    renames = stable_names(cfg)
    return keras.Model.from_config(rename_layers(cfg, renames))


def _inbound(layer_cfg: dict) -> list[str]:
    """Names of the layers feeding ``layer_cfg`` (from its ``keras_history`` entries)."""
    found: list[str] = []

    def walk(o):
        if isinstance(o, dict):
            if "keras_history" in o:
                found.append(o["keras_history"][0])
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(layer_cfg.get("inbound_nodes", []))
    return found


def stable_names(cfg: dict) -> dict[str, str]:
    """``{counter_name: stable_name}`` for every layer keras.applications leaves unnamed, read off the graph:

    - each ``Add`` takes the block number of its named input (``block2_pool``, ``block5_sepconv3_bn``) and
      becomes ``block{n}_add``;
    - its other input, when it is an unnamed ``BatchNormalization``, is ``block{n}_residual_bn``, and the
      unnamed ``Conv2D`` feeding that is ``block{n}_residual_conv``;
    - the ``InputLayer`` is :data:`INPUT_NAME`; an unnamed global pooling (``include_top=False,
      pooling=...``) is ``avg_pool`` / ``max_pool``.

    Raises ``ValueError`` if a counter-named layer is left over (a keras.applications change to look at).
    """
    layers = cfg["layers"]
    by_name = {lay["name"]: lay for lay in layers}
    renames: dict[str, str] = {}
    for lay in layers:
        cls, name = lay["class_name"], lay["name"]
        if cls == "InputLayer":
            renames[name] = INPUT_NAME
        elif cls == "Add":
            ins = _inbound(lay)
            blocks = {int(m.group(1)) for n in ins if (m := _BLOCK_NAME.match(n))}
            if len(blocks) != 1:
                raise ValueError(f"Xception: cannot tell the block of Add layer {name!r} from its inputs {ins}.")
            n = blocks.pop()
            renames[name] = f"block{n}_add"
            for src in ins:
                src_cfg = by_name[src]
                if src_cfg["class_name"] == "BatchNormalization" and not _BLOCK_NAME.match(src):
                    renames[src] = f"block{n}_residual_bn"
                    (conv,) = _inbound(src_cfg)
                    renames[conv] = f"block{n}_residual_conv"
        elif cls in _POOLING_NAMES and name not in _POOLING_NAMES.values():
            renames[name] = _POOLING_NAMES[cls]
    named = {UPSAMPLE_NAME, "predictions", *_POOLING_NAMES.values()}
    left = [lay["name"] for lay in layers if lay["name"] not in renames
            and not _BLOCK_NAME.match(lay["name"]) and lay["name"] not in named]
    if left:
        raise ValueError(f"Xception: layers still named by Keras' global counter: {left}. Expected every "
                         "layer to be named blockN_* after renaming; keras.applications.Xception changed?")
    if len(set(renames.values())) != len(renames):
        raise ValueError(f"Xception: stable names collide: {renames}")
    return renames


def rename_layers(cfg: dict, renames: dict[str, str]) -> dict:
    """A copy of a functional model config with layers renamed, and every reference to them (inbound
    ``keras_history``, ``input_layers``, ``output_layers``) renamed too. Nothing else changes."""

    def walk(o):
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                if k == "keras_history":
                    out[k] = [renames.get(v[0], v[0]), *v[1:]]
                elif k == "name" and isinstance(v, str):
                    out[k] = renames.get(v, v)
                else:
                    out[k] = walk(v)
            return out
        if isinstance(o, (list, tuple)):  # node ``args`` are tuples
            return type(o)(walk(v) for v in o)
        return o

    def endpoints(e):
        if e and isinstance(e[0], str):  # a single [name, node, tensor]
            return [renames.get(e[0], e[0]), *e[1:]]
        return [endpoints(x) for x in e]

    out = walk(cfg)
    out["input_layers"] = endpoints(cfg["input_layers"])
    out["output_layers"] = endpoints(cfg["output_layers"])
    return out
