"""Embedding, Keras <-> torch, as pure numpy: ``embeddings`` (input_dim, output_dim) == ``weight``
(num_embeddings, embedding_dim), copied as is.

The layouts agree; the conventions are elsewhere (``parity.core.families.embedding``): Keras ``mask_zero=True``
hides token 0 from the layers after it (an LSTM skips the step), torch ``padding_idx=0`` only freezes row 0's
gradient (and zeroes it at init). Origins: keras/src/layers/core/embedding.py (``self.embeddings``, shape
(input_dim, output_dim)), torch/nn/modules/sparse.py (``weight`` (num_embeddings, embedding_dim))."""
from __future__ import annotations

from weight_converters.renamed import RenamedFamily

EMBEDDING_AS_IS = "Embedding embeddings (V,D) -> weight (V,D) (same layout, copied)"

FAMILY = RenamedFamily({"embedding": {"embeddings": "weight"}}, {"embedding": EMBEDDING_AS_IS})
KINDS = FAMILY.KINDS
