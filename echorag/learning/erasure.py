"""Erasing one subject (a user, or a session) from everything the collector keeps.

A subject's turns are deleted from the database, from every conversation backup and
from exported training sets; the subject is recorded as erased (by a SHA-256 of its
id, not the id), so its turns are never stored again and a restored backup cannot
bring them back. SQLite overwrites deleted content (``secure_delete``) and the WAL is
checkpointed, so the text does not linger in the file.

Plain functions of a SQLite connection and the data directory: ``ConversationStore``
calls them; nothing here imports the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from echorag.identity.access import session_owner
from echorag.learning.filters import pseudonym

log = logging.getLogger(__name__)

SubjectKind = Literal["user", "session"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS erasures (
    subject   TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    erased_at REAL NOT NULL
);
"""


class ErasureReport(BaseModel):
    kind: SubjectKind
    subject: str
    conversations: int = Field(0, description="Stored turns deleted.")
    pending: int = Field(0, description="Of those, turns no run had trained on yet.")
    backups: int = Field(0, description="Turns deleted from conversation backups.")
    exported: int = Field(0, description="Lines deleted from exported training sets.")
    keys_revoked: int = Field(0, description="User keys revoked (the user is deleted).")
    vectors: int = Field(0, description="Remembered turns deleted from the vector store.")
    run_in_progress: int | None = Field(
        None, description="A training run that was already running (it may have read the deleted turns)."
    )


def subject_hash(value: str) -> str:
    return hashlib.sha256(("echorag-erased\x00" + value).encode()).hexdigest()


def _ids(kind: SubjectKind, subject: str) -> tuple[list[str], list[str]]:
    """(user ids, session ids) that name the subject in ``conversations``, as stored
    (ids that look like personal data are stored as pseudonyms)."""
    if kind == "user":
        return sorted({subject, pseudonym(subject)}), []
    owner = session_owner(subject)
    return sorted({owner, pseudonym(owner)}), sorted({subject, pseudonym(subject)})


def where(kind: SubjectKind, subject: str) -> tuple[str, list[str]]:
    """The SQL condition on ``conversations`` that selects the subject's turns."""
    users, sessions = _ids(kind, subject)
    clause = f"user_id IN ({','.join('?' * len(users))})"
    if sessions:
        clause = f"({clause} OR session_id IN ({','.join('?' * len(sessions))}))"
    return clause, users + sessions


def mark(db: sqlite3.Connection, kind: SubjectKind, subject: str, now: float) -> None:
    users, sessions = _ids(kind, subject)
    db.executemany(
        "INSERT OR IGNORE INTO erasures (subject, kind, erased_at) VALUES (?, ?, ?)",
        [(subject_hash(v), kind, now) for v in users + sessions],
    )


def is_erased(db: sqlite3.Connection, *values: str) -> bool:
    hashes = [subject_hash(v) for v in values if v]
    if not hashes:
        return False
    row = db.execute(
        f"SELECT 1 FROM erasures WHERE subject IN ({','.join('?' * len(hashes))}) LIMIT 1", hashes
    ).fetchone()
    return row is not None


def purge(db: sqlite3.Connection) -> int:
    """Delete the turns of every erased subject (after a restore merged a backup in)."""
    erased = {r[0] for r in db.execute("SELECT subject FROM erasures")}
    if not erased:
        return 0
    ids = {v for row in db.execute("SELECT DISTINCT user_id, session_id FROM conversations") for v in row}
    doomed = [v for v in ids if subject_hash(v) in erased]
    deleted = 0
    for start in range(0, len(doomed), 400):
        part = doomed[start : start + 400]
        marks = ",".join("?" * len(part))
        deleted += db.execute(
            f"DELETE FROM conversations WHERE user_id IN ({marks}) OR session_id IN ({marks})", part + part
        ).rowcount
    return deleted


def scrub_backups(paths: Iterable[Path], kind: SubjectKind, subject: str) -> int:
    """Delete the subject's turns from conversation backups; returns how many."""
    clause, params = where(kind, subject)
    total = 0
    for path in paths:
        try:
            db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error:
            continue
        try:
            db.execute("PRAGMA secure_delete=ON")
            deleted = db.execute(f"DELETE FROM conversations WHERE {clause}", params).rowcount
            if deleted:
                db.execute("VACUUM")
            total += deleted
        except sqlite3.Error as exc:  # not a conversation backup: leave it alone
            log.warning("could not scrub %s: %s", path, exc)
        finally:
            db.close()
    return total


def scrub_exports(paths: Iterable[Path], lines: set[str]) -> int:
    """Delete exported training lines that are the subject's turns; returns how many."""
    if not lines:
        return 0
    total = 0
    for path in paths:
        try:
            kept, dropped = [], 0
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.rstrip("\n") in lines:
                        dropped += 1
                    else:
                        kept.append(line)
            if dropped:
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
                tmp.write_text("".join(kept), encoding="utf-8")
                os.replace(tmp, path)
                total += dropped
        except OSError as exc:
            log.warning("could not scrub %s: %s", path, exc)
    return total
