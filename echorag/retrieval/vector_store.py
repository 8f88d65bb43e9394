"""Chroma vector store: embedded (``PersistentClient``) or server (``HttpClient``).

Vectors always come from our own embedder (no Chroma embedding function, so
nothing is ever downloaded). Each collection records which embedder filled it;
opening it with another embedder is refused instead of returning garbage.
A query answers with ``SearchResult`` (the type the HTTP response carries), so a
hit is never converted on its way out; what is stored, unscored, is a ``Chunk``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Chroma's telemetry is off before chromadb is first imported.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb  # noqa: E402
from chromadb.config import Settings as ChromaSettings  # noqa: E402

from echorag.types import SearchResult  # noqa: E402

# "sentences": the sentence vectors of document chunks (echorag.retrieval.passages), only ever read
# by id, never searched: its HNSW graph is built as cheaply as Chroma allows.
COLLECTIONS = ("documents", "sentences", "memory")
_INDEX = {"sentences": {"hnsw:M": 4, "hnsw:construction_ef": 8}}
# Chroma has no change feed: every write of documents renews a token in this collection,
# so a retriever replica can tell that another one (or the CLI) wrote (``generation``).
META_COLLECTION = "echorag_meta"


def collection_metadata(name: str, embedder_id: str, dim: int) -> dict[str, Any]:
    return {"hnsw:space": "cosine", **_INDEX.get(name, {}), "embedder": embedder_id, "dim": dim}
REINDEX_HINT = "echorag reindex"


class EmbedderMismatchError(RuntimeError):
    """The collection was indexed with another embedder (or dimension)."""


@dataclass
class Chunk:
    """A text as indexed (a document chunk or a remembered turn); not a SearchResult, as nothing scored it."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def connect(settings) -> "chromadb.api.ClientAPI":
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_host:
        return chromadb.HttpClient(
            host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings
        )
    settings.chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)


class VectorStore:
    def __init__(self, client, embedder_id: str, dim: int, check: bool = True) -> None:
        self.client = client
        self.embedder_id = embedder_id
        self.dim = dim
        self._collections = {name: self._open(name, check) for name in COLLECTIONS}
        self._meta = client.get_or_create_collection(META_COLLECTION, embedding_function=None)

    @classmethod
    def from_settings(cls, settings, embedder_id: str, dim: int) -> "VectorStore":
        return cls(connect(settings), embedder_id, dim)

    def _open(self, name: str, check: bool):
        collection = self.client.get_or_create_collection(
            name,
            metadata=collection_metadata(name, self.embedder_id, self.dim),
            embedding_function=None,
        )
        stored_id = (collection.metadata or {}).get("embedder")
        stored_dim = (collection.metadata or {}).get("dim")
        if check and (stored_id != self.embedder_id or stored_dim != self.dim):
            raise EmbedderMismatchError(
                f"Chroma collection '{name}' was indexed with embedder {stored_id!r} "
                f"({stored_dim} dims) but the service now embeds with {self.embedder_id!r} "
                f"({self.dim} dims). Re-embed the stored texts with `{REINDEX_HINT}` "
                f"(same settings as the server), or switch the embedder back."
            )
        return collection

    def collection(self, name: str):
        return self._collections[name]

    def generation(self, name: str = "documents") -> str | None:
        """A token that changes with every write of this collection (None before the first)."""
        got = self._meta.get(ids=[name], include=["metadatas"])
        return (got["metadatas"][0] or {}).get("generation") if got["ids"] else None

    def _changed(self, name: str) -> None:
        if name == "documents":
            self._meta.upsert(ids=[name], embeddings=[[1.0]], metadatas=[{"generation": uuid.uuid4().hex}])

    def count(self, name: str) -> int:
        return self._collections[name].count()

    def upsert(
        self,
        name: str,
        ids: list[str],
        texts: list[str],
        embeddings: np.ndarray,
        metadatas: list[dict[str, Any]],
    ) -> None:
        if not ids:
            return
        if embeddings.shape != (len(ids), self.dim):
            raise ValueError(f"expected embeddings of shape ({len(ids)}, {self.dim})")
        self._collections[name].upsert(
            ids=ids,
            documents=texts,
            embeddings=embeddings.astype(np.float32),
            # Chroma rejects empty metadata dicts.
            metadatas=[m or None for m in metadatas],
        )
        self._changed(name)

    def query(
        self, name: str, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[SearchResult]:
        collection = self._collections[name]
        count = collection.count() if k > 0 else 0  # one round trip to a Chroma server, not two
        if count == 0:
            return []
        result = collection.query(
            query_embeddings=[np.asarray(vector, np.float32)],
            n_results=min(k, count),
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        return [
            SearchResult(id=i, text=t, score=1.0 - float(d), collection=name, metadata=dict(m or {}))
            for i, t, m, d in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
            )
        ]

    def get_all(self, name: str, batch: int = 1000) -> list[Chunk]:
        """Every stored item (text and metadata; no vectors) — used to rebuild BM25."""
        collection = self._collections[name]
        items, offset = [], 0
        while True:
            page = collection.get(limit=batch, offset=offset, include=["documents", "metadatas"])
            for i, t, m in zip(page["ids"], page["documents"], page["metadatas"]):
                items.append(Chunk(id=i, text=t, metadata=dict(m or {})))
            if len(page["ids"]) < batch:
                return items
            offset += batch

    def delete(self, name: str, ids: list[str] | None = None, where: dict[str, Any] | None = None) -> None:
        if ids is None and where is None:
            self.client.delete_collection(name)
            self._collections[name] = self._open(name, check=False)
        else:
            self._collections[name].delete(ids=ids, where=where)
        self._changed(name)

    def ping(self) -> bool:
        try:
            self.client.heartbeat()
            return True
        except Exception:
            return False


def reindex(client, embedder, batch: int = 64, progress=None) -> dict[str, int]:
    """Re-embed every stored text with ``embedder``.

    Each collection is rebuilt under a temporary name and swapped in only when
    complete, so an interrupted re-index leaves the old index intact.
    """
    old = VectorStore(client, embedder.id, embedder.dim, check=False)
    counts = {}
    for name in COLLECTIONS:
        items = old.get_all(name)
        staging = f"{name}-reindex"
        if staging in [c.name for c in client.list_collections()]:
            client.delete_collection(staging)
        target = client.create_collection(
            staging,
            metadata=collection_metadata(name, embedder.id, embedder.dim),
            embedding_function=None,
        )
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            texts = [h.text for h in part]
            target.add(
                ids=[h.id for h in part],
                documents=texts,
                embeddings=embedder.embed_passages(texts),
                metadatas=[h.metadata or None for h in part],
            )
            if progress:
                progress(len(part))
        client.delete_collection(name)
        target.modify(name=name)
        counts[name] = len(items)
        old._changed(name)
    return counts
