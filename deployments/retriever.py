"""Retriever deployment: owns the Chroma connection and the in-memory BM25 index."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from echorag.config import load_settings
from echorag.retrieval import Retriever as HybridRetriever
from echorag.retrieval import chunk_documents
from echorag.schemas import SearchResult
from echorag.store import VectorStore


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Retriever:
    def __init__(self, settings: dict, embedder: DeploymentHandle) -> None:
        self.settings = load_settings(**settings)
        self.embedder = embedder
        self._retriever: HybridRetriever | None = None
        self._opening = asyncio.Lock()

    async def _ready(self) -> HybridRetriever:
        # The store records the embedder's id, which only the embedder replica knows.
        async with self._opening:
            if self._retriever is None:
                info = await self.embedder.info.remote()
                s = self.settings

                def embed_passages(texts: list[str]) -> np.ndarray:
                    # Sentence vectors for re-scoring; called from worker threads, never the loop.
                    return self.embedder.embed_passages.remote(texts).result()

                def open_store() -> HybridRetriever:
                    store = VectorStore.from_settings(s, info["id"], info["dim"])
                    return HybridRetriever.from_settings(store, s, embed_passages)

                self._retriever = await asyncio.to_thread(open_store)
        return self._retriever

    async def chat_context(self, query: str, vector: np.ndarray, user_id: str) -> list[SearchResult]:
        retriever, s = await self._ready(), self.settings
        return await asyncio.to_thread(
            retriever.chat_context, query, vector, user_id, s.top_k, s.memory_top_k
        )

    async def add_documents(self, documents: list[dict]) -> dict:
        retriever, s = await self._ready(), self.settings
        chunks = chunk_documents(documents, s.chunk_size, s.chunk_overlap)
        vectors = await self.embedder.embed_passages.remote([c.text for c in chunks])
        await asyncio.to_thread(retriever.add_chunks, chunks, vectors)
        return {
            "ids": list(dict.fromkeys(c.metadata["doc_id"] for c in chunks)),
            "chunks": len(chunks),
            "total_documents": retriever.store.count("documents"),
        }

    async def delete_documents(self, doc_ids: list[str]) -> int:
        retriever = await self._ready()
        return await asyncio.to_thread(retriever.delete_documents, doc_ids)

    async def remember(self, turn_id: str, text: str, metadata: dict) -> None:
        retriever = await self._ready()
        vectors = await self.embedder.embed_passages.remote([text])
        await asyncio.to_thread(retriever.remember, turn_id, text, vectors[0], metadata)

    async def counts(self) -> dict[str, int]:
        retriever = await self._ready()
        return await asyncio.to_thread(retriever.counts)

    async def ping(self) -> bool:
        retriever = await self._ready()
        return await asyncio.to_thread(retriever.store.ping)

    # -- inversion (POST /vectors/invert) -------------------------------------------------
    async def stored_vector(self, item_id: str, collection: str) -> np.ndarray | None:
        """The vector stored under ``item_id`` (a chunk or turn id), or None."""
        retriever = await self._ready()

        def get() -> np.ndarray | None:
            got = retriever.store.collection(collection).get(ids=[item_id], include=["embeddings"])
            return np.asarray(got["embeddings"][0], np.float32) if got["ids"] else None

        return await asyncio.to_thread(get)

    async def nearest_texts(self, vector: np.ndarray, collection: str, k: int, exclude: str | None = None) -> list[str]:
        """Texts of the nearest stored items: what an inversion may consult."""
        retriever = await self._ready()
        hits = await asyncio.to_thread(retriever.store.query, collection, vector, k + (exclude is not None))
        return [h.text for h in hits if h.id != exclude][:k]

