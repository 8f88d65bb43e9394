"""The collector's tables: the schema, the columns added since the first release, and
rows as typed records."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from echorag.learning.events import Event
from echorag.learning.records import Run, StoredTurn
from echorag.types import Selection

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    session_id      TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    user            TEXT NOT NULL,
    assistant       TEXT NOT NULL,
    adapter_version TEXT NOT NULL,
    model           TEXT NOT NULL,
    sources         TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    feedback        INTEGER NOT NULL DEFAULT 0 CHECK (feedback IN (-1, 0, 1)),
    fingerprint     TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS conversations_created_at ON conversations (created_at);
CREATE TABLE IF NOT EXISTS filter_counts (
    reason TEXT PRIMARY KEY,
    count  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    status     TEXT NOT NULL,
    from_seq   INTEGER NOT NULL,
    to_seq     INTEGER NOT NULL,
    version    TEXT,
    started_at REAL NOT NULL,
    ended_at   REAL,
    attempts   INTEGER NOT NULL DEFAULT 1,
    error      TEXT,
    metrics    TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE TABLE IF NOT EXISTS answers (
    turn_id    TEXT PRIMARY KEY,
    backend    TEXT NOT NULL,
    model      TEXT NOT NULL,
    version    TEXT NOT NULL,
    latency_ms REAL,
    created_at REAL NOT NULL
);
"""
# `answers`: one row per answered request, stored or not (a duplicate or filtered turn was
# still served): what answered and how fast, for /mlops/performance. No user data.

# Columns added after the first release, added in place to older databases (and read as
# their defaults from older backups): the exact messages the answerer was served (JSON;
# NULL for turns stored before, which train closed-book), which backend answered, and
# where the answer comes from as a training label ("teacher", "self"), an admin's
# correction kept beside the original answer, and membership of the evaluation pool.
ADDED_COLUMNS = {
    "prompt": "TEXT", "backend": "TEXT NOT NULL DEFAULT ''", "label": "TEXT NOT NULL DEFAULT 'self'",
    "corrected": "TEXT", "corrected_at": "REAL", "pool": "INTEGER NOT NULL DEFAULT 0",
    "selection": "TEXT",  # JSON of types.Selection: what the answer selector saw
}
TURN_COLUMNS = (
    "seq, id, session_id, user_id, user, assistant, adapter_version, model,"
    " sources, created_at, feedback, fingerprint, " + ", ".join(ADDED_COLUMNS)
)
def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def turn_record(row: sqlite3.Row) -> StoredTurn:
    fields = {k: row[k] for k in row.keys() if k != "fingerprint"}
    prompt = json.loads(row["prompt"]) if row["prompt"] else None
    selection = Selection(**json.loads(row["selection"])) if row["selection"] else None
    return StoredTurn(**fields | {"sources": json.loads(row["sources"]), "prompt": prompt, "pool": bool(row["pool"]),
                                  "selection": selection})


def columns(db: sqlite3.Connection, schema: str = "main") -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA {schema}.table_info(conversations)")}


def run_record(row: sqlite3.Row) -> Run:
    return Run(**dict(row) | {"metrics": json.loads(row["metrics"])})


def event_record(row: sqlite3.Row) -> Event:
    return Event(**dict(row) | {"data": json.loads(row["data"])})
