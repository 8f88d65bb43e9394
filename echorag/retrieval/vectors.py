"""What every embedder shares: the ``Embedder`` protocol and L2 normalisation.

A leaf module (numpy only), so the embedders and the rotation defence that wraps
them can both depend on it without depending on each other.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Embedder(Protocol):
    id: str  # recorded in the vector store; a different id means re-index
    dim: int

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
