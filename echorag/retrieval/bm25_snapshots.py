"""BM25 snapshots: a retriever replica loads the index another one built, instead of
reading every chunk's terms from Chroma and building it again.

A snapshot is named by the store's generation token (``VectorStore.generation``), which
every write of documents renews, so a snapshot is never stale: a replica that finds one
for the current generation has exactly what a rebuild would give. Replicas sharing the
directory (one node's disk, or a path every node mounts) build each generation once: the
builder holds a file lock, and the others wait for it and load its result. A snapshot is
written to a temporary directory and renamed into place, so nobody reads half of one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from echorag.retrieval.lexical import BM25Index

logger = logging.getLogger(__name__)
KEEP_OLD_S = 600.0  # how long a superseded snapshot stays for replicas still mapping it


class BM25Snapshots:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, generation: str) -> Path:
        return self.root / f"bm25-{generation}"

    def get(self, generation: str, requires: dict, build: Callable[[], tuple[BM25Index, bool]]) -> BM25Index:
        """The index of this generation: loaded when a snapshot of it exists (and was
        built under the same ``requires``: BM25 parameters, sentence vectors wanted),
        else ``build()`` under the lock, saved when it says the index is complete."""
        index = self._load(generation, requires)
        if index is not None:
            return index
        with self._lock():
            index = self._load(generation, requires)  # built while this replica waited
            if index is not None:
                return index
            index, complete = build()
            if complete and len(index):
                self._save(generation, requires, index)
        return index

    def _load(self, generation: str, requires: dict) -> BM25Index | None:
        path = self._path(generation)
        try:
            if json.loads((path / "requires.json").read_text()) != requires:
                return None
            return BM25Index.load(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # damaged, or pruned while loading: build it again
            logger.warning("BM25 snapshot %s unreadable; rebuilding", path, exc_info=True)
            return None

    def _save(self, generation: str, requires: dict, index: BM25Index) -> None:
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=".bm25-", dir=self.root))
        try:
            index.save(tmp / "index")
            (tmp / "index" / "requires.json").write_text(json.dumps(requires))
            path = self._path(generation)
            shutil.rmtree(path, ignore_errors=True)  # one built under other requirements
            os.rename(tmp / "index", path)
        except OSError:  # a full or read-only disk costs the next replica a rebuild, no more
            logger.warning("BM25 snapshot not saved under %s", self.root, exc_info=True)
            return
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("BM25 snapshot of %d chunks saved in %.1f s: %s", len(index), time.perf_counter() - started, path)
        self._prune()

    def _prune(self) -> None:
        """Delete snapshots superseded more than KEEP_OLD_S ago: a replica maps the one it
        loaded until it has loaded the next (deleting a mapped file on a shared mount
        would pull it from under the replica)."""
        snapshots = []
        for path in self.root.glob("bm25-*"):
            try:
                snapshots.append((path.stat().st_mtime, path))
            except OSError:
                pass
        snapshots.sort()
        cutoff = time.time() - KEEP_OLD_S
        for (_, old), (superseded_at, _) in zip(snapshots, snapshots[1:]):
            if superseded_at < cutoff:
                shutil.rmtree(old, ignore_errors=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield
