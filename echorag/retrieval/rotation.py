"""The defence against inversion: a secret orthogonal rotation of every vector.

``VectorRotation`` is applied to every stored and query vector. Cosines, and so
retrieval, are unchanged; without the key the vectors no longer line up with the
public model and inversion (``echorag.inversion``) falls to chance.
``RotatedEmbedder`` wraps any embedder and changes its id, so the store's embedder
guard refuses to mix rotated and unrotated vectors.
"""

from __future__ import annotations

import hashlib

import numpy as np

from echorag.retrieval.vectors import Embedder, l2_normalize


def key_fingerprint(key: str) -> str:
    """A short, non-secret name for a key (safe to store in collection metadata)."""
    return hashlib.sha256(b"echorag-rotation-fingerprint:" + key.encode()).hexdigest()[:12]


class VectorRotation:
    """A secret orthogonal matrix, derived deterministically from ``key``.

    Q from the QR decomposition of a Gaussian matrix seeded by the key (signs fixed
    so Q is Haar-distributed). Orthogonal maps preserve dot products, so cosine
    retrieval is unchanged, while the rotated vectors no longer match the public
    model's geometry.
    """

    def __init__(self, key: str, dim: int) -> None:
        if not key:
            raise ValueError("the rotation key must not be empty")
        seed = int.from_bytes(hashlib.sha256(b"echorag-rotation:" + key.encode()).digest()[:8], "little")
        gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
        q, r = np.linalg.qr(gaussian)
        self.matrix = (q * np.sign(np.diag(r))).astype(np.float32)  # (dim, dim), orthogonal
        self.dim = dim
        self.fingerprint = key_fingerprint(key)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float32) @ self.matrix.T).astype(np.float32)

    def invert(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float32) @ self.matrix).astype(np.float32)


def estimate_rotation(public: np.ndarray, rotated: np.ndarray) -> VectorRotation:
    """The known-plaintext attack: orthogonal Procrustes from pairs of (public-model vector,
    stored vector) of the same texts. With about ``dim`` pairs it recovers the key's rotation,
    so the defence holds only while stored vectors cannot be paired with their texts."""
    u, _, vt = np.linalg.svd(np.asarray(rotated, np.float64).T @ np.asarray(public, np.float64))
    estimate = VectorRotation.__new__(VectorRotation)
    estimate.matrix, estimate.dim, estimate.fingerprint = (u @ vt).astype(np.float32), public.shape[1], "estimated"
    return estimate


class RotatedEmbedder:
    """Any embedder, with every vector rotated by a secret key."""

    def __init__(self, inner: Embedder, key: str | VectorRotation) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.rotation = key if isinstance(key, VectorRotation) else VectorRotation(key, inner.dim)
        # A different id: the store refuses to mix rotated and unrotated vectors.
        self.id = f"{inner.id}+rot:{self.rotation.fingerprint}"

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.rotation.apply(self.inner.embed_queries(texts)))

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.rotation.apply(self.inner.embed_passages(texts)))


def unwrap(embedder: Embedder) -> tuple[Embedder, VectorRotation | None]:
    """The embedder under any rotation, and the rotation (None when unrotated)."""
    if isinstance(embedder, RotatedEmbedder):
        return embedder.inner, embedder.rotation
    return embedder, None
