"""Adapter versions: ``root/v1``, ``root/v2``, ... and an ``active.json`` pointer.

A version is written into a temporary directory and renamed into place, so it
appears complete or not at all, and an existing version is never overwritten. Its
weights and config never change afterwards; only the ``status`` in ``metadata.json``
is rewritten (atomically). The active pointer is the source of truth for what
serves: promotion and rollback move it, nothing is copied or deleted.

``root`` is a local (or mounted shared) path, or a storage URI that every node of a
cluster reads (``file:///mnt/shared/adapters``, ``s3://bucket/adapters``,
``gs://bucket/adapters``, through ``pyarrow.fs``). With a URI, a version is uploaded
file by file with ``metadata.json`` last (a version without it is incomplete and is
never loaded), and ``path()`` downloads a version into a local cache directory, so
peft loads it from disk. One process writes (the collector); any number read.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from echorag.learning.adapter_storage import (
    METADATA_FILE,
    InvalidAdapterError,
    LocalStorage,
    RemoteStorage,
    is_uri,
    validate_adapter_dir,
)
from echorag.serving.routing import Traffic
from echorag.types import BASE

log = logging.getLogger(__name__)

POINTER_FILE = "active.json"
_VERSION = re.compile(r"^v([1-9]\d*)$")

Status = Literal["candidate", "active", "rejected", "archived"]


class AdapterInfo(BaseModel):
    version: str
    parent: str = Field(BASE, description="The version training continued from.")
    data_watermark: int = Field(0, description="Trained on turns with seq <= this.")
    samples: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict, description="Held-out losses, gate decision, ...")
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    status: Status = "candidate"


# --------------------------------------------------------------------------- the registry


class AdapterRegistry:
    def __init__(self, root: str | Path, cache_dir: str | Path | None = None) -> None:
        """``root``: a local path or a storage URI; ``cache_dir``: where versions under a
        URI are downloaded (default: a directory in the system's temp dir)."""
        if is_uri(root):
            self.storage: LocalStorage | RemoteStorage = RemoteStorage(str(root), cache_dir)
            self.root: str | Path = self.storage.uri
        else:
            self.storage = LocalStorage(root)
            self.root = self.storage.root
        self._lock = threading.Lock()
        # Called after every write of the active pointer (version, student share): this
        # registry is its one writer, so its owner can tell ingress replicas at once.
        self.on_pointer_change: Callable[[], None] | None = None

    # -- reading --------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Existing versions, oldest first."""
        found = [name for name in self.storage.directories() if _VERSION.match(name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def next_version(self) -> str:
        versions = self.versions()
        return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"

    def path(self, version: str) -> Path:
        """The directory of a valid version (what the generator loads)."""
        self._check_name(version)
        path = self.storage.local_dir(version)
        validate_adapter_dir(path, version)
        return path

    def info(self, version: str) -> AdapterInfo:
        self._check_name(version)
        try:
            info = AdapterInfo.model_validate_json(self.storage.read_text(f"{version}/{METADATA_FILE}"))
        except FileNotFoundError as exc:
            where = self.storage.where(version)
            raise InvalidAdapterError(f"adapter {version}: {METADATA_FILE} is missing in {where}") from exc
        except ValueError as exc:
            raise InvalidAdapterError(f"adapter {version}: {METADATA_FILE} is unreadable ({exc})") from exc
        # The pointer decides what is active; metadata may lag after a crash between writes.
        active = self.active
        if version == active:
            return info.model_copy(update={"status": "active"})
        if info.status == "active":
            return info.model_copy(update={"status": "archived"})
        return info

    def history(self) -> list[AdapterInfo]:
        """Every readable version, oldest first (unreadable ones are logged and skipped)."""
        infos = []
        for version in self.versions():
            try:
                infos.append(self.info(version))
            except InvalidAdapterError as exc:
                log.warning("skipping %s", exc)
        return infos

    @property
    def active(self) -> str:
        """The version that serves, or ``"base"``."""
        return self._pointer().get("version", BASE)

    def traffic(self, default_share: float = 0.0) -> Traffic:
        """The active version and the share of sessions the student answers where a teacher
        answers the rest (echorag.serving.routing; ``default_share`` until one is set), in one read."""
        pointer = self._pointer()
        share = pointer.get("student_share")
        return Traffic(pointer.get("version", BASE), default_share if share is None else float(share))

    def _pointer(self) -> dict[str, Any]:
        try:
            pointer = json.loads(self.storage.read_text(POINTER_FILE))
        except FileNotFoundError:
            return {"version": BASE}
        except ValueError as exc:
            raise InvalidAdapterError(f"active pointer {self.storage.where(POINTER_FILE)} is unreadable ({exc})") from exc
        return pointer

    # -- writing --------------------------------------------------------------------------

    def add(
        self,
        source: str | Path,
        *,
        version: str | None = None,
        parent: str | None = None,
        data_watermark: int = 0,
        samples: int = 0,
        metrics: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> AdapterInfo:
        """Register the adapter saved in ``source`` (peft ``save_pretrained`` output) as a
        new candidate version. The source is copied; it must validate first."""
        source = Path(source)
        validate_adapter_dir(source, str(source))
        with self._lock:
            version = version or self.next_version()
            self._check_name(version)
            info = AdapterInfo(
                version=version,
                parent=parent if parent is not None else self.active,
                data_watermark=data_watermark,
                samples=samples,
                metrics=metrics or {},
                timings=timings or {},
            )

            def fill(tmp: Path) -> None:
                shutil.copytree(source, tmp)
                (tmp / METADATA_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")

            self.storage.put_version(version, fill)
        return info

    def promote(self, version: str) -> AdapterInfo | None:
        """Make ``version`` (or ``"base"``) the one that serves; returns its info."""
        with self._lock:
            pointer = self._pointer()
            previous = pointer.get("version", BASE)
            if version != BASE:
                self.path(version)  # refuse a missing or corrupted version before moving anything
            self._write_pointer(pointer | {"version": version, "previous": previous})
            if previous not in (BASE, version):
                try:
                    self._set_status(previous, "archived")
                except InvalidAdapterError as exc:  # moving away from a broken version must work
                    log.warning("could not archive %s: %s", previous, exc)
            if version == BASE:
                return None
            self._set_status(version, "active")
            return self.info(version)

    def set_student_share(self, share: float) -> None:
        """Send ``share`` of the sessions to the student's active version (0 ≤ share ≤ 1)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"student_share must be between 0 and 1, not {share}")
        with self._lock:
            self._write_pointer(self._pointer() | {"student_share": share})

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        self.storage.write_json(POINTER_FILE, pointer | {"updated_at": time.time()})
        if self.on_pointer_change is not None:
            self.on_pointer_change()

    def rollback(self, to: str | None = None) -> str:
        """Point back to ``to`` (a version or ``"base"``); by default the previous active
        version. Returns the version now active."""
        target = to or self._pointer().get("previous", BASE)
        self.promote(target)
        return target

    def record(self, version: str, metrics: dict[str, Any], timings: dict[str, float]) -> AdapterInfo:
        """Add how ``version`` was judged (and how long it took) to its metadata."""
        with self._lock:
            return self._update(version, metrics=metrics, timings=timings)

    def reject(self, version: str, metrics: dict[str, Any] | None = None) -> AdapterInfo:
        """The gate said no: keep the version, mark it rejected, record why."""
        with self._lock:
            if version == self.active:
                raise ValueError(f"{version} is active; roll back before rejecting it")
            return self._set_status(version, "rejected", metrics)

    def backup_active(self, backups_dir: str | Path) -> Path | None:
        """Copy the active version to ``backups_dir`` (``None`` while the base model serves)."""
        version = self.active
        if version == BASE:
            return None
        target = Path(backups_dir) / f"adapter-{version}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        shutil.copytree(self.path(version), target)
        return target

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _check_name(version: str) -> None:
        if not _VERSION.match(version):
            raise InvalidAdapterError(f"invalid version name {version!r}: expected v1, v2, ...")

    def _set_status(self, version: str, status: Status, metrics: dict[str, Any] | None = None) -> AdapterInfo:
        return self._update(version, status, metrics)

    def _update(self, version: str, status: Status | None = None, metrics: dict[str, Any] | None = None,
                timings: dict[str, float] | None = None) -> AdapterInfo:
        """Rewrite ``version``'s metadata with metrics and timings merged in (and a new status)."""
        info = self.info(version)
        info = info.model_copy(update={"status": status or info.status, "metrics": info.metrics | (metrics or {}),
                                       "timings": info.timings | (timings or {})})
        self.storage.write_json(f"{version}/{METADATA_FILE}", info.model_dump(mode="json"))
        return info
