"""Retriever deployment: owns the Chroma connection, the in-memory BM25 index and the
answer selector version that serves (read from the registry, followed every few seconds)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from echorag.config import Settings
from echorag.learning.selector_registry import SelectorRegistry
from echorag.retrieval.hybrid import Retriever as HybridRetriever
from echorag.retrieval.vector_store import VectorStore
from echorag.types import ChatContext, DocumentsResponse, Turn

logger = logging.getLogger("ray.serve")
SYNC_EVERY_S = 5.0  # how soon a replica's BM25 has documents written through another one


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Retriever:
    def __init__(self, settings: Settings, embedder: DeploymentHandle) -> None:
        self.settings = settings
        self.embedder = embedder
        self._retriever: HybridRetriever | None = None
        self._opening = asyncio.Lock()
        self.selectors = SelectorRegistry(settings.adapters_root)
        # Writes (documents wait on the embedder from a thread) have their own pool, so
        # searches, which run in the default one, never queue behind them.
        self._writes = ThreadPoolExecutor(4, thread_name_prefix="retriever-writes")

    async def _write(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._writes, fn, *args)

    def _embed_passages(self, texts: list[str]) -> np.ndarray:
        # Blocks on the embedder: the core retriever calls it from worker threads, never the loop.
        return self.embedder.embed_passages.remote(texts).result()

    async def _ready(self) -> HybridRetriever:
        # The store records the embedder's id, which only the embedder replica knows.
        async with self._opening:
            if self._retriever is None:
                info = await self.embedder.info.remote()
                s = self.settings

                def open_store() -> HybridRetriever:
                    store = VectorStore.from_settings(s, info.id, info.dim)
                    retriever = HybridRetriever.from_settings(store, s, self._embed_passages)
                    retriever.selector = self.selectors.load_active()
                    return retriever

                self._retriever = await asyncio.to_thread(open_store)
                # Kept: the event loop holds tasks only weakly.
                self._syncing = asyncio.get_running_loop().create_task(self._sync_forever(self._retriever))
        return self._retriever

    async def _sync_forever(self, retriever: HybridRetriever) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY_S)
            try:
                if await asyncio.to_thread(retriever.sync):
                    logger.info("BM25 reloaded: documents were written since this replica last loaded them")
            except Exception:  # Chroma away for a while: the next round tries again
                logger.warning("BM25 sync failed", exc_info=True)
            try:
                selector = await asyncio.to_thread(self.selectors.load_active)
                if selector is not retriever.selector:
                    logger.info("Answer selector %s serves (was %s)", selector.version, retriever.selector.version)
                    retriever.selector = selector
            except Exception:  # an unreadable registry keeps the selector that serves
                logger.warning("answer selector refresh failed", exc_info=True)

    async def answer_context(self, query: str, vector: np.ndarray, user_id: str) -> ChatContext:
        """The documents and past turns for a question, and their analysis (the selector's verdict)."""
        retriever = await self._ready()
        return await asyncio.to_thread(retriever.answer_context, query, vector, user_id, self.settings)

    async def add_documents(self, documents: list[dict]) -> DocumentsResponse:
        retriever, s = await self._ready(), self.settings
        return await self._write(retriever.ingest, documents, self._embed_passages, s.chunk_size, s.chunk_overlap)

    async def delete_documents(self, doc_ids: list[str]) -> int:
        retriever = await self._ready()
        return await asyncio.to_thread(retriever.delete_documents, doc_ids)

    async def remember(self, turn: Turn, question_vector: np.ndarray) -> None:
        await self._remember_batch(turn, question_vector)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _remember_batch(self, turns: list[Turn], vectors: list[np.ndarray]) -> list[None]:
        # The turns that arrived while the last write ran go to the store together:
        # Chroma's upsert takes 8 ms of CPU for one row, 2 ms a row for eight.
        retriever = await self._ready()
        await self._write(retriever.remember_turns, turns, vectors)
        return [None] * len(turns)

    async def forget(self, where: dict) -> int:
        """Delete remembered turns by metadata (``{"user_id": ...}``, ``{"session_id": ...}``)."""
        retriever = await self._ready()
        return await self._write(retriever.forget, where)

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

