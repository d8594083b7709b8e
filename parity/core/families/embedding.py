"""Embedding: Keras ``Embedding(input_dim, output_dim, mask_zero)`` <-> torch ``nn.Embedding(num_embeddings,
embedding_dim, padding_idx)``; integer inputs (token ids, not floats)."""
from __future__ import annotations

from parity.core.families.base import Family, Named, RuleHit

MASK_ZERO_VS_PADDING_IDX = (
    "Keras mask_zero=True passes a mask to the layers after the Embedding (an RNN skips masked steps) and leaves "
    "row 0 trainable; torch padding_idx=0 masks nothing downstream, zeroes row 0 at init and never updates it")
"""keras/src/layers/core/embedding.py (``compute_mask``), torch/nn/modules/sparse.py (``padding_idx``)."""

MASK_ZERO_AS_PACKING = (
    "Keras Embedding(mask_zero=True) -> LSTM/GRU/Bidirectional: masked steps are skipped (the state is carried, "
    "the last step is the last unmasked one; the backward direction starts at the last unmasked step); torch: "
    "nn.utils.rnn.pack_padded_sequence(emb, lengths=(tokens != 0).sum(1), batch_first=True, enforce_sorted=False) "
    "and h_n (or pad_packed_sequence for sequences)")
"""keras/src/layers/rnn/rnn.py (``mask``), keras/src/layers/rnn/bidirectional.py (the mask reversed with the
sequence), keras/src/backend/tensorflow/rnn.py (``zero_output_for_mask``); torch/nn/utils/rnn.py."""

POST_PADDED_TOKENS = (
    "inputs of a mask_zero=True model are post-padded: ids in [1, V) then a tail of 0s, lengths varied in [1, L] "
    "(one row unpadded); mid-sequence 0s and pre-padding are not generated: lengths = (tokens != 0).sum(1) "
    "describes only post-padding, and pack_padded_sequence cannot express a hole or a leading pad")
"""keras.utils.pad_sequences(padding='post') (keras/src/utils/sequence_utils.py; its default is 'pre', which a
packed torch port must reverse itself); torch/nn/utils/rnn.py ``pack_padded_sequence`` (valid steps first)."""


#: the layers a mask_zero=True Embedding may feed in a check: the recurrent ones, whose masking is a packed
#: sequence in torch; another consumer of the mask (a masked pooling, attention, a Dense) is refused
MASK_CONSUMERS = ("LSTM", "GRU", "SimpleRNN", "Bidirectional")


def mask_zero_refusal(layers) -> str | None:
    """One line when a mask_zero=True Embedding feeds a layer other than an LSTM/GRU/SimpleRNN/Bidirectional."""
    for layer in layers:
        if type(layer).__name__ != "Embedding" or not layer.get_config().get("mask_zero"):
            continue
        for node in getattr(layer, "_outbound_nodes", []) or []:
            op = getattr(node, "operation", None)
            cls = type(op).__name__
            if op is not None and cls not in MASK_CONSUMERS + ("ParityTap",):  # parity's own tap layers pass it on
                return (f"expected an Embedding(mask_zero=True) to feed {'/'.join(MASK_CONSUMERS)} (its mask becomes "
                        f"a packed sequence in the port). Received: {layer.name!r} feeds {cls} {op.name!r}. Check "
                        "with mask_zero=False, or with the Embedding feeding the recurrent layer directly.")
    return None


def masks_zero(layers) -> bool:
    """Some Embedding of the model has ``mask_zero=True``: its inputs are drawn post-padded
    (:data:`POST_PADDED_TOKENS`)."""
    return any(type(layer).__name__ == "Embedding" and layer.get_config().get("mask_zero") for layer in layers)


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
    return None  # mask_zero=True is checked with post-padded inputs (POST_PADDED_TOKENS)


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
        Named("mask_zero", "RNN skips masked steps", "pack_padded_sequence(lengths=(tokens != 0).sum(1))",
              "keras/src/layers/rnn/rnn.py; torch/nn/utils/rnn.py"),
        Named("inputs", "int token ids (N, L)", "LongTensor (N, L)", "torch.nn.functional.embedding"),
        Named("padding", "mask_zero=True: post-padded (ids >= 1, then 0s)", "lengths = (tokens != 0).sum(1)",
              "keras/src/utils/sequence_utils.py pad_sequences(padding='post')"),
    ),
    keras_keys=("input_dim", "output_dim", "mask_zero"),
    torch_attrs=("num_embeddings", "embedding_dim", "padding_idx"),
    rules=(_rules,),
    refuse=_refuse,
    kinds=("embedding",),
)
