"""Hybrid retrieval: Chroma (dense, cosine) + Kiwi BM25, fused.

Documents are chunked on sentence boundaries before indexing; a chunk's id is
``<doc_id>#<n>`` and its metadata carries ``doc_id`` so callers can map chunks
back to documents. Past turns go to the ``memory`` collection (dense only,
filtered per user so one user never sees another's conversation). ``ingest``
(documents) and ``remember_turn`` (turns, under their question's vector) are the
only write paths, in-process and in Serve alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from echorag.answering import evidence
from echorag.answering.selector import AnswerSelector
from echorag.korean import chunk_text, normalize, split_sentences
from echorag.retrieval import passages
from echorag.retrieval.bm25_snapshots import BM25Snapshots
from echorag.retrieval.lexical import BM25Index, fuse
from echorag.retrieval.vector_store import Chunk, VectorStore
from echorag.types import Analysis, ChatContext, DocumentsResponse, SearchResult, Turn

Mode = Literal["bm25", "dense", "hybrid"]
Embed = Callable[[list[str]], np.ndarray]


def _sentences_to_embed(text: str) -> list[str]:
    sentences = split_sentences(text)
    return sentences if len(sentences) > 1 else []


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
    the rest. Defaults: bench/results/retrieval_tuning.json (``python bench/retrieval_tune.py``).

    A replica holds only the BM25 index (term ids, ``echorag.retrieval.lexical``). Everything
    else is in the store (``echorag.retrieval.passages``): texts, chunk vectors, sentence vectors
    (embedded once, at indexing) and each chunk's BM25 terms (tokenised once), so a new
    replica starts by loading the BM25 snapshot of the current documents (``snapshots``,
    ``echorag.retrieval.bm25_snapshots``) or, when there is none, by reading terms and building it,
    and a search fetches its candidates' rows.
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
        cache_mb: float = 256,
        snapshots: BM25Snapshots | None = None,
        selector: AnswerSelector | None = None,
    ) -> None:
        self.store = store
        self.selector = selector or AnswerSelector.base()  # the active version: whoever serves sets it
        self.fusion = fusion
        self.weights = {"bm25": bm25_weight, "dense": dense_weight}
        self.candidates = candidates
        self.embed_passages = embed_passages
        self.sentence_weight = sentence_weight
        self._rows = passages.Rows(int(cache_mb * 2**20))  # rows searches fetched, bounded
        self.snapshots = snapshots
        # BM25 from the terms stored with each chunk; chunks indexed before terms were
        # stored (or without an embedder's sentences) are completed once, and stored.
        self.bm25, incomplete = self._load_bm25()
        for start in range(0, len(incomplete), 500):
            got = store.collection("documents").get(
                ids=incomplete[start : start + 500], include=["documents", "metadatas", "embeddings"])
            stored = [Chunk(i, t, dict(m or {})) for i, t, m in zip(got["ids"], got["documents"], got["metadatas"])]
            self._index(stored, np.asarray(got["embeddings"], np.float32))

    def _load_bm25(self) -> tuple[BM25Index, list[str]]:
        """A BM25 index of the stored terms, and the ids of chunks stored without them:
        a snapshot's when one of the current generation exists, else read from the store."""
        # Read before the terms: a write while they load changes it, and sync() loads again.
        self._generation = generation = self.store.generation()
        if self.snapshots is None or generation is None:
            return self._read_bm25()
        incomplete: list[str] = []

        def build() -> tuple[BM25Index, bool]:
            index, missing = self._read_bm25()
            incomplete.extend(missing)
            return index, not missing

        requires = {**BM25Index().params, "sentences": self._sentences_wanted}
        return self.snapshots.get(generation, requires, build), incomplete

    def _read_bm25(self) -> tuple[BM25Index, list[str]]:
        index, ids, terms, incomplete = BM25Index(), [], [], []
        for chunk_id, metadata in passages.stored_metadata(self.store):
            if passages.TERMS not in metadata or (self._sentences_wanted and passages.SENTENCES not in metadata):
                incomplete.append(chunk_id)
            else:
                ids.append(chunk_id)
                terms.append(passages.unpack_terms(metadata[passages.TERMS]))
        index.add_terms(ids, terms)
        return index, incomplete

    def sync(self) -> bool:
        """Reload BM25 (and drop the cached rows) when documents were written since the last
        load, through any replica, this one included: each replica's BM25 is its own, and
        Chroma tells nobody. True when it reloaded. Blocking; searches go on meanwhile."""
        if self.store.generation() == self._generation:
            return False
        self.bm25, _ = self._load_bm25()
        self._rows.clear()
        return True

    @classmethod
    def from_settings(
        cls, store: VectorStore, settings, embed_passages: Embed | None
    ) -> "Retriever":
        """The service's retriever: fusion and sentence re-scoring as configured."""
        return cls(
            store, settings.fusion, settings.bm25_weight, settings.dense_weight,
            embed_passages=embed_passages if settings.sentence_weight > 0 else None,
            sentence_weight=settings.sentence_weight, cache_mb=settings.retriever_cache_mb,
            snapshots=BM25Snapshots(settings.bm25_snapshots_root),
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
        self._index(chunks, embeddings)

    @property
    def _sentences_wanted(self) -> bool:
        return self.embed_passages is not None and self.sentence_weight > 0

    def _index(self, chunks: list[Chunk], embeddings: np.ndarray) -> None:
        """Tokenise, split and embed sentences once, store it all, then index BM25."""
        self._rows.forget([c.id for c in chunks])
        terms = self.bm25.terms([c.text for c in chunks])
        # A one-sentence chunk is its own best sentence: only longer chunks are split.
        split = [_sentences_to_embed(c.text) if self._sentences_wanted else [] for c in chunks]
        flat = [s for parts in split for s in parts]
        vectors = self.embed_passages(flat) if flat else None
        if self._sentences_wanted and vectors is None:
            vectors = np.zeros((0, self.store.dim), np.float32)
        passages.put(self.store, chunks, np.asarray(embeddings, np.float32), terms, split, vectors)
        self.bm25.add_terms([c.id for c in chunks], terms)

    def delete_documents(self, doc_ids: list[str]) -> int:
        stale = passages.delete(self.store, doc_ids)
        if stale:
            self.bm25.remove(stale)
            self._rows.forget(stale)
        return len(stale)

    def _dense_score(self, similarities: np.ndarray) -> float:
        """The chunk's cosine, blended with its best sentence's when it has sentence rows."""
        if len(similarities) == 1 or not self._sentences_wanted:
            return float(similarities[0])
        w = self.sentence_weight
        return float((1 - w) * similarities[0] + w * similarities[1:].max())

    def vector_rows(self, chunk_ids: list[str]) -> list[np.ndarray | None]:
        """Each chunk's vector, then its sentences' (what ``evidence.analyse`` takes as ``rows``)."""
        return passages.vector_rows(self.store, self._rows, chunk_ids)

    def analyse(self, question: str, vector: np.ndarray, results: list[SearchResult]) -> Analysis:
        """The question against the document passages, sentence by sentence, with the
        vectors stored at indexing (no embedding here), scored by the active selector."""
        ids = [r.id for r in results if r.collection == "documents"]
        stored = dict(zip(ids, self.vector_rows(ids)))
        rows = [stored.get(r.id) if r.collection == "documents" else None for r in results]
        return self.selector.decide(evidence.analyse(question, results, vector, rows=rows))

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
        # Every candidate's chunk and rows (cached, else read from the store).
        candidates = [*dense_hits, *(c for c, _ in rankings.get("bm25", []))]
        found = passages.fetch(self.store, self._rows, candidates, sentences=use_dense and self._sentences_wanted)
        if use_dense:
            dense = [(cid, self._dense_score(rows @ vector)) for cid, (_, rows) in found.items()]
            rankings["dense"] = sorted(dense, key=lambda item: (-item[1], item[0]))
        if len(rankings) == 1:
            fused = next(iter(rankings.values()))
        else:
            fused = fuse(rankings, self.weights, method=self.fusion)
        results = []
        for chunk_id, score in fused[:k]:
            hit = dense_hits.get(chunk_id) or found.get(chunk_id, (None, None))[0]
            if hit is not None:
                results.append(SearchResult(
                    id=chunk_id, text=hit.text, score=float(score), collection="documents",
                    metadata=passages.public(hit.metadata),
                ))
        return results

    # -- memory of past turns --------------------------------------------------------
    def remember_turn(self, turn: Turn, question_vector: np.ndarray) -> None:
        """Index one answered turn under its question's query vector: the one retrieval
        already computed, so remembering embeds nothing, and a later question recalls
        the turns that asked something alike (query to query, as e5 was trained)."""
        self.remember_turns([turn], [question_vector])

    def remember_turns(self, turns: list[Turn], question_vectors: list[np.ndarray]) -> None:
        """``remember_turn`` for several turns in one store write: Chroma's upsert costs
        nearly as much for one row as for eight (its transaction and index update)."""
        if turns:
            vectors = np.stack([np.asarray(v, np.float32).reshape(-1) for v in question_vectors])
            self.store.upsert("memory", [t.id for t in turns], [t.memory_text() for t in turns], vectors,
                              [t.memory_metadata() for t in turns])

    def recall(self, vector: np.ndarray, k: int, user_id: str) -> list[SearchResult]:
        """Past turns of one owner only: a user, or ``session:<id>`` (echorag.identity.access)."""
        return self.store.query("memory", vector, k, where={"user_id": user_id})

    def forget(self, where: dict[str, Any]) -> int:
        """Delete the remembered turns that match a metadata filter (one owner's, one
        session's); returns how many."""
        ids = self.store.collection("memory").get(where=where, include=[])["ids"]
        if ids:
            self.store.delete("memory", ids=ids)
        return len(ids)

    def chat_context(
        self, query: str, vector: np.ndarray, user_id: str, k: int, memory_k: int
    ) -> list[SearchResult]:
        """What an answer may draw on: the top documents, then this user's related past turns."""
        results = self.search(query, vector, k)
        if memory_k:
            results += self.recall(vector, memory_k, user_id)
        return results

    def answer_context(self, query: str, vector: np.ndarray, user_id: str, settings: Any) -> ChatContext:
        """``chat_context`` and its analysis in one call (one round trip in Serve)."""
        results = self.chat_context(query, vector, user_id, settings.top_k, settings.memory_top_k)
        return ChatContext(results, self.analyse(query, vector, results))

    def counts(self) -> dict[str, int]:
        return {"documents": self.store.count("documents"), "memory": self.store.count("memory")}
