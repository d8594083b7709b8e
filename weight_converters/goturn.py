"""GOTURN's Caffe weights (davheld/GOTURN ``tracker.prototxt`` / ``tracker.caffemodel``) -> the GOTURN Keras
reference's and torch port's layouts (``parity.pairs.goturn``). Pure numpy; the files are read by
:func:`weight_converters.caffe.read_caffe_weights` (``.caffemodel`` or ``.npy`` dict, nothing executed).

GOTURN names: the target stream's convs are ``conv1..conv5``, the image stream's ``conv1_p..conv5_p``; GOTURN
initialises *both* streams from one set of CaffeNet convs, so a file with only ``conv1..conv5`` fills both. The
fully connected layers are ``fc6-new``, ``fc7-new``, ``fc7-newb``, ``fc8-shapes``; when absent (the usual
CaffeNet-only file) they keep the reference's initialisation (an assumption in the report, not an error).
CaffeNet's own ImageNet classifier (``fc6``, ``fc7``, ``fc8``) is ignored, as GOTURN does. Legacy (V1) files
store InnerProduct weights as (1, 1, out, in) and biases as (1, 1, 1, out); the mapping drops those leading 1s
(:data:`LEGACY_BLOB_SQUEEZE`, an assumption in the report), as Caffe's ``Blob::ShapeEquals`` reads legacy shapes
right-aligned.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from weight_converters.caffe import (CAFFE_IS_TORCH, CONV_OIHW_TO_HWIO, IP_FLATTEN, IP_TO_DENSE,
                                     CaffeConversionReport, caffe_shape, check_blob, looks_reshaped,
                                     read_caffe_weights)
from weight_converters.files import input_where
from weight_converters.keras import (conv_kernel_to_keras, conv_kernel_to_torch, dense_kernel_to_keras,
                                     dense_kernel_to_torch)
from weight_converters.report import ConversionError

BOTH_STREAMS = ("image stream (conv1_p..conv5_p) not in file: initialised from conv1..conv5, as GOTURN "
                "initialises both streams from CaffeNet")
LEGACY_BLOB_SQUEEZE = ("legacy 4-D blobs squeezed to their layer's rank (leading 1s dropped, as Caffe's "
                       "Blob::ShapeEquals reads legacy shapes): InnerProduct (1,1,out,in) -> (out,in), "
                       "bias (1,1,1,out) -> (out,)")
"""Assumption recorded when :func:`squeeze_legacy_blobs` reshapes a blob (V1 files, old Caffe -> numpy dumps)."""

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
STREAM_SUFFIX = {"target": "", "image": "_p"}
"""Caffe name suffix of each stream's layers (tracker.prototxt: ``conv1`` / ``conv1_p``)."""
FC_CAFFE_NAMES = {"fc6": "fc6-new", "fc7": "fc7-new", "fc7b": "fc7-newb", "fc8": "fc8-shapes"}
"""Reference layer -> Caffe layer name (tracker.prototxt), mirrored from ``parity.pairs.goturn.CAFFE_FC_NAMES``."""
CAFFENET_CLASSIFIER = ("fc6", "fc7", "fc8")
"""CaffeNet's ImageNet classifier layers: present in full CaffeNet dumps, replaced in GOTURN."""


def _infer_flatten_chw(expected, fc6_in: int) -> tuple[int, int, int]:
    channels = sum(int(expected[f"{s}_conv5"]["kernel"][3]) for s in STREAM_SUFFIX if f"{s}_conv5" in expected)
    hw = fc6_in // channels if channels else 0
    side = math.isqrt(hw)
    if not channels or channels * hw != fc6_in or side * side != hw:
        raise ValueError(f"fc6: expected its {fc6_in} inputs to be {channels or '2 x conv5'} channels x a square "
                         f"pool5. Received: no such square. Pass flatten_chw=(C, H, W).")
    return channels, side, side


def squeeze_legacy_blobs(caffe: Mapping[str, list[np.ndarray]]) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """Drop the leading 1s of legacy 4-D blobs of GOTURN's layers: fc weights (1, 1, out, in) -> (out, in), conv
    and fc biases (1, 1, 1, out) -> (out,). Blobs with other leading dims are left for the shape check to report.
    Returns the dict (arrays not copied) and ``"layer/blob (old shape)"`` for each squeezed blob."""
    fc = set(FC_CAFFE_NAMES.values())
    convs = {c + s for c in CONV_NAMES for s in STREAM_SUFFIX.values()}
    out, squeezed = dict(caffe), []
    for name, blobs in caffe.items():
        if name not in fc and name not in convs:
            continue
        new = list(blobs)
        for i, blob in enumerate(blobs[:2]):
            rank = 1 if i == 1 else 2 if name in fc else 4
            lead = blob.shape[:max(blob.ndim - rank, 0)]
            if lead and all(d == 1 for d in lead):
                new[i] = blob.reshape(blob.shape[len(lead):])
                squeezed.append(f"{name}/{'bias' if i else 'weight'} {tuple(blob.shape)}")
        out[name] = new
    return out, squeezed


