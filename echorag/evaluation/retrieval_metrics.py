"""Retrieval metrics over ranked id lists, with binary relevance."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def _top_k(ranked: Sequence[str], k: int) -> list[str]:
    """The first k distinct ids (a repeated id is not a second hit)."""
    return list(dict.fromkeys(ranked))[:k]


def ndcg_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int = 10) -> float:
    relevant = set(relevant)
    if not relevant:
        return 0.0
    dcg = sum(1 / math.log2(i + 2) for i, doc_id in enumerate(_top_k(ranked, k)) if doc_id in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int = 10) -> float:
    relevant = set(relevant)
    if not relevant:
        return 0.0
    return len(relevant.intersection(_top_k(ranked, k))) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int = 10) -> float:
    """1 / rank of the first relevant id within the top k, else 0."""
    relevant = set(relevant)
    for rank, doc_id in enumerate(_top_k(ranked, k), start=1):
        if doc_id in relevant:
            return 1 / rank
    return 0.0


def evaluate(
    ranked: list[list[str]], relevant: list[list[str]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean metrics over queries: recall@k for each k; nDCG and MRR at the largest k.

    A query without relevant ids scores 0 on every metric.
    """
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance lists")
    n = len(ranked)

    def mean(metric, k: int) -> float:
        return sum(metric(r, rel, k) for r, rel in zip(ranked, relevant)) / n if n else 0.0

    top = max(ks)
    result = {f"ndcg@{top}": mean(ndcg_at_k, top)}
    result.update({f"recall@{k}": mean(recall_at_k, k) for k in sorted(ks)})
    result[f"mrr@{top}"] = mean(mrr_at_k, top)
    result["queries"] = n
    return result


def load_jsonl(path: str | Path) -> list[dict]:
    """One JSON object per non-blank line."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
