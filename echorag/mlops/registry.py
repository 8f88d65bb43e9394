"""Adapter versions on disk: ``root/v1``, ``root/v2``, ... and an ``active.json`` pointer.

A version is written into a temporary directory and renamed into place, so it
appears complete or not at all, and an existing version is never overwritten. Its
weights and config never change afterwards; only the ``status`` in ``metadata.json``
is rewritten (atomically). The active pointer is the source of truth for what
serves: promotion and rollback move it, nothing is copied or deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

BASE = "base"  # no adapter: the bare base model
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


class AdapterRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- reading --------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Existing versions, oldest first."""
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def next_version(self) -> str:
        versions = self.versions()
        return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"

    def path(self, version: str) -> Path:
        """The directory of a valid version (what the generator loads)."""
        self._check_name(version)
        path = self.root / version
        validate_adapter_dir(path, version)
        return path

    def info(self, version: str) -> AdapterInfo:
        self._check_name(version)
        file = self.root / version / METADATA_FILE
        try:
            info = AdapterInfo.model_validate_json(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InvalidAdapterError(f"adapter {version}: {METADATA_FILE} is missing in {file.parent}") from exc
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

    def _pointer(self) -> dict[str, Any]:
        file = self.root / POINTER_FILE
        try:
            pointer = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": BASE}
        except ValueError as exc:
            raise InvalidAdapterError(f"active pointer {file} is unreadable ({exc})") from exc
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
            target = self.root / version
            if target.exists():
                raise VersionExistsError(f"adapter {version} already exists at {target}; versions are immutable")
            info = AdapterInfo(
                version=version,
                parent=parent if parent is not None else self.active,
                data_watermark=data_watermark,
                samples=samples,
                metrics=metrics or {},
                timings=timings or {},
            )
            tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(source, tmp)
                (tmp / METADATA_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")
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
        return info

    def promote(self, version: str) -> AdapterInfo | None:
        """Make ``version`` (or ``"base"``) the one that serves; returns its info."""
        with self._lock:
            previous = self.active
            if version != BASE:
                self.path(version)  # refuse a missing or corrupted version before moving anything
            write_json_atomic(
                self.root / POINTER_FILE, {"version": version, "previous": previous, "updated_at": time.time()}
            )
            if previous not in (BASE, version):
                try:
                    self._set_status(previous, "archived")
                except InvalidAdapterError as exc:  # moving away from a broken version must work
                    log.warning("could not archive %s: %s", previous, exc)
            if version == BASE:
                return None
            self._set_status(version, "active")
            return self.info(version)

    def rollback(self, to: str | None = None) -> str:
        """Point back to ``to`` (a version or ``"base"``); by default the previous active
        version. Returns the version now active."""
        target = to or self._pointer().get("previous", BASE)
        self.promote(target)
        return target

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
        file = self.root / version / METADATA_FILE
        info = self.info(version)
        info = info.model_copy(update={"status": status, "metrics": info.metrics | (metrics or {})})
        write_json_atomic(file, info.model_dump(mode="json"))
        return info
