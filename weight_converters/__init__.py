"""Pure-numpy weight converters (no torch, no tensorflow, no keras): Keras h5 / Caffe npy or caffemodel <-> torch
state_dict layouts. Each conversion returns its arrays and a :class:`ConversionReport`."""
from weight_converters.report import ConversionError, ConversionReport

__all__ = ["ConversionError", "ConversionReport"]
