"""Hybrid retrieval: Chroma (dense, cosine) + Kiwi BM25, fused.

Documents are chunked on sentence boundaries before indexing; a chunk's id is
``<doc_id>#<n>`` and its metadata carries ``doc_id`` so callers can map chunks
back to documents. Past turns go to the ``memory`` collection (dense only,
filtered per user so one user never sees another's conversation). ``ingest``
(documents) and ``remember_turn`` (turns) are the only write paths, in-process and
in Serve alike.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from echorag.korean import chunk_text, normalize, split_sentences
from echorag.lexical import BM25Index, fuse
from echorag.schemas import DocumentsResponse, SearchResult
from echorag.store import Chunk, VectorStore
from echorag.types import Turn

Mode = Literal["bm25", "dense", "hybrid"]
Embed = Callable[[list[str]], np.ndarray]


def _sentences_to_embed(text: str) -> list[str]:
    sentences = split_sentences(text)
    return sentences if len(sentences) > 1 else []


def _stored_chunks(store: VectorStore, batch: int = 1000):
    """(Chunk, vector) of every stored chunk, paged from Chroma."""
    collection, offset = store.collection("documents"), 0
    while True:
        page = collection.get(limit=batch, offset=offset, include=["documents", "metadatas", "embeddings"])
        for i, t, m, v in zip(page["ids"], page["documents"], page["metadatas"], page["embeddings"]):
            yield Chunk(id=i, text=t, metadata=dict(m or {})), np.asarray(v, np.float32)
        if len(page["ids"]) < batch:
            return
        offset += batch


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
    """Dense (Chroma) and BM25 candidates, re-scored exactly and fused.

    Hybrid search takes the top ``candidates`` of each retriever, scores every
    candidate with both (a chunk missing from one list still has a real score there),
    and fuses the two score lists (``fusion``: "score" = min-max, "zscore", or "rrf").
    With ``embed_passages`` the dense score also looks at single sentences:
    ``(1 - sentence_weight) * cos(query, chunk) + sentence_weight * max cos(query,
    sentence)``, so a question about one sentence of a long chunk is not diluted by
    the rest. Chunk and sentence vectors are mirrored in memory for this re-scoring.
    Defaults: bench/results/retrieval_tuning.json (``python bench/retrieval_tune.py``).
    """

    def __init__(
        self,
        store: VectorStore,
        fusion: Literal["rrf", "score", "zscore"] = "score",
        bm25_weight: float = 0.4,
        dense_weight: float = 0.6,
        candidates: int = 30,
        embed_passages: Embed | None = None,
        sentence_weight: float = 0.5,
    ) -> None:
        self.store = store
        self.fusion = fusion
        self.weights = {"bm25": bm25_weight, "dense": dense_weight}
        self.candidates = candidates
        self.embed_passages = embed_passages
        self.sentence_weight = sentence_weight
        self.bm25 = BM25Index()
        self._texts: dict[str, Chunk] = {}  # chunk id -> text/metadata, for BM25-only hits
        # chunk id -> unit rows: the chunk's vector, then its sentences' (when embedded)
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        # BM25 and the vector mirror live in memory: rebuild them from Chroma.
        stored = list(_stored_chunks(store))
        for chunk, _ in stored:
            self._texts[chunk.id] = chunk
        self.bm25.add(list(self._texts), [c.text for c in self._texts.values()])
        self._mirror([c.id for c, _ in stored], [c.text for c, _ in stored], np.array([v for _, v in stored]))

    @classmethod
    def from_settings(
        cls, store: VectorStore, settings, embed_passages: Embed | None
    ) -> "Retriever":
        """The service's retriever: fusion and sentence re-scoring as configured."""
        return cls(
            store, settings.fusion, settings.bm25_weight, settings.dense_weight,
            embed_passages=embed_passages if settings.sentence_weight > 0 else None,
            sentence_weight=settings.sentence_weight,
        )

    # -- documents -----------------------------------------------------------------
    def ingest(
        self, documents: list[dict[str, Any]], embed_passages: Embed, chunk_size: int, chunk_overlap: int
    ) -> DocumentsResponse:
        """Chunk, embed and index documents (blocking: run it in a worker thread)."""
        chunks = chunk_documents(documents, chunk_size, chunk_overlap)
        self.add_chunks(chunks, embed_passages([c.text for c in chunks]))
        return DocumentsResponse(
            ids=list(dict.fromkeys(c.metadata["doc_id"] for c in chunks)),
            chunks=len(chunks),
            total_documents=self.store.count("documents"),
        )

    def add_chunks(self, chunks: list[Chunk], embeddings: np.ndarray) -> None:
        doc_ids = sorted({c.metadata["doc_id"] for c in chunks})
        self.delete_documents(doc_ids)  # re-ingesting a document replaces all its chunks
        self.store.upsert(
            "documents", [c.id for c in chunks], [c.text for c in chunks], embeddings,
            [c.metadata for c in chunks],
        )
        with self._lock:
            for c in chunks:
                self._texts[c.id] = c
        self.bm25.add([c.id for c in chunks], [c.text for c in chunks])
        self._mirror([c.id for c in chunks], [c.text for c in chunks], embeddings)

    def _mirror(self, ids: list[str], texts: list[str], embeddings: np.ndarray) -> None:
        """Keep chunk vectors (and, with an embedder, sentence vectors) for re-scoring."""
        rows = {cid: np.asarray(embeddings[i : i + 1], np.float32) for i, cid in enumerate(ids)}
        if self.embed_passages is not None and ids:
            # A one-sentence chunk is its own best sentence: only longer chunks are split.
            split = {cid: _sentences_to_embed(text) for cid, text in zip(ids, texts)}
            sentences = [s for parts in split.values() for s in parts]
            if sentences:
                vectors, start = self.embed_passages(sentences), 0
                for cid, parts in split.items():
                    if parts:
                        rows[cid] = np.vstack([rows[cid], vectors[start : start + len(parts)]])
                        start += len(parts)
        with self._lock:
            self._vectors.update(rows)

    def delete_documents(self, doc_ids: list[str]) -> int:
        with self._lock:
            stale = [cid for cid, c in self._texts.items() if c.metadata.get("doc_id") in doc_ids]
            for cid in stale:
                del self._texts[cid]
                self._vectors.pop(cid, None)
        if stale:
            self.store.delete("documents", ids=stale)
            self.bm25.remove(stale)
        return len(stale)

    def _dense_score(self, chunk_id: str, vector: np.ndarray, fallback: float) -> float:
        rows = self._vectors.get(chunk_id)
        if rows is None:
            return fallback
        similarities = rows @ vector
        if len(similarities) == 1:
            return float(similarities[0])
        w = self.sentence_weight
        return float((1 - w) * similarities[0] + w * similarities[1:].max())

    def search(
        self, query: str, vector: np.ndarray | None, k: int, mode: Mode = "hybrid"
    ) -> list[SearchResult]:
        rankings: dict[str, list[tuple[str, float]]] = {}
        dense_hits: dict[str, SearchResult] = {}
        use_dense = mode in ("dense", "hybrid") and vector is not None
        if use_dense:
            vector = np.asarray(vector, np.float32)
            for hit in self.store.query("documents", vector, self.candidates):
                dense_hits[hit.id] = hit
        if mode in ("bm25", "hybrid"):
            # Hybrid: exact BM25 scores for the dense candidates too.
            rankings["bm25"] = self.bm25.search(normalize(query), self.candidates, include=dense_hits)
        if use_dense:
            candidates = dict.fromkeys([*dense_hits, *(doc_id for doc_id, _ in rankings.get("bm25", []))])
            dense = [(cid, self._dense_score(cid, vector, dense_hits[cid].score if cid in dense_hits else 0.0))
                     for cid in candidates]
            rankings["dense"] = sorted(dense, key=lambda item: (-item[1], item[0]))
        if len(rankings) == 1:
            fused = next(iter(rankings.values()))
        else:
            fused = fuse(rankings, self.weights, method=self.fusion)
        results = []
        for chunk_id, score in fused[:k]:
            hit = dense_hits.get(chunk_id) or self._texts.get(chunk_id)
            if hit is not None:
                results.append(SearchResult(
                    id=chunk_id, text=hit.text, score=float(score), collection="documents", metadata=hit.metadata
                ))
        return results

    # -- memory of past turns --------------------------------------------------------
    def remember_turn(self, turn: Turn, embed_passages: Embed) -> None:
        """Embed and index one answered turn (blocking: run it in a worker thread)."""
        text = turn.memory_text()
        self.remember(turn.id, text, embed_passages([text])[0], turn.memory_metadata())

    def remember(self, turn_id: str, text: str, vector: np.ndarray, metadata: dict[str, Any]) -> None:
        self.store.upsert("memory", [turn_id], [text], vector.reshape(1, -1), [metadata])

    def recall(self, vector: np.ndarray, k: int, user_id: str) -> list[SearchResult]:
        return self.store.query("memory", vector, k, where={"user_id": user_id})

    def chat_context(
        self, query: str, vector: np.ndarray, user_id: str, k: int, memory_k: int
    ) -> list[SearchResult]:
        """What an answer may draw on: the top documents, then this user's related past turns."""
        results = self.search(query, vector, k)
        if memory_k:
            results += self.recall(vector, memory_k, user_id)
        return results

    def counts(self) -> dict[str, int]:
        return {"documents": self.store.count("documents"), "memory": self.store.count("memory")}
