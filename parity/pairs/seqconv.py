"""A 1-D CNN over sequences (causal and dilated Conv1D, MaxPooling1D) <-> ported_torch.seqconv."""
from __future__ import annotations

from parity.core.families.conv1d import KERAS_CAUSAL_PADDING, TF_SAME_1D
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap
from parity.pairs.registry import register

#: torch's (N, C, L) tensors compared as Keras' (N, L, C)
NLC = "channels_last"


def taps(config: dict) -> list[Tap]:
    return [
        Tap("conv1", "conv1", "conv1", "conv1d", port_transform=NLC),
        Tap("pool1", "pool1", "pool1", "maxpool", port_transform=NLC),
        Tap("conv2", "conv2", "conv2", "conv1d", port_transform=NLC),
        Tap("gap", "gap", "gap", "gap"),
        Tap("classifier", "classifier", "classifier", "dense"),
        Tap("predictions", "predictions", "", "softmax", port_transform="softmax"),
    ]


SPEC = register(PairSpec(
    name="seqconv",
    summary="1-D CNN over sequences: causal Conv1D, MaxPooling1D, dilated 'same' Conv1D (even kernel), GAP, Dense",
    reference="reference_keras.seqconv:sequence_cnn",
    port="ported_torch.seqconv:sequence_cnn",
    taps=taps,
    input_shape=lambda c: (c["seq_len"], c["channels"]),
    target=lambda c: ("onehot", c["num_classes"]),
    loss=LossSpec("categorical_crossentropy", "mean"),
    optimizer=OptimizerSpec(kind="sgd", lr=0.05, momentum=0.9),
    optimizers={"adam": OptimizerSpec(kind="adam", lr=1e-3)},
    conventions=(
        Convention("layout", "(N, L, C)", "(N, C, L): one transpose at the input", "torch/nn/modules/conv.py"),
        Convention("causal padding", KERAS_CAUSAL_PADDING, "F.pad left, Conv1d(padding=0)", ""),
        Convention("'same', even kernel", TF_SAME_1D, "Conv1d(padding='same')", ""),
        Convention("kernel", "(k, in, out)", "(out, in, k)", "weight_converters/conv1d.py"),
    ),
    default_config={"seq_len": 32, "channels": 4, "filters": 8, "num_classes": 3},
    fast_config={"seq_len": 32, "channels": 4, "filters": 8, "num_classes": 3},
    # this pair's own definition (no external publication): Keras model.count_params() of the default config
    published_params={"total": 747, "trainable": 747, "non_trainable": 0},
    default_batch=8,
))
