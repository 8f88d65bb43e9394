"""Where adapter versions live: a local (or mounted shared) directory, or a storage URI
every node of a cluster reads through ``pyarrow.fs`` (``file://``, ``s3://``, ``gs://``).

A version is written whole or not at all: into a temporary directory renamed into place
(local), or uploaded file by file with ``metadata.json`` last (URI; a version without it
is incomplete and never loaded). ``local_dir`` gives a version's files on local disk,
downloaded once into a cache, so peft and vLLM load it from disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
METADATA_FILE = "metadata.json"


class InvalidAdapterError(ValueError):
    """A version directory is missing, incomplete or unreadable."""


class VersionExistsError(FileExistsError):
    """Versions are immutable: a second write of the same version is refused."""


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
