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

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from echorag.serving.routing import Traffic
from echorag.types import BASE

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
METADATA_FILE = "metadata.json"
POINTER_FILE = "active.json"
_VERSION = re.compile(r"^v([1-9]\d*)$")

Status = Literal["candidate", "active", "rejected", "archived"]


class InvalidAdapterError(ValueError):
    """A version directory is missing, incomplete or unreadable."""


class VersionExistsError(FileExistsError):
    """Versions are immutable: a second write of the same version is refused."""


class AdapterInfo(BaseModel):
    version: str
    parent: str = Field(BASE, description="The version training continued from.")
    data_watermark: int = Field(0, description="Trained on turns with seq <= this.")
    samples: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict, description="Held-out losses, gate decision, ...")
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    status: Status = "candidate"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers see the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _check_safetensors(path: Path) -> None:
    # The format: an 8-byte little-endian header length, then a JSON header.
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file too short")
        (length,) = struct.unpack("<Q", head)
        if length > path.stat().st_size - 8:
            raise ValueError("header length beyond the end of the file")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")


def validate_adapter_dir(path: Path, name: str | None = None) -> None:
    """Raise ``InvalidAdapterError`` unless ``path`` holds a loadable peft adapter."""
    name = name or path.name
    if not path.is_dir():
        raise InvalidAdapterError(f"adapter {name}: no directory at {path}")
    config = path / CONFIG_FILE
    if not config.is_file():
        raise InvalidAdapterError(f"adapter {name}: {CONFIG_FILE} is missing in {path}")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise InvalidAdapterError(f"adapter {name}: {CONFIG_FILE} is unreadable ({exc})") from exc
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise InvalidAdapterError(f"adapter {name}: no weights ({' or '.join(WEIGHT_FILES)}) in {path}")
    try:
        if weights.suffix == ".safetensors":
            _check_safetensors(weights)
        elif weights.stat().st_size == 0:
            raise ValueError("empty file")
    except (ValueError, OSError) as exc:
        raise InvalidAdapterError(f"adapter {name}: {weights.name} is unreadable ({exc})") from exc


def is_uri(root: str | Path) -> bool:
    return "://" in str(root)


# --------------------------------------------------------------------------- where versions live


class LocalStorage:
    """Versions as directories of a local path (or a shared mount every node sees)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def where(self, name: str) -> str:
        return str(self.root / name)

    def directories(self) -> list[str]:
        return [p.name for p in self.root.iterdir() if p.is_dir()]

    def read_text(self, name: str) -> str:
        """Raises ``FileNotFoundError`` when there is no such file."""
        return (self.root / name).read_text(encoding="utf-8")

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.root / name, data)

    def put_version(self, version: str, fill: Callable[[Path], None]) -> None:
        """``fill(tmp)`` creates the version in a temporary directory; then it is renamed in."""
        target = self.root / version
        if target.exists():
            raise VersionExistsError(f"adapter {version} already exists at {target}; versions are immutable")
        tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            fill(tmp)
            for file in tmp.rglob("*"):
                if file.is_file():
                    _fsync(file)
            # rename() refuses a non-empty target, so a concurrent writer cannot be overwritten.
            os.rename(tmp, target)
            _fsync(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if target.exists():
                raise VersionExistsError(f"adapter {version} already exists at {target}") from exc
            raise

    def local_dir(self, version: str) -> Path:
        return self.root / version


class RemoteStorage:
    """Versions under a storage URI (``pyarrow.fs``: local ``file://``, S3, GCS, HDFS),
    downloaded on demand into ``cache_dir`` (one directory per version, never changed)."""

    def __init__(self, uri: str, cache_dir: str | Path | None = None) -> None:
        from pyarrow import fs

        self.uri = uri.rstrip("/")
        self.fs, self.base = fs.FileSystem.from_uri(self.uri)
        self.fs.create_dir(self.base, recursive=True)
        key = hashlib.sha1(self.uri.encode()).hexdigest()[:12]
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "echorag-adapter-cache") / key

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _exists(self, name: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(f"{self.base}/{name}").type != fs.FileType.NotFound

    def directories(self) -> list[str]:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.base, allow_not_found=True))
        return [i.base_name for i in infos if i.type == fs.FileType.Directory]

    def read_text(self, name: str) -> str:
        if not self._exists(name):  # stores differ in the error a missing object raises
            raise FileNotFoundError(self.where(name))
        with self.fs.open_input_stream(f"{self.base}/{name}") as f:
            return f.read().decode("utf-8")

    def _upload(self, local: Path, name: str) -> None:
        with open(local, "rb") as src, self.fs.open_output_stream(f"{self.base}/{name}") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def write_json(self, name: str, data: Any) -> None:
        # Written aside and moved in: a local rename, or a whole-object copy on S3/GCS;
        # readers see the old object or the new one.
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "object.json"
            file.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
            staged = f"{name}.{uuid.uuid4().hex[:8]}.tmp"
            self._upload(file, staged)
        self.fs.move(f"{self.base}/{staged}", f"{self.base}/{name}")

    def put_version(self, version: str, fill: Callable[[Path], None]) -> None:
        """Build the version locally, then upload it with ``metadata.json`` last: a reader
        never takes a version without metadata for a complete one."""
        if self._exists(version):
            raise VersionExistsError(f"adapter {version} already exists at {self.where(version)}; versions are immutable")
        with tempfile.TemporaryDirectory(prefix=f"echorag-{version}-") as tmp:
            local = Path(tmp) / version
            fill(local)
            files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == METADATA_FILE)
            for folder in sorted({f.parent.relative_to(local).as_posix() for f in files}):
                self.fs.create_dir(f"{self.base}/{version}/{folder}".removesuffix("/."), recursive=True)
            for file in files:
                self._upload(file, f"{version}/{file.relative_to(local).as_posix()}")

    def local_dir(self, version: str) -> Path:
        """The version's files on local disk, downloaded once. The cache key includes the
        version's creation time: a store that was wiped and refilled may reuse a name."""
        from pyarrow import fs

        try:
            created = json.loads(self.read_text(f"{version}/{METADATA_FILE}")).get("created_at", 0)
        except FileNotFoundError:
            missing = "no directory" if not self._exists(version) else f"{METADATA_FILE} is missing (incomplete upload)"
            raise InvalidAdapterError(f"adapter {version}: {missing} at {self.where(version)}") from None
        except ValueError as exc:
            raise InvalidAdapterError(f"adapter {version}: {METADATA_FILE} is unreadable ({exc})") from exc
        target = self.cache_dir / f"{version}-{int(float(created) * 1e6)}"
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            fs.copy_files(f"{self.base}/{version}", str(tmp), source_filesystem=self.fs,
                          destination_filesystem=fs.LocalFileSystem())
            validate_adapter_dir(tmp, version)  # a damaged upload never reaches the cache
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():  # not a replica beside us that finished first
                raise
        except InvalidAdapterError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


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
