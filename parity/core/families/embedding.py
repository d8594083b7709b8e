"""Embedding: Keras ``Embedding(input_dim, output_dim, mask_zero)`` <-> torch ``nn.Embedding(num_embeddings,
embedding_dim, padding_idx)``; integer inputs (token ids, not floats)."""
from __future__ import annotations

from parity.core.families.base import Family, Named, RuleHit

MASK_ZERO_VS_PADDING_IDX = (
    "Keras mask_zero=True passes a mask to the layers after the Embedding (an RNN skips masked steps) and leaves "
    "row 0 trainable; torch padding_idx=0 masks nothing downstream, zeroes row 0 at init and never updates it")
"""keras/src/layers/core/embedding.py (``compute_mask``), torch/nn/modules/sparse.py (``padding_idx``)."""


def token_range(layers, default: tuple[float, float]) -> tuple[float, float]:
    """Token ids a check may draw for a model with integer inputs: ``[0, V)`` with V the smallest
    ``input_dim`` of its Embedding layers (every id valid for every table); ``default`` without one."""
    dims = [int(layer.get_config()["input_dim"]) for layer in layers if type(layer).__name__ == "Embedding"]
    return (0, min(dims)) if dims else default


def _rules(kind: str, ref: dict, port: dict) -> list[RuleHit]:
    out: list[RuleHit] = []
    if kind != "embedding":
        return out
    for rk, pk, noun in (("input_dim", "num_embeddings", "vocabulary"), ("output_dim", "embedding_dim", "width")):
        if ref.get(rk) is not None and port.get(pk) is not None and int(ref[rk]) != int(port[pk]):
            out.append(("embedding_shape", f"Embedding {noun} {port[pk]} in the port, {ref[rk]} in the reference",
                        f"nn.Embedding({ref.get('input_dim')}, {ref.get('output_dim')})", ""))
    pad = port.get("padding_idx")
    if pad is not None and not ref.get("mask_zero"):
        out.append(("padding_idx", f"Embedding padding_idx={pad} in the port: row {pad} gets no gradient there, "
                    "while the reference (mask_zero=False) trains it", "drop padding_idx",
                    MASK_ZERO_VS_PADDING_IDX))
    return out


def _refuse(cls: str, cfg: dict) -> str | None:
    if cls == "Embedding" and cfg.get("mask_zero"):
        return ("Embedding(mask_zero=True) is not yet supported: the mask changes the layers after it (RNNs skip "
                "masked steps) and torch has no mask; check with mask_zero=False or inputs without token 0")
    return None


FAMILY = Family(
    name="embedding",
    summary="Embedding (integer token inputs)",
    keras_classes={"Embedding": "embedding"},
    torch_classes={"Embedding": "embedding"},
    weighted=("embedding",),
    converter="weight_converters.embedding",
    conventions=(
        Named("mask_zero vs padding_idx", "mask_zero: downstream mask, row 0 trained",
              "padding_idx: row frozen and zeroed, no downstream mask",
              "keras/src/layers/core/embedding.py; torch/nn/modules/sparse.py"),
        Named("inputs", "int token ids (N, L)", "LongTensor (N, L)", "torch.nn.functional.embedding"),
    ),
    keras_keys=("input_dim", "output_dim", "mask_zero"),
    torch_attrs=("num_embeddings", "embedding_dim", "padding_idx"),
    rules=(_rules,),
    refuse=_refuse,
    kinds=("embedding",),
)
