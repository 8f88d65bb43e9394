"""Reading documents from files: .txt, .md, .jsonl (one ``{"id"?, "text", "metadata"?}`` per line)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from echorag.korean import normalize

SUFFIXES = (".txt", ".md", ".jsonl")


def sample_path(name: str = "sample_kb.jsonl") -> Path:
    """Files shipped inside the package (the Korean sample knowledge base and dev set)."""
    return Path(str(resources.files("echorag") / "data" / name))


def iter_files(paths: list[str | Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ValueError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)})")
            yield path
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def read_documents(paths: list[str | Path]) -> list[dict]:
    """Documents ready for ``POST /documents``; a text file's id is its path stem."""
    documents = []
    for path in iter_files(paths):
        if path.suffix == ".jsonl":
            for n, row in enumerate(read_jsonl(path), 1):
                if not isinstance(row.get("text"), str) or not row["text"].strip():
                    raise ValueError(f"{path}:{n}: each line needs a non-empty \"text\"")
                documents.append(
                    {"id": row.get("id"), "text": normalize(row["text"]), "metadata": row.get("metadata") or {}}
                )
        else:
            text = normalize(path.read_text(encoding="utf-8"))
            if text.strip():
                documents.append({"id": path.stem, "text": text, "metadata": {"source": path.name}})
    return documents
