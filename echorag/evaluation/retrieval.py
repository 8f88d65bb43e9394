"""Offline retrieval evaluation: the service's own chunking, embedder, Chroma and BM25,
in-process, on any corpus/queries pair (``echorag eval-retrieval``)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterable

import chromadb
import numpy as np
from chromadb.config import Settings as ChromaSettings
from tqdm import tqdm

from echorag.config import Settings
from echorag.evaluation.retrieval_metrics import evaluate
from echorag.retrieval.embedding import document_embedder
from echorag.retrieval.hybrid import Retriever, chunk_documents
from echorag.retrieval.vector_store import VectorStore

MODES = ("bm25", "dense", "hybrid")


def doc_ranking(chunk_ids: Iterable[str], chunk_to_doc: dict[str, str], k: int = 10) -> list[str]:
    """Chunk ranking → document ranking (first occurrence wins)."""
    return list(dict.fromkeys(chunk_to_doc[c] for c in chunk_ids))[:k]


class RetrievalBench:
    """Index a corpus once, then score any retrieval configuration on its queries."""

    def __init__(
        self, corpus: list[dict], settings: Settings, progress: bool = True, batch: int = 64, embedder=None
    ) -> None:
        self.settings = settings
        self.embedder = embedder or document_embedder(settings)
        self._query_vectors: dict[tuple[str, ...], tuple[list[np.ndarray], list[float]]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="echorag-eval-")
        client = chromadb.PersistentClient(self._tmp.name, settings=ChromaSettings(anonymized_telemetry=False))
        store = VectorStore(client, self.embedder.id, self.embedder.dim)
        started = time.perf_counter()
        chunks = chunk_documents(corpus, settings.chunk_size, settings.chunk_overlap)
        self.chunk_to_doc = {c.id: c.metadata["doc_id"] for c in chunks}
        bar = tqdm(total=len(chunks), desc="indexing", unit="chunk", disable=not progress)
        vectors = []
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            vectors.append(self.embedder.embed_passages([c.text for c in part]))
            bar.update(len(part))
        bar.close()
        self.retriever = Retriever.from_settings(store, settings, self.embedder.embed_passages)
        self.retriever.add_chunks(chunks, np.concatenate(vectors) if vectors else np.zeros((0, store.dim)))
        self.retriever.bm25.search("warm-up", 1)  # build the BM25 index inside the timed span
        self.index_seconds = time.perf_counter() - started
        self.chunks = len(chunks)

    def run(
        self, queries: list[dict], modes: Iterable[str] = MODES, progress: bool = True
    ) -> dict[str, dict]:
        # Unanswerable questions (no relevant document) measure abstention, not retrieval.
        queries = [q for q in queries if q["relevant_ids"]]
        texts = [q["query"] for q in queries]
        vectors, embed_ms = self._embed_queries(texts, progress)
        relevant = [q["relevant_ids"] for q in queries]
        report = {}
        for mode in modes:
            ranked, latencies = [], []
            for text, vector in tqdm(
                list(zip(texts, vectors)), desc=mode, unit="q", disable=not progress, leave=False
            ):
                t0 = time.perf_counter()
                hits = self.retriever.search(text, vector, 30, mode=mode)
                latencies.append((time.perf_counter() - t0) * 1000)
                ranked.append(doc_ranking((h.id for h in hits), self.chunk_to_doc))
            metrics = evaluate(ranked, relevant)
            metrics["p50_search_ms"] = round(statistics.median(latencies), 2)
            # Embedding + search per query (bm25 alone needs no embedding).
            totals = latencies if mode == "bm25" else [a + b for a, b in zip(latencies, embed_ms)]
            metrics["p50_query_ms"] = round(statistics.median(totals), 2)
            metrics["p95_query_ms"] = round(float(np.percentile(totals, 95)), 2)
            report[mode] = metrics
        return report

    def _embed_queries(self, texts: list[str], progress: bool) -> tuple[list[np.ndarray], list[float]]:
        """One query at a time, as the service embeds them (the latency a user sees); cached
        so a sweep does not embed again."""
        key = tuple(texts)
        if key not in self._query_vectors:
            vectors, embed_ms = [], []
            for text in tqdm(texts, desc="embedding queries", unit="q", disable=not progress, leave=False):
                t0 = time.perf_counter()
                vectors.append(self.embedder.embed_queries([text])[0])
                embed_ms.append((time.perf_counter() - t0) * 1000)
            self._query_vectors = {key: (vectors, embed_ms)}
        return self._query_vectors[key]

    def sweep(self, queries: list[dict], weights: Iterable[float], methods=("rrf", "score", "zscore")) -> list[dict]:
        """Hybrid retrieval over a grid of BM25 weights (dense weight = 1 - w)."""
        rows = []
        for method in methods:
            for w in weights:
                self.retriever.fusion = method
                self.retriever.weights = {"bm25": w, "dense": 1.0 - w}
                metrics = self.run(queries, ["hybrid"], progress=False)["hybrid"]
                rows.append({"fusion": method, "bm25_weight": w, "dense_weight": round(1.0 - w, 3), **metrics})
        s = self.settings
        self.retriever.fusion, self.retriever.weights = s.fusion, {"bm25": s.bm25_weight, "dense": s.dense_weight}
        return rows

    def close(self) -> None:
        self._tmp.cleanup()
