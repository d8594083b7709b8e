"""A text classifier (Embedding -> Bidirectional LSTM -> Dense, integer inputs) <-> ported_torch.textclf."""
from __future__ import annotations

import dataclasses

from parity.core.families.embedding import MASK_ZERO_AS_PACKING, POST_PADDED_TOKENS
from parity.core.families.recurrent import KERAS_GRU_GATES, KERAS_MERGE_MODE, ONE_BIAS, TORCH_GRU_GATES
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap
from parity.pairs.registry import register


def taps(config: dict) -> list[Tap]:
    return [
        Tap("embedding", "embedding", "embedding", "embedding"),
        Tap("encoder", "encoder", "encoder", config.get("cell", "lstm")),
        Tap("classifier", "classifier", "classifier", "dense"),
        Tap("predictions", "predictions", "", "softmax", port_transform="softmax"),
    ]


SPEC = register(PairSpec(
    name="textclf",
    summary="text classifier: Embedding -> Bidirectional LSTM (last step) -> Dense, token ids in",
    reference="reference_keras.textclf:text_classifier",
    port="ported_torch.textclf:text_classifier",
    taps=taps,
    input_shape=lambda c: (c["seq_len"],),
    target=lambda c: ("onehot", c["num_classes"]),
    loss=LossSpec("categorical_crossentropy", "mean"),
    optimizer=OptimizerSpec(kind="sgd", lr=0.1, momentum=0.9),
    optimizers={"adam": OptimizerSpec(kind="adam", lr=1e-2)},
    conventions=(
        Convention("layout", "(N, L, C)", "batch_first=True", "torch/nn/modules/rnn.py"),
        Convention("last step", "return_sequences=False (backward half: its last step is step 0)",
                   "cat(out[:, -1, :H], out[:, 0, H:])", "keras/src/layers/rnn/bidirectional.py"),
        Convention("merge mode", repr(KERAS_MERGE_MODE), "concat [forward, backward]", ""),
        Convention("biases", "one bias per direction", "bias_ih = bias, bias_hh = 0 (frozen)", ONE_BIAS),
        Convention("softmax", "Activation('softmax') in the model", "in F.cross_entropy (logits out)", ""),
    ),
    default_config={"seq_len": 12, "vocab": 50, "embed_dim": 8, "units": 6, "num_classes": 4, "cell": "lstm"},
    fast_config={"seq_len": 12, "vocab": 50, "embed_dim": 8, "units": 6, "num_classes": 4, "cell": "lstm"},
    # this pair's own definition (no external publication): Keras model.count_params() of the default config
    published_params={"total": 1172, "trainable": 1172, "non_trainable": 0},
    default_batch=8,
    input_range=(0, 50),
))

#: the same classifier with a GRU encoder (Keras 3 reset_after=True: two biases, gates z,r,h vs torch r,z,n)
GRU_SPEC = register(dataclasses.replace(
    SPEC, name="textgru", summary="text classifier: Embedding -> Bidirectional GRU (last step) -> Dense, token ids in",
    conventions=SPEC.conventions[:3] + (
        Convention("GRU gates", KERAS_GRU_GATES, TORCH_GRU_GATES, "keras/src/layers/rnn/gru.py; torch/nn/modules/rnn.py"),
        Convention("GRU biases", "reset_after=True: bias (2, 3H)", "bias_ih = bias[0], bias_hh = bias[1]", ""),
    ) + SPEC.conventions[4:],
    default_config={**SPEC.default_config, "cell": "gru"}, fast_config={**SPEC.fast_config, "cell": "gru"},
    published_params={"total": 1028, "trainable": 1028, "non_trainable": 0}))

#: the same classifier with Embedding(mask_zero=True): post-padded token ids (POST_PADDED_TOKENS), the port packs
#: them (MASK_ZERO_AS_PACKING)
MASK_SPEC = register(dataclasses.replace(
    SPEC, name="textmask",
    summary="text classifier: Embedding(mask_zero=True) -> Bidirectional LSTM (packed) -> Dense, post-padded ids",
    conventions=SPEC.conventions + (
        Convention("mask_zero", "masked steps skipped", "pack_padded_sequence(lengths=(tokens != 0).sum(1))",
                   MASK_ZERO_AS_PACKING),
        Convention("padding", "post-padded inputs", "lengths = (tokens != 0).sum(1)", POST_PADDED_TOKENS),
    ),
    default_config={**SPEC.default_config, "mask_zero": True}, fast_config={**SPEC.fast_config, "mask_zero": True}))
