"""Hybrid retrieval: Chroma (dense, cosine) + Kiwi BM25, fused.

Documents are chunked on sentence boundaries before indexing; a chunk's id is
``<doc_id>#<n>`` and its metadata carries ``doc_id`` so callers can map chunks
back to documents. Past turns go to the ``memory`` collection (dense only,
filtered per user so one user never sees another's conversation).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from echorag.korean import chunk_text, normalize
from echorag.lexical import BM25Index, fuse
from echorag.schemas import SearchResult
from echorag.store import Hit, VectorStore

Mode = Literal["bm25", "dense", "hybrid"]


@dataclass
class Chunk:
    id: str
    text: str
    metadata: dict[str, Any]


def chunk_documents(documents: list[dict[str, Any]], size: int, overlap: int) -> list[Chunk]:
    """Split documents (``{"id"?, "text", "metadata"?}``) into indexable chunks."""
    chunks = []
    for doc in documents:
        doc_id = doc.get("id") or uuid.uuid4().hex[:16]
        metadata = dict(doc.get("metadata") or {})
        for n, piece in enumerate(chunk_text(normalize(doc["text"]), size, overlap)):
            chunks.append(Chunk(f"{doc_id}#{n}", piece, {**metadata, "doc_id": doc_id, "chunk": n}))
    return chunks


class Retriever:
    def __init__(
        self,
        store: VectorStore,
        fusion: Literal["rrf", "score"] = "score",
        bm25_weight: float = 0.5,
        dense_weight: float = 0.5,
        candidates: int = 30,
    ) -> None:
        self.store = store
        self.fusion = fusion
        self.weights = {"bm25": bm25_weight, "dense": dense_weight}
        self.candidates = candidates
        self.bm25 = BM25Index()
        self._texts: dict[str, Hit] = {}  # chunk id -> text/metadata, for BM25-only hits
        self._lock = threading.Lock()
        for hit in store.get_all("documents"):  # BM25 lives in memory: rebuild it from Chroma
            self._texts[hit.id] = hit
        self.bm25.add(list(self._texts), [h.text for h in self._texts.values()])

    # -- documents -----------------------------------------------------------------
    def add_chunks(self, chunks: list[Chunk], embeddings: np.ndarray) -> None:
        doc_ids = sorted({c.metadata["doc_id"] for c in chunks})
        self.delete_documents(doc_ids)  # re-ingesting a document replaces all its chunks
        self.store.upsert(
            "documents", [c.id for c in chunks], [c.text for c in chunks], embeddings,
            [c.metadata for c in chunks],
        )
        with self._lock:
            for c in chunks:
                self._texts[c.id] = Hit(c.id, c.text, 0.0, c.metadata)
        self.bm25.add([c.id for c in chunks], [c.text for c in chunks])

    def delete_documents(self, doc_ids: list[str]) -> int:
        with self._lock:
            stale = [cid for cid, h in self._texts.items() if h.metadata.get("doc_id") in doc_ids]
            for cid in stale:
                del self._texts[cid]
        if stale:
            self.store.delete("documents", ids=stale)
            self.bm25.remove(stale)
        return len(stale)

    def search(
        self, query: str, vector: np.ndarray | None, k: int, mode: Mode = "hybrid"
    ) -> list[Hit]:
        rankings: dict[str, list[tuple[str, float]]] = {}
        dense_hits: dict[str, Hit] = {}
        if mode in ("dense", "hybrid") and vector is not None:
            for hit in self.store.query("documents", vector, self.candidates):
                dense_hits[hit.id] = hit
            rankings["dense"] = [(h.id, h.score) for h in dense_hits.values()]
        if mode in ("bm25", "hybrid"):
            rankings["bm25"] = self.bm25.search(normalize(query), self.candidates)
        if len(rankings) == 1:
            fused = next(iter(rankings.values()))
        else:
            fused = fuse(rankings, self.weights, method=self.fusion)
        results = []
        for chunk_id, score in fused[:k]:
            hit = dense_hits.get(chunk_id) or self._texts.get(chunk_id)
            if hit is not None:
                results.append(Hit(chunk_id, hit.text, float(score), hit.metadata))
        return results

    # -- memory of past turns --------------------------------------------------------
    def remember(self, turn_id: str, text: str, vector: np.ndarray, metadata: dict[str, Any]) -> None:
        self.store.upsert("memory", [turn_id], [text], vector.reshape(1, -1), [metadata])

    def recall(self, vector: np.ndarray, k: int, user_id: str) -> list[Hit]:
        return self.store.query("memory", vector, k, where={"user_id": user_id})

    def chat_context(
        self, query: str, vector: np.ndarray, user_id: str, k: int, memory_k: int
    ) -> list[SearchResult]:
        """What an answer may draw on: the top documents, then this user's related past turns."""
        results = [
            SearchResult(id=h.id, text=h.text, score=h.score, collection="documents", metadata=h.metadata)
            for h in self.search(query, vector, k)
        ]
        if memory_k:
            results += [
                SearchResult(id=h.id, text=h.text, score=h.score, collection="memory", metadata=h.metadata)
                for h in self.recall(vector, memory_k, user_id)
            ]
        return results

    def counts(self) -> dict[str, int]:
        return {"documents": self.store.count("documents"), "memory": self.store.count("memory")}
