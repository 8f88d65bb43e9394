"""Model resolution: "auto", "tiny", a hub id or a local directory.

``auto`` prefers Kakao's KANANA: from the local Hugging Face cache, else from the
hub when it answers. Without either, what answers chat (``resolve_answerer``) is the
extractive answerer (``echorag.answering.extractive``, no language model), while what trains
(the student, ``resolve_generator``) is EchoRAG's tiny offline model
(``echorag.models.tiny_model``), built here once per models directory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from echorag.models.tiny_model import KANANA_ID, TINY_MARKER, TINY_NAME, TINY_VERSION, build_tiny_model, tiny_model_dir

logger = logging.getLogger(__name__)

_HUB_TIMEOUT_S = 3.0
_KANANA_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "LICENSE*"]


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # a local directory or a hub id, ready for ``from_pretrained``
    kind: Literal["kanana", "tiny", "hub", "local", "extractive"]
    name: str  # what the API, /health and the UI show

    @property
    def is_demo(self) -> bool:
        return self.kind == "tiny"


# The answerer that needs no model: quotes the retrieved passages (echorag.answering.extractive).
EXTRACTIVE = ResolvedModel("", "extractive", "extractive")
Fallback = Literal["tiny", "extractive"]


def resolve_generator(spec: str, models_dir: Path, offline: Fallback = "tiny") -> ResolvedModel:
    """Turn a model spec ("auto", "tiny", a hub id or a local directory) into something
    loadable. ``offline``: what ``auto`` gives when KANANA is neither cached nor reachable."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        return _resolve_auto(Path(models_dir), offline)
    if spec == "tiny":
        return _tiny_model(Path(models_dir), reason="requested explicitly")
    return resolve_model(spec)


def resolve_model(spec: str) -> ResolvedModel:
    """A local directory or a hub id (no "auto": that needs a models directory)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (card := _tiny_card(path)) is not None:  # the tiny model, or the small student
            name = card.get("name", TINY_NAME)
            _warn_demo(path, "given as a local directory", name)
            return ResolvedModel(str(path.resolve()), "tiny", name)
        return ResolvedModel(str(path.resolve()), "local", path.resolve().name)
    if spec.startswith(("/", ".", "~")) or spec.count("/") != 1:
        raise FileNotFoundError(f"{spec!r} is neither a model directory nor a hub id (owner/name)")
    return ResolvedModel(spec, "kanana" if spec == KANANA_ID else "hub", spec)


def resolve_answerer(settings) -> ResolvedModel:
    """What answers chat with the local backends: the extractive answerer when asked for
    (``generator_backend: extractive``) or when ``auto`` finds no KANANA; never the tiny
    model unless it is asked for by name (``generator_model: tiny``)."""
    if settings.generator_backend == "extractive":
        return EXTRACTIVE
    return resolve_generator(settings.generator_model, settings.models_dir, offline="extractive")


def student_spec(settings) -> str:
    """The model spec the learning loop fine-tunes: ``student_model`` where a teacher
    answers chat, else ``generator_model`` (``auto``: KANANA when it loads, else the tiny
    offline model). Where the local model answers, it is the student itself."""
    if settings.student_model and has_teacher(settings):
        return settings.student_model
    if settings.student_model:
        logger.warning("student_model %r is ignored: the local model answers chat and is the student",
                       settings.student_model)
    return settings.generator_model


def resolve_student(settings) -> ResolvedModel:
    """The local model the learning loop fine-tunes (``student_spec``)."""
    return resolve_generator(student_spec(settings), settings.models_dir)


def has_teacher(settings) -> bool:
    """Whether what answers chat is a teacher other than the student (extractive, openai)."""
    return settings.generator_backend == "openai" or resolve_answerer(settings).kind == "extractive"


def _resolve_auto(models_dir: Path, offline: Fallback) -> ResolvedModel:
    if cached := _cached_snapshot(KANANA_ID):
        return ResolvedModel(str(cached), "kanana", KANANA_ID)

    def fallback(reason: str) -> ResolvedModel:
        if offline == "extractive":
            logger.warning("Answering extractively (quotes of the documents, no language model): %s.", reason)
            return EXTRACTIVE
        return _tiny_model(models_dir, reason)

    if _offline():
        return fallback(f"{KANANA_ID} is not in the local cache and the hub is offline")
    if not _hub_answers(KANANA_ID):
        return fallback(f"{KANANA_ID} is not cached and the hub did not answer")
    from huggingface_hub import snapshot_download

    logger.info("Downloading %s from the Hugging Face Hub (about 4.6 GB)...", KANANA_ID)
    try:
        path = snapshot_download(KANANA_ID, allow_patterns=_KANANA_FILES, cache_dir=_hub_cache())
    except Exception as exc:  # a broken download must not take the service down
        return fallback(f"downloading {KANANA_ID} failed: {exc}")
    return ResolvedModel(path, "kanana", KANANA_ID)


def _tiny_model(models_dir: Path, reason: str) -> ResolvedModel:
    path = ensure_tiny_model(models_dir)
    _warn_demo(path, reason)
    return ResolvedModel(str(path), "tiny", TINY_NAME)


def _warn_demo(path: Path, reason: str, name: str = TINY_NAME) -> None:
    logger.warning(
        "Using %s, a DEMO model EchoRAG builds offline, from %s (%s): a student the learning loop "
        "fine-tunes; as an answerer its answers are not meaningful. Cache %s for a real model.",
        name, path, reason, KANANA_ID,
    )


def _offline() -> bool:
    # Read at call time: huggingface_hub reads these once, at import.
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cache() -> Path:
    # Also read at call time, for the same reason (tests point HF_HOME elsewhere).
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of ``repo_id`` if its config and all weights are there."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=_hub_cache()))
    except Exception:  # not cached (LocalEntryNotFoundError) or unreadable cache
        return None
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded: every shard must be there, not just some
        shards = set(json.loads(index.read_text())["weight_map"].values())
        complete = all((path / shard).exists() for shard in shards)
    else:
        complete = (path / "model.safetensors").exists()
    return path if complete and (path / "config.json").exists() else None


def _hub_answers(repo_id: str, timeout: float = _HUB_TIMEOUT_S) -> bool:
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=timeout)
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- tiny model cache


def ensure_tiny_model(models_dir: Path, seed: int = 0) -> Path:
    """The tiny model directory, built once; safe when several processes start together."""
    out = tiny_model_dir(models_dir)
    if _tiny_version(out) == TINY_VERSION:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if _tiny_version(out) != TINY_VERSION:  # nobody built it while we waited
            build_tiny_model(out, seed=seed)
    return out


def _tiny_card(path: Path) -> dict | None:
    """The card EchoRAG writes beside a model it built (``TINY_MARKER``), or None."""
    try:
        card = json.loads((Path(path) / TINY_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and "version" in card else None


def _tiny_version(path: Path) -> int | None:
    card = _tiny_card(path)
    return card["version"] if card else None