def _squeeze_into(caffe, report):
    caffe, squeezed = squeeze_legacy_blobs(caffe)
    if squeezed:
        report.assume(f"{LEGACY_BLOB_SQUEEZE}: {', '.join(squeezed)}")
    return caffe


def goturn_from_caffe(caffe: Mapping[str, list[np.ndarray]], expected: Mapping[str, Mapping[str, tuple]], *,
                      flatten_chw: tuple[int, int, int] | None = None,
                      ) -> tuple[dict[str, dict[str, np.ndarray]], CaffeConversionReport]:
    """Map a Caffe weight dict to the Keras reference's ``{layer: {var: array}}``. ``expected`` is the
    reference's ``{layer: {var: shape}}``; ``flatten_chw`` the (C, H, W) fc6 flattens (default: inferred from
    ``expected``, 2 x conv5 channels and a square pool5). Problems go to the report; raises only when fc6 is in
    the file and its flatten geometry can be neither inferred nor was given."""
    report = CaffeConversionReport(direction="caffe->keras")
    caffe = _squeeze_into(caffe, report)
    out: dict[str, dict[str, np.ndarray]] = {}
    used = set()

    def put(layer, caffe_name, blobs, kind):
        want = expected.get(layer)
        if want is None:
            report.unexpected.append(f"{caffe_name} (-> {layer}: not in the reference)")
            return
        if len(blobs) != len(want):
            report.shape_mismatches.append((f"{caffe_name} blobs (-> {layer})", (len(want),), (len(blobs),)))
            return
        conv = {}
        for var, blob in zip(("kernel", "bias"), blobs):
            caffe_var = "weight" if var == "kernel" else "bias"
            key = f"{caffe_name}/{caffe_var} (-> {layer}/{var})"
            if not check_blob(report, key, blob, caffe_shape(kind, var, want.get(var))):
                continue
            if var == "bias":
                arr = np.array(blob, copy=True)
            elif kind == "conv":
                arr = conv_kernel_to_keras(blob)
                report.convention(CONV_OIHW_TO_HWIO)
            else:
                chw = None
                if layer == "fc6":
                    chw = flatten_chw or _infer_flatten_chw(expected, blob.shape[1])
                    report.convention(f"{IP_FLATTEN} (C,H,W)={tuple(chw)}")
                evidence = looks_reshaped(blob)
                if evidence:
                    report.suspicious.append(f"{layer} weight looks reshaped, not transposed ({caffe_name}: "
                                             f"{evidence}); convert an (in,out) kernel with .T, not np.reshape")
                arr = dense_kernel_to_keras(blob, chw)
                report.convention(IP_TO_DENSE)
            conv[var] = arr
            report.mapped.append((f"{caffe_name}/{caffe_var}", f"{layer}/{var}", ""))
        if conv:
            out[layer] = conv

    for stream, suffix in STREAM_SUFFIX.items():
        for conv in CONV_NAMES:
            layer = f"{stream}_{conv}"
            name = conv + suffix
            if name in caffe:
                put(layer, name, caffe[name], "conv")
                used.add(name)
            elif suffix and conv in caffe:
                put(layer, conv, caffe[conv], "conv")
                report.assume(BOTH_STREAMS)
            elif layer in expected:
                report.missing += [f"{layer}/{v} (<- {name})" for v in expected[layer]]
    used.update(CONV_NAMES)
    absent = []
    for layer, caffe_name in FC_CAFFE_NAMES.items():
        if caffe_name in caffe:
            put(layer, caffe_name, caffe[caffe_name], "fc")
            used.add(caffe_name)
        elif layer in expected:
            absent.append(layer)
    if absent:
        report.assume(f"{', '.join(absent)} ({', '.join(FC_CAFFE_NAMES[a] for a in absent)}) not in file: kept from "
                      "the reference's initialisation")
    ignored = [n for n in CAFFENET_CLASSIFIER if n in caffe and n not in used]
    if ignored:
        report.assume(f"ignored CaffeNet classifier layer(s) {', '.join(ignored)}: GOTURN replaces them with "
                      "fc6-new .. fc8-shapes")
        used.update(ignored)
    report.unexpected += [f"{n} (no GOTURN layer of that name)" for n in caffe if n not in used]
    return out, report


