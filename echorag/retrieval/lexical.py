"""Lexical retrieval: BM25 over Kiwi morphemes, and fusion of several rankings."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import bm25s
import numpy as np

from echorag.korean import morphemes_many

Ranking = list[tuple[str, float]]  # (id, score), best first


class BM25Index:
    """An in-memory BM25 index over Kiwi morphemes, kept small: each document is an array
    of term ids into one vocabulary (4 bytes a term), never its text or term strings.

    ``add`` tokenises; ``add_terms`` takes terms tokenised before (the retriever stores
    them with each chunk, so a new replica rebuilds without running Kiwi again). bm25s
    cannot add documents to a built index, so changes only mark it stale and the next
    search rebuilds it from the stored term ids. Safe to share between threads.
    """

    # Default k1 and b: the best of bench/kiwi_tags.py (bench/results/kiwi_tags.json).
    def __init__(
        self,
        k1: float = 1.2,
        b: float = 0.75,
        tokenize: Callable[[list[str]], list[list[str]]] = morphemes_many,
        method: str = "lucene",
    ) -> None:
        self.k1 = k1
        self.b = b
        self.method = method  # bm25s variant: lucene, robertson, atire, bm25l, bm25+
        self._tokenize = tokenize
        self._vocab: dict[str, int] = {"": 0}  # bm25s scores term-less documents with ""
        self._docs: dict[str, np.ndarray] = {}  # id -> term ids (int32)
        self._lock = threading.RLock()  # save() builds (via _current) and copies under one hold
        # The built index and the ids of its rows; None when stale.
        self._built: tuple[bm25s.BM25, list[str], dict[str, int]] | None = None

    @property
    def params(self) -> dict:
        return {"k1": self.k1, "b": self.b, "method": self.method}

    def terms(self, texts: list[str]) -> list[list[str]]:
        """Index terms of each text (what ``add_terms`` takes)."""
        return self._tokenize(list(texts))

    def add(self, ids: list[str], texts: list[str]) -> list[list[str]]:
        """Index texts under ids (an id already indexed is replaced); returns their terms."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        terms = self.terms(texts)  # the slow part, outside the lock
        self.add_terms(ids, terms)
        return terms

    def add_terms(self, ids: list[str], terms: list[list[str]]) -> None:
        if len(ids) != len(terms):
            raise ValueError(f"{len(ids)} ids but {len(terms)} term lists")
        with self._lock:
            vocab = self._vocab
            for doc_id, doc_terms in zip(ids, terms):
                self._docs[doc_id] = np.fromiter(
                    (vocab.setdefault(t, len(vocab)) for t in doc_terms), np.int32, len(doc_terms)
                )
            self._built = None

    def remove(self, ids: list[str]) -> None:
        """Forget these ids; unknown ids are ignored."""
        with self._lock:
            for doc_id in ids:
                self._docs.pop(doc_id, None)
            self._built = None

    def clear(self) -> None:
        with self._lock:
            self._docs.clear()
            self._vocab = {"": 0}
            self._built = None

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._docs

    def search(self, query: str, k: int = 10, include: Iterable[str] = ()) -> Ranking:
        """Up to k (id, score) pairs, best first; documents sharing no term are left out.

        Ids in `include` are scored too (0.0 when they share no term; unknown ids are
        skipped) and follow the top k, so a fusion can compare exact scores of every
        candidate instead of treating "not in the top k" as zero.
        """
        include = [doc_id for doc_id in dict.fromkeys(include) if doc_id in self._docs]
        if k <= 0 and not include:
            return []
        query_terms = self._tokenize([query])[0]
        built = self._current()
        if built is None:
            return []
        retriever, ids, row_of = built  # immutable once built: scoring needs no lock
        known_terms = [t for t in query_terms if t in retriever.vocab_dict]
        if known_terms:
            scores = retriever.get_scores(known_terms)
        else:
            scores = np.zeros(len(ids), np.float32)
        hits = np.flatnonzero(scores > 0) if k > 0 else np.zeros(0, int)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        ranking = [(ids[i], float(scores[i])) for i in hits]
        ranking.sort(key=lambda hit: (-hit[1], hit[0]))
        ranked = {doc_id for doc_id, _ in ranking}
        # An id indexed after this build is not in row_of yet; it scores 0 until the rebuild.
        ranking += [(d, float(scores[row_of[d]]) if d in row_of else 0.0) for d in include if d not in ranked]
        return ranking

    def save(self, directory: Path) -> None:
        """Write the built index and every document's term ids under ``directory``
        (``load`` maps them back in; bm25s' own files for the scores and vocabulary)."""
        with self._lock:
            built, docs = self._current(), dict(self._docs)
        if built is None:
            raise ValueError("an empty index is not saved")
        retriever, ids, _ = built
        directory.mkdir(parents=True)
        retriever.save(str(directory), show_progress=False)
        lengths = np.fromiter((len(docs[i]) for i in ids), np.int64, len(ids))
        np.save(directory / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
        np.save(directory / "terms.npy", np.concatenate([docs[i] for i in ids]).astype(np.int32))
        (directory / "ids.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, **kwargs) -> "BM25Index":
        """An index saved by ``save``, its arrays memory-mapped (read-only, shared by the page
        cache between replicas); ready to search, and to take more documents."""
        retriever = bm25s.BM25.load(str(directory), mmap=True)
        index = cls(k1=retriever.k1, b=retriever.b, method=retriever.method, **kwargs)
        ids = json.loads((directory / "ids.json").read_text(encoding="utf-8"))
        offsets = np.load(directory / "offsets.npy")
        terms = np.load(directory / "terms.npy", mmap_mode="r").view(np.ndarray)  # plain slices: fast
        if len(offsets) != len(ids) + 1 or offsets[-1] != len(terms):
            raise ValueError(f"{directory}: ids, offsets and terms disagree")
        index._vocab = dict(retriever.vocab_dict)
        index._docs = {doc_id: terms[offsets[n] : offsets[n + 1]] for n, doc_id in enumerate(ids)}
        index._built = (retriever, ids, {doc_id: row for row, doc_id in enumerate(ids)})
        return index

    def _current(self) -> tuple[bm25s.BM25, list[str], dict[str, int]] | None:
        """The built index, built first when stale; None while empty."""
        with self._lock:
            if self._built is None and self._docs:
                self._built = self._build()
            return self._built

    def _build(self) -> tuple[bm25s.BM25, list[str], dict[str, int]]:
        ids = list(self._docs)
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        # Term ids as bm25s takes them; the vocabulary is copied (bm25s keeps the one it gets).
        retriever.index(([self._docs[i] for i in ids], dict(self._vocab)), show_progress=False)
        return retriever, ids, {doc_id: row for row, doc_id in enumerate(ids)}


def fuse(
    rankings: dict[str, Ranking],
    weights: dict[str, float] | None = None,
    method: Literal["rrf", "score", "zscore"] = "rrf",
    rrf_k: int = 60,
) -> Ranking:
    """Merge named rankings (e.g. {"dense": ..., "bm25": ...}) into one, best first.

    "rrf": weighted reciprocal rank fusion, sum of weight / (rrf_k + rank), rank from 1.
    "score": each ranking's scores min-max normalised to [0, 1], then a weighted sum.
    A ranking whose scores are all equal (one item, say) normalises to 1: its items
    are that ranking's best.
    "zscore": each ranking's scores standardised (mean 0, standard deviation 1), then
    a weighted sum; a ranking whose scores are all equal adds nothing. Unlike min-max,
    one outlier does not squash the rest, and a flat ranking (a retriever that sees no
    difference) has no say.
    A missing weight is 1; ties are broken by id.
    """
    weights = weights or {}
    fused: dict[str, float] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 1.0)
        if method == "rrf":
            contributions = _rrf(ranking, rrf_k)
        elif method == "score":
            contributions = _min_max(ranking)
        elif method == "zscore":
            contributions = _z_score(ranking)
        else:
            raise ValueError(f"unknown fusion method {method!r}")
        for doc_id, value in contributions.items():
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * value
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def _rrf(ranking: Ranking, rrf_k: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for rank, (doc_id, _) in enumerate(ranking, start=1):
        values.setdefault(doc_id, 1.0 / (rrf_k + rank))  # a repeated id keeps its best rank
    return values


def _min_max(ranking: Ranking) -> dict[str, float]:
    if not ranking:
        return {}
    scores = [score for _, score in ranking]
    low, high = min(scores), max(scores)
    values: dict[str, float] = {}
    for doc_id, score in ranking:
        value = (score - low) / (high - low) if high > low else 1.0
        values[doc_id] = max(values.get(doc_id, value), value)
    return values


def _z_score(ranking: Ranking) -> dict[str, float]:
    if not ranking:
        return {}
    scores = np.array([score for _, score in ranking], dtype=np.float64)
    spread = scores.std()
    values: dict[str, float] = {}
    for doc_id, score in ranking:
        value = float((score - scores.mean()) / spread) if spread > 0 else 0.0
        values[doc_id] = max(values.get(doc_id, value), value)
    return values
