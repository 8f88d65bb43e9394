"""An on-disk cache around an embedder, for benchmarks that embed the same texts often.

Vectors are keyed by (query/passage, text), so any caller that embeds a text again,
in any batch, gets the stored vector. Each computed batch is saved at once as its own
shard, so an interrupted run keeps its work. Never used by the service.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def _key(text: str, is_query: bool) -> str:
    return hashlib.sha1((("query:" if is_query else "passage:") + text).encode()).hexdigest()


class CachedEmbedder:
    def __init__(self, embedder, cache_dir: Path, batch: int = 64, cache_queries: bool = True) -> None:
        self.embedder = embedder
        self.cache_queries = cache_queries  # False: queries are embedded live (to time them)
        self.id, self.dim = embedder.id, embedder.dim
        self.dir = Path(cache_dir) / embedder.id.replace(":", "_").replace("/", "_")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.batch = batch
        self._vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")):
            with np.load(shard) as data:
                self._vectors.update(zip(data["keys"].tolist(), data["vectors"]))

    def _embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        keys = [_key(t, is_query) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self._vectors))
        embed = self.embedder.embed_queries if is_query else self.embedder.embed_passages
        for start in range(0, len(missing), self.batch):
            part = missing[start : start + self.batch]
            vectors = embed(part)
            part_keys = [_key(t, is_query) for t in part]
            self._vectors.update(zip(part_keys, vectors))
            name = hashlib.sha1("".join(part_keys).encode()).hexdigest()[:20]
            np.savez(self.dir / f"{name}.npz", keys=np.array(part_keys), vectors=vectors)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        if not self.cache_queries:
            return self.embedder.embed_queries(texts)
        return self._embed(texts, True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, False)
