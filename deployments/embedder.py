"""Embedder deployment: one embedding model, queries batched with ``@serve.batch``."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from echorag.config import Settings
from echorag.retrieval.embedding import VectorCache, make_embedder
from echorag.types import EmbedderInfo


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
class Embedder:
    def __init__(self, settings: Settings) -> None:
        self.embedder = make_embedder(settings)  # queries and inversion
        # Passages here are documents: kept on disk by text, so adding one again embeds nothing.
        self.documents = VectorCache(self.embedder, path=settings.document_vectors_root)

    def reconfigure(self, config: dict) -> None:
        # user_config: {"max_batch_size": n, "batch_wait_timeout_s": s}
        self.embed_query.set_max_batch_size(int(config.get("max_batch_size", 32)))
        self.embed_query.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.002)))

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(self.embedder.id, self.embedder.dim)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def embed_query(self, texts: list[str]) -> list[np.ndarray]:
        # Concurrent single-query calls are served by one model call.
        vectors = await asyncio.to_thread(self.embedder.embed_queries, texts)
        return list(vectors)

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.documents.embed_passages, texts)

    async def invert(self, vector: np.ndarray, method: str, budget: int | None, side: str,
                     consult: list[str]) -> dict:
        """Restore text from ``vector`` with this replica's model (echorag/inversion/).
        ``consult``: the stored texts the restorer may look at (the store's neighbours)."""
        from echorag.inversion import Inverter

        # The retriever already picked the target's neighbours in the store.
        inverter = Inverter(self.embedder, nearest=lambda _vector, k: consult[:k])
        result = await asyncio.to_thread(inverter.invert, vector, method, budget, side)
        return result.to_response().model_dump()