def goturn_caffe_to_torch(caffe: Mapping[str, list[np.ndarray]], expected: Mapping[str, tuple],
                          ) -> tuple[dict[str, np.ndarray], CaffeConversionReport]:
    """Map a Caffe weight dict to the torch port's state_dict keys (``target.conv1.weight``, ``fc6.weight``...):
    the layouts are Caffe's, so arrays are copied. ``expected``: the port's ``{key: shape}``."""
    report = CaffeConversionReport(direction="caffe->torch")
    report.convention(CAFFE_IS_TORCH)
    caffe = _squeeze_into(caffe, report)
    out: dict[str, np.ndarray] = {}
    sources = {}
    for stream, suffix in STREAM_SUFFIX.items():
        for conv in CONV_NAMES:
            name = conv + suffix
            if name not in caffe and suffix and conv in caffe:
                report.assume(BOTH_STREAMS)
                name = conv
            sources[f"{stream}.{conv}"] = name
    sources.update({layer: caffe_name for layer, caffe_name in FC_CAFFE_NAMES.items()})
    used = set()
    absent = []
    for module, name in sources.items():
        if name not in caffe:
            if f"{module}.weight" in expected:
                (absent if module in FC_CAFFE_NAMES else report.missing).append(module)
            continue
        used.add(name)
        for suffix, blob in zip(("weight", "bias"), caffe[name]):
            key = f"{module}.{suffix}"
            if suffix == "weight" and module in FC_CAFFE_NAMES and (evidence := looks_reshaped(blob)):
                report.suspicious.append(f"{module} weight looks reshaped, not transposed ({name}: {evidence})")
            if check_blob(report, key, blob, expected.get(key)):
                out[key] = np.array(blob, copy=True)
                report.mapped.append((f"{name}/{suffix}", key, ""))
    if absent:
        report.assume(f"{', '.join(absent)} not in file: kept from the port's initialisation")
    report.unexpected += [n for n in caffe if n not in used and n not in CAFFENET_CLASSIFIER]
    return out, report


def load_goturn_weights(path, expected: Mapping[str, Mapping[str, tuple]], *, strict: bool = True,
                        flatten_chw: tuple[int, int, int] | None = None, label: str = "--weights",
                        ) -> tuple[dict[str, dict[str, np.ndarray]], CaffeConversionReport]:
    """``PairSpec.weights_loader`` of the GOTURN pair: read ``path`` safely (:func:`read_caffe_weights`: a
    ``.caffemodel`` or a ``.npy`` dict), map it to the Keras reference (``expected`` = its
    ``{layer: {var: shape}}``). Strict (default) raises :class:`ConversionError` (a ``ValueError``, with
    ``.report``) on missing convs, unknown layers, shape mismatches, non-finite values or a suspicious layer;
    fc layers absent from the file are allowed."""
    weights, report = goturn_from_caffe(read_caffe_weights(path, label=label), expected, flatten_chw=flatten_chw)
    if strict and not report.ok:
        probs = report.problems()
        more = f" (+{len(probs) - 3} more)" if len(probs) > 3 else ""
        raise ConversionError(f"{input_where(path, label)}: {report.summary()}: {'; '.join(probs[:3])}{more}", report)
    return weights, report


def goturn_to_caffe(weights: Mapping[str, Mapping[str, np.ndarray]], flatten_chw: tuple[int, int, int],
                    ) -> dict[str, list[np.ndarray]]:
    """Inverse of :func:`goturn_from_caffe`: reference ``{layer: {var: array}}`` -> Caffe ``{name: [W, b]}`` with
    both streams (``conv1`` / ``conv1_p``) and the fc layers under their tracker.prototxt names."""
    out = {}
    for stream, suffix in STREAM_SUFFIX.items():
        for conv in CONV_NAMES:
            layer = weights.get(f"{stream}_{conv}")
            if layer is not None:
                out[conv + suffix] = [conv_kernel_to_torch(layer["kernel"]), np.array(layer["bias"], copy=True)]
    for layer_name, caffe_name in FC_CAFFE_NAMES.items():
        layer = weights.get(layer_name)
        if layer is not None:
            chw = flatten_chw if layer_name == "fc6" else None
            out[caffe_name] = [dense_kernel_to_torch(layer["kernel"], chw), np.array(layer["bias"], copy=True)]
    return out
