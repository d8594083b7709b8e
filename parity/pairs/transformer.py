"""A transformer encoder block (MultiHeadAttention, LayerNormalization, GELU MLP, residuals) with a classifier
<-> ported_torch.transformer."""
from __future__ import annotations

from parity.core.families.attention import KERAS_ATTENTION_SCALE
from parity.core.families.normalization import KERAS_LAYERNORM_EPSILON, TORCH_LAYERNORM_EPSILON
from parity.core.spec import Convention, LossSpec, OptimizerSpec, PairSpec, Tap
from parity.pairs.registry import register


def taps(config: dict) -> list[Tap]:
    return [
        Tap("attention", "attention", "attention", "attention"),
        Tap("attn_residual", "attn_residual", "attn_residual", "add"),
        Tap("attn_norm", "attn_norm", "attn_norm", "layernorm"),
        Tap("ffn_in", "ffn_in", "ffn_in", "dense"),
        Tap("ffn_gelu", "ffn_gelu", "ffn_gelu", "activation"),
        Tap("ffn_out", "ffn_out", "ffn_out", "dense"),
        Tap("ffn_residual", "ffn_residual", "ffn_residual", "add"),
        Tap("ffn_norm", "ffn_norm", "ffn_norm", "layernorm"),
        Tap("pool", "pool", "pool", "gap"),
        Tap("classifier", "classifier", "classifier", "dense"),
        Tap("predictions", "predictions", "", "softmax", port_transform="softmax"),
    ]


SPEC = register(PairSpec(
    name="transformer",
    summary="transformer encoder block (MultiHeadAttention, LayerNorm, GELU MLP, residuals) + classifier",
    reference="reference_keras.transformer:transformer_block",
    port="ported_torch.transformer:transformer_block",
    taps=taps,
    input_shape=lambda c: (c["seq_len"], c["d_model"]),
    target=lambda c: ("onehot", c["num_classes"]),
    loss=LossSpec("categorical_crossentropy", "mean"),
    optimizer=OptimizerSpec(kind="sgd", lr=0.05, momentum=0.9),
    optimizers={"adam": OptimizerSpec(kind="adam", lr=1e-3)},
    conventions=(
        Convention("LayerNorm epsilon", f"{KERAS_LAYERNORM_EPSILON:g} (Keras default)",
                   f"eps={KERAS_LAYERNORM_EPSILON:g} (torch default {TORCH_LAYERNORM_EPSILON:g})",
                   "keras/src/layers/normalization/layer_normalization.py"),
        Convention("gelu", "'gelu' = erf form", "nn.GELU() (approximate='none')", "keras/src/activations/activations.py"),
        Convention("attention kernels", "query/key/value (d, h, k), output (h, k, d)",
                   "q/k/v_proj (h*k, d), out_proj (d, h*k)", "weight_converters/attention.py"),
        Convention("attention scale", KERAS_ATTENTION_SCALE, "1/sqrt(head_dim)", "keras/src/layers/attention/"
                   "multi_head_attention.py"),
        Convention("softmax", "Activation('softmax') in the model", "in F.cross_entropy (logits out)", ""),
    ),
    default_config={"seq_len": 10, "d_model": 16, "num_heads": 2, "ff_dim": 32, "num_classes": 3},
    fast_config={"seq_len": 10, "d_model": 16, "num_heads": 2, "ff_dim": 32, "num_classes": 3},
    # this pair's own definition (no external publication): Keras model.count_params() of the default config
    published_params={"total": 2275, "trainable": 2275, "non_trainable": 0},
    default_batch=8,
))
