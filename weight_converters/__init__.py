"""Pure-numpy weight converters (no torch, no tensorflow, no keras): Keras h5 / Caffe npy or caffemodel <-> torch
state_dict layouts. Each conversion returns its arrays and a :class:`ConversionReport`.

Modules, lowest first (each imports only those above it): ``report`` (the report; non-finite values and negative
BatchNorm variances), ``files`` (one-line errors, the regular-file check every reader makes first), ``keras``
(layouts, per-family converters), ``h5`` (Keras HDF5 / ``.keras``, every dataset bounded by the file's size),
``caffemodel`` (protobuf decoder), ``npy_safe`` (pickled ``.npy`` dicts, restricted and bounded), ``caffe``
(Caffe files by content, layout helpers), ``goturn`` (GOTURN's Caffe names and mapping)."""
from weight_converters.report import ConversionError, ConversionReport

__all__ = ["ConversionError", "ConversionReport"]
