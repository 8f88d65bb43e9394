"""What the retriever keeps of each chunk in the vector store, beside its text and
vector, so that no replica has to hold or recompute it:

- its BM25 terms (Kiwi morphemes, computed once at indexing), in the chunk's metadata
  under ``_terms``: a new replica builds BM25 from them without running Kiwi;
- its sentences' vectors (embedded once at indexing), one row each in the ``sentences``
  collection (id ``<chunk id>~<n>``), counted in the chunk's ``_sentences``: a search
  fetches the rows of its candidates, so replicas hold no vectors at all.

Keys starting with ``_`` are the retriever's own and never leave it (``public``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from echorag.retrieval.vector_store import Chunk, VectorStore

TERMS = "_terms"
SENTENCES = "_sentences"
SENTENCE_COLLECTION = "sentences"


def sentence_id(chunk_id: str, n: int) -> str:
    return f"{chunk_id}~{n}"


def public(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A chunk's metadata as callers see it: without the retriever's own keys."""
    return {k: v for k, v in (metadata or {}).items() if not k.startswith("_")}


# Kiwi forms may hold spaces ('에드워드 퍼셀'), never the ASCII unit separator.
TERM_SEPARATOR = "\x1f"


def pack_terms(terms: list[str]) -> str:
    return TERM_SEPARATOR.join(terms)


def unpack_terms(packed: str) -> list[str]:
    return packed.split(TERM_SEPARATOR) if packed else []


def put(
    store: VectorStore,
    chunks: list[Chunk],
    vectors: np.ndarray,
    terms: list[list[str]],
    sentences: list[list[str]],
    sentence_vectors: np.ndarray | None,
) -> None:
    """Store chunks with their terms, and their sentences' rows first: a chunk a search
    can find always has its rows."""
    rows = [(c, n, s) for c, parts in zip(chunks, sentences) for n, s in enumerate(parts)]
    if rows and sentence_vectors is not None:
        for start in range(0, len(rows), 2000):
            part = rows[start : start + 2000]
            store.upsert(
                SENTENCE_COLLECTION, [sentence_id(c.id, n) for c, n, _ in part], [s for _, _, s in part],
                sentence_vectors[start : start + len(part)],
                [{"chunk_id": c.id, "doc_id": c.metadata.get("doc_id", c.id)} for c, _, _ in part],
            )
    metadatas = []
    for chunk, chunk_terms, parts in zip(chunks, terms, sentences):
        metadata = public(chunk.metadata) | {TERMS: pack_terms(chunk_terms)}
        if sentence_vectors is not None:  # else a retriever with an embedder adds them later
            metadata[SENTENCES] = len(parts)
        metadatas.append(metadata)
    store.upsert("documents", [c.id for c in chunks], [c.text for c in chunks], vectors, metadatas)


def stored_metadata(store: VectorStore, batch: int = 5000) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, metadata) of every stored chunk, paged: no texts, no vectors."""
    collection, offset = store.collection("documents"), 0
    while True:
        page = collection.get(limit=batch, offset=offset, include=["metadatas"])
        yield from zip(page["ids"], (dict(m or {}) for m in page["metadatas"]))
        if len(page["ids"]) < batch:
            return
        offset += batch


class Rows:
    """A bounded, least-recently-used cache of what searches fetched per chunk: the chunk
    (text, metadata) and its rows (its vector, then its sentences' vectors). Chunks that
    many questions share stay in memory; the corpus does not have to fit. Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._items: OrderedDict[str, tuple[Chunk, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(chunk: Chunk, rows: np.ndarray) -> int:
        return rows.nbytes + 2 * len(chunk.text) + 400

    def get(self, chunk_id: str) -> tuple[Chunk, np.ndarray] | None:
        with self._lock:
            item = self._items.get(chunk_id)
            if item is not None:
                self._items.move_to_end(chunk_id)
            return item

    def put(self, chunk_id: str, chunk: Chunk, rows: np.ndarray) -> None:
        size = self._size(chunk, rows)
        if size > self.budget:
            return
        with self._lock:
            old = self._items.pop(chunk_id, None)
            if old is not None:
                self.used -= self._size(*old)
            self._items[chunk_id] = (chunk, rows)
            self.used += size
            while self.used > self.budget:
                _, evicted = self._items.popitem(last=False)
                self.used -= self._size(*evicted)

    def forget(self, chunk_ids: list[str]) -> None:
        with self._lock:
            for chunk_id in chunk_ids:
                old = self._items.pop(chunk_id, None)
                if old is not None:
                    self.used -= self._size(*old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._items)


def fetch(store: VectorStore, cache: Rows, ids: list[str], sentences: bool) -> dict[str, tuple[Chunk, np.ndarray]]:
    """Chunk and rows of each of ``ids``: from the cache, else from the store (one read of
    the chunks, one of their sentence rows), then cached; a deleted id is left out.
    ``sentences``: with sentence rows (else a chunk's rows are its vector only)."""
    found: dict[str, tuple[Chunk, np.ndarray]] = {}
    missing = []
    for chunk_id in dict.fromkeys(ids):
        item = cache.get(chunk_id)
        if item is not None and (not sentences or len(item[1]) > 1 or not item[0].metadata.get(SENTENCES)):
            found[chunk_id] = item
        else:
            missing.append(chunk_id)
    if not missing:
        return found
    # One read for the chunks (texts as stored; vectors), one for their sentence rows.
    vectors: dict[str, np.ndarray] = {}
    chunks: dict[str, Chunk] = {}
    got = store.collection("documents").get(ids=missing, include=["documents", "metadatas", "embeddings"])
    for i, text, metadata, vector in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
        metadata = {k: v for k, v in (metadata or {}).items() if k != TERMS}  # BM25 has them
        chunks[i], vectors[i] = Chunk(i, text, metadata), np.asarray(vector, np.float32)
    rows: dict[str, list[np.ndarray]] = {}
    if sentences:
        wanted = [sentence_id(c, n) for c, chunk in chunks.items() for n in range(int(chunk.metadata.get(SENTENCES, 0)))]
        if wanted:
            got = store.collection(SENTENCE_COLLECTION).get(ids=wanted, include=["embeddings"])
            by_id = dict(zip(got["ids"], got["embeddings"]))
            for c, chunk in chunks.items():
                parts = [by_id[s] for n in range(int(chunk.metadata.get(SENTENCES, 0)))
                         if (s := sentence_id(c, n)) in by_id]
                rows[c] = parts
    for c, chunk in chunks.items():
        item = (chunk, np.vstack([vectors[c][None, :], *(np.asarray(r, np.float32)[None, :] for r in rows.get(c, []))]))
        cache.put(c, *item)
        found[c] = item
    return found


def vector_rows(store: VectorStore, cache: Rows, ids: list[str]) -> list[np.ndarray | None]:
    """Per chunk id: its vector, then its sentences' vectors (``evidence.analyse``'s ``rows``
    takes this layout); None for an unknown id."""
    found = fetch(store, cache, ids, sentences=True)
    return [found[c][1] if c in found else None for c in ids]


def delete(store: VectorStore, doc_ids: list[str]) -> list[str]:
    """Delete every chunk of these documents and its sentence rows; returns the chunk ids."""
    if not doc_ids:
        return []
    where = {"doc_id": {"$in": list(doc_ids)}}
    stale = store.collection("documents").get(where=where, include=[])["ids"]
    if stale:
        store.delete(SENTENCE_COLLECTION, where=where)
        store.delete("documents", ids=stale)
    return stale
