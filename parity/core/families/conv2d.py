"""The 2-D image CNN layers the project started with. Their rules live in ``parity.diagnosis`` and their
layouts in ``weight_converters/keras.py``; this entry declares them so the family table covers every layer a
check accepts (anything else is refused up front)."""
from __future__ import annotations

from parity.core.families.base import Family, Named

FAMILY = Family(
    name="conv2d",
    summary="Conv2D, DepthwiseConv2D, SeparableConv2D, BatchNormalization, 2-D pooling, Add, Concatenate",
    keras_classes={"Conv2D": "conv2d", "Convolution2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d",
                   "SeparableConv2D": "separable_conv2d", "SeparableConvolution2D": "separable_conv2d",
                   "MaxPooling2D": "maxpool", "MaxPool2D": "maxpool", "AveragePooling2D": "avgpool",
                   "AvgPool2D": "avgpool", "GlobalAveragePooling2D": "gap", "GlobalAvgPool2D": "gap",
                   "Add": "add", "Concatenate": "concat", "ZeroPadding2D": "other", "SpatialDropout2D": "dropout",
                   "GaussianDropout": "dropout", "Permute": "other"},
    torch_classes={"Conv2d": "conv2d", "MaxPool2d": "maxpool", "AvgPool2d": "avgpool",
                   "AdaptiveAvgPool2d": "gap", "LocalResponseNorm": "lrn", "Dropout2d": "dropout"},
    weighted=("conv2d", "depthwise_conv2d", "separable_conv2d", "batchnorm"),
    converter="weight_converters.keras",
    conventions=(
        Named("conv kernel", "HWIO", "OIHW", "keras/src/layers/convolutional/base_conv.py; torch/nn/modules/conv.py"),
        Named("'same' padding", "extra pixel bottom/right", "symmetric padding=p",
              "tensorflow/python/ops/nn_ops.py"),
        Named("BatchNormalization", "eps 1e-3, momentum 0.99", "eps 1e-5, momentum 0.1 (= 1 - keras m)",
              "keras/src/layers/normalization/batch_normalization.py; torch/nn/modules/batchnorm.py"),
    ),
)
