"""Facial-keypoints CNN (one ``Net`` of the Udacity facial-keypoints
project, udacity/P1_Facial_Keypoints ``models.py``), in Keras 3.

A 1x96x96 grayscale face -> 30 numbers (15 (x, y) keypoints): four "conv sandwiches" (conv 3x3 stride 1
'same' -> max-pool 2/2 -> ReLU) with 32, 64, 128, 256 filters (96 -> 48 -> 24 -> 12 -> 6), flatten,
fc1 256*6*6 -> 256, ReLU, fc2 256 -> 30, optionally Tanh (``final_tanh=True``). Trained with MSE and SGD
(lr 0.01, momentum 0.9, Nesterov, weight decay 1e-6).

The published model is PyTorch; this is its Keras twin. Two things differ by construction and are handled
by the pair, not hidden here:

- Keras ``Flatten`` is HWC, torch ``nn.Flatten`` is CHW (``parity.core.conventions.KERAS_FLATTEN_ORDER``): the
  converter reorders fc1's kernel rows (``Tap(..., flatten_chw=(256, 6, 6))``), and the harness reorders this
  model's flatten output to CHW before comparing.
- Initialisation: Keras defaults here (``glorot_uniform`` kernels, zero biases); the published torch model
  uses ``kaiming_normal_`` on the convs and fc1 and ``xavier_normal_`` on fc2 (see
  ``ported_torch.keypoints``). Parity copies one side's weights into the other, so inits never meet.
"""
from __future__ import annotations

#: Filters of the four conv sandwiches.
SANDWICH_FILTERS = (32, 64, 128, 256)
#: Number of outputs: 15 keypoints x (x, y).
NUM_OUTPUTS = 30
FC1_UNITS = 256
INPUT_SHAPE = (96, 96, 1)


def keypoints_cnn(input_shape=INPUT_SHAPE, num_outputs=NUM_OUTPUTS, final_tanh=False):
    """Build the reference (NHWC input, ``input_shape`` = (H, W, 1)); outputs are raw regressions (or tanh)."""
    import keras
    from keras import layers

    img = keras.Input(tuple(input_shape), name="image")
    x = img
    for i, filters in enumerate(SANDWICH_FILTERS, start=1):
        # 3x3 stride 1 'same' == torch padding=1 exactly (pad_total 2 -> 1 each side).
        x = layers.Conv2D(filters, 3, strides=1, padding="same", name=f"sandwich{i}_conv")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"sandwich{i}_pool")(x)
        x = layers.Activation("relu", name=f"sandwich{i}_relu")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(FC1_UNITS, name="fc1")(x)
    x = layers.Activation("relu", name="fc1_relu")(x)
    x = layers.Dense(num_outputs, name="fc2")(x)
    if final_tanh:
        x = layers.Activation("tanh", name="tanh")(x)
    return keras.Model(img, x, name="keypoints_cnn")
