"""The collector's SQLite database: conversations, filter counts, runtime settings,
training runs and events.

WAL mode with ``synchronous=FULL``: a turn that ``add_turn`` reports as stored has
been fsynced. ``seq`` (AUTOINCREMENT, never reused) orders the data; training
consumes it by watermark: everything with ``seq <= watermark`` has been trained on.
One connection guarded by a lock serves every thread of the process.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import echorag.learning.erasure as erasure
import echorag.learning.tables as tables
from echorag.learning.events import Event
from echorag.learning.filters import TurnFilter, clean
from echorag.learning.records import AddResult, Counts, Run, RunStatus, StoredTurn

if TYPE_CHECKING:
    from echorag.types import Turn


class ConversationStore:
    def __init__(self, path: str | Path, turn_filter: TurnFilter | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.filter = turn_filter or TurnFilter()
        self._lock = threading.RLock()
        # Autocommit mode: transactions are explicit (_tx), so nothing lingers uncommitted.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted turns are overwritten, not left in free pages
        self._db.executescript(tables.SCHEMA + erasure.SCHEMA)
        with self._tx() as db:  # migrate in place: old rows get the defaults
            for name, kind in tables.ADDED_COLUMNS.items():
                if name not in tables.columns(db):
                    db.execute(f"ALTER TABLE conversations ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # For the other tables of this database (users and keys: echorag.learning.users).
    transaction = _tx
    query = _query

    def pragma(self, name: str) -> Any:
        return self._query(f"PRAGMA {name}")[0][0]

    # -- conversations ------------------------------------------------------------------

    def add_turn(self, turn: Turn) -> AddResult:
        """Screen, scrub and store one turn. Recording the same turn id twice is a no-op
        that reports the first result (callers may retry)."""
        screened = self.filter.screen(turn)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO answers (turn_id, backend, model, version, latency_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (turn.id, turn.backend, turn.model, turn.adapter_version, turn.latency_ms, turn.created_at),
            )
            if erasure.is_erased(db, turn.user_id, turn.session_id):  # their data was deleted: never again
                self._count(db, "erased")
                return AddResult(False, "erased")
            if screened.reason:
                self._count(db, screened.reason)
                return AddResult(False, screened.reason)
            row = db.execute("SELECT seq FROM conversations WHERE id = ?", (turn.id,)).fetchone()
            if row:
                return AddResult(True, seq=row["seq"])
            if db.execute("SELECT 1 FROM conversations WHERE fingerprint = ?", (screened.fingerprint,)).fetchone():
                self._count(db, "duplicate")
                return AddResult(False, "duplicate")
            cursor = db.execute(
                "INSERT INTO conversations (id, session_id, user_id, user, assistant, adapter_version, model,"
                " sources, created_at, fingerprint, prompt, backend, label, selection)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn.id, screened.session_id, screened.user_id, screened.user, screened.assistant,
                    turn.adapter_version, turn.model, tables.dumps(list(turn.sources)), turn.created_at,
                    screened.fingerprint, None if screened.prompt is None else tables.dumps(screened.prompt),
                    turn.backend, turn.label, None if turn.selection is None else tables.dumps(asdict(turn.selection)),
                ),
            )
            if screened.pii:
                self._count(db, "pii_scrubbed")
            return AddResult(True, seq=cursor.lastrowid, pii=list(screened.pii))

    @staticmethod
    def _count(db: sqlite3.Connection, reason: str) -> None:
        db.execute(
            "INSERT INTO filter_counts (reason, count) VALUES (?, 1)"
            " ON CONFLICT (reason) DO UPDATE SET count = count + 1",
            (reason,),
        )

    def set_feedback(self, turn_id: str, value: int, owner: str | None = None) -> bool:
        """👍 = 1, 👎 = -1 (excluded from training), 0 = none. False if the turn is unknown,
        or (with ``owner``) not that owner's."""
        if value not in (-1, 0, 1):
            raise ValueError("feedback must be -1, 0 or 1")
        sql, params = "UPDATE conversations SET feedback = ? WHERE id = ?", [value, turn_id]
        if owner is not None:
            clause, ids = erasure.where("user", owner)
            sql, params = f"{sql} AND {clause}", params + ids
        with self._tx() as db:
            return db.execute(sql, params).rowcount > 0

    def get_turn(self, turn_id: str) -> StoredTurn | None:
        rows = self._query(f"SELECT {tables.TURN_COLUMNS} FROM conversations WHERE id = ?", (turn_id,))
        return tables.turn_record(rows[0]) if rows else None

    def max_seq(self) -> int:
        """The highest seq ever assigned: the top of the data watermark, even after clear()."""
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'conversations'")
        return rows[0][0] if rows else 0

    def counts(self) -> Counts:
        row = self._query(
            "SELECT COUNT(*) AS total, COALESCE(SUM(feedback = 1), 0) AS liked,"
            " COALESCE(SUM(feedback = -1), 0) AS disliked FROM conversations"
        )[0]
        filtered = {r["reason"]: r["count"] for r in self._query("SELECT reason, count FROM filter_counts")}
        return Counts(**dict(row), max_seq=self.max_seq(), filtered=filtered)

    def answerer_counts(self) -> list[sqlite3.Row]:
        """Per (backend, model, version) that answered: requests and their latencies
        (``latencies``: comma-joined milliseconds), 👍 and 👎 of its stored turns."""
        return self._query(
            "SELECT a.backend, a.model, a.version, a.requests, a.latencies,"
            " COALESCE(c.liked, 0) AS liked, COALESCE(c.disliked, 0) AS disliked FROM"
            " (SELECT backend, model, version, COUNT(*) AS requests, GROUP_CONCAT(latency_ms) AS latencies,"
            "  MIN(created_at) AS first FROM answers GROUP BY backend, model, version) AS a"
            " LEFT JOIN (SELECT backend, model, adapter_version, SUM(feedback = 1) AS liked,"
            "  SUM(feedback = -1) AS disliked FROM conversations GROUP BY backend, model, adapter_version) AS c"
            " ON c.backend = a.backend AND c.model = a.model AND c.adapter_version = a.version"
            " ORDER BY a.first"
        )

    def turns_after(self, seq: int, limit: int | None = None) -> list[StoredTurn]:
        rows = self._query(
            f"SELECT {tables.TURN_COLUMNS} FROM conversations WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, -1 if limit is None else limit),
        )
        return [tables.turn_record(r) for r in rows]

    def recent_turns(self, limit: int = 50) -> list[StoredTurn]:
        rows = self._query(f"SELECT {tables.TURN_COLUMNS} FROM conversations ORDER BY seq DESC LIMIT ?", (limit,))
        return [tables.turn_record(r) for r in rows]

    def turns_of(self, kind: erasure.SubjectKind, subject: str) -> list[StoredTurn]:
        """Every stored turn of a user (or of a session), oldest first."""
        clause, params = erasure.where(kind, subject)
        return [tables.turn_record(r) for r in self._query(f"SELECT {tables.TURN_COLUMNS} FROM conversations WHERE {clause} ORDER BY seq", params)]

    def erase(self, kind: erasure.SubjectKind, subject: str) -> list[StoredTurn]:
        """Delete a subject's turns and record the subject as erased (its turns are never
        stored again, nor restored); returns the deleted turns."""
        clause, params = erasure.where(kind, subject)
        with self._tx() as db:
            rows = db.execute(f"SELECT {tables.TURN_COLUMNS} FROM conversations WHERE {clause}", params).fetchall()
            db.execute(f"DELETE FROM conversations WHERE {clause}", params)
            erasure.mark(db, kind, subject, time.time())
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the deleted text leaves the WAL too
        return [tables.turn_record(r) for r in rows]

    def select(self, where: str, params: Iterable[Any] = (), limit: int | None = None, newest_first: bool = False) -> list[StoredTurn]:
        """Turns matching an SQL condition on ``conversations`` (``echorag.learning.dataset``
        builds them), in seq order; with ``limit`` the first (or newest) ones."""
        order = "DESC" if newest_first else "ASC"
        rows = self._query(
            f"SELECT {tables.TURN_COLUMNS} FROM conversations WHERE {where} ORDER BY seq {order} LIMIT ?",
            [*params, -1 if limit is None else limit],
        )
        turns = [tables.turn_record(r) for r in rows]
        return turns[::-1] if newest_first else turns

    def sample(self, where: str, params: Iterable[Any], n: int, seed: int = 0) -> list[StoredTurn]:
        """A deterministic sample of ``n`` turns matching ``where``, in seq order."""
        seqs = [r[0] for r in self._query(f"SELECT seq FROM conversations WHERE {where} ORDER BY seq", list(params))]
        chosen = random.Random(seed).sample(seqs, min(n, len(seqs)))
        return self.select("seq IN (SELECT value FROM json_each(?))", (json.dumps(chosen),))

    def add_to_pool(self, turn_ids: Iterable[str]) -> None:
        """Put turns in the evaluation pool (for good: they judge, they never train)."""
        with self._tx() as db:
            db.execute("UPDATE conversations SET pool = 1 WHERE id IN (SELECT value FROM json_each(?))",
                       (json.dumps(list(turn_ids)),))

    def correct(self, turn_id: str, answer: str) -> StoredTurn | None:
        """Store an admin's corrected answer beside the original (which is kept); None if
        the turn is unknown. The correction is scrubbed of PII like every stored text."""
        scrubbed, _ = clean(answer)
        with self._tx() as db:
            changed = db.execute(
                "UPDATE conversations SET corrected = ?, corrected_at = ? WHERE id = ?", (scrubbed, time.time(), turn_id)
            ).rowcount
        return self.get_turn(turn_id) if changed else None

    # -- backup, restore, retention ---------------------------------------------------

    def backup(self, directory: str | Path) -> Path:
        """A consistent snapshot of the whole database (SQLite online backup)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"conversations-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.sqlite"
        destination = sqlite3.connect(target)
        try:
            with self._lock:
                self._db.backup(destination)
            destination.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            destination.close()
        return target

    def restore(self, path: str | Path, renumber: Iterable[int] = ()) -> int:
        """Merge the conversations of a backup back in; returns how many were added.

        Turns keep their original seq when it is free, so data that was trained on
        stays below the watermark. The backup's seqs in ``renumber`` (turns that were
        never trained) get new seqs after the newest turn instead, so they become
        pending again even when the watermark has moved past their old seq. Turns
        already present (same id or same content) are skipped.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backup not found: {path}")
        with self._lock:
            self._db.execute("ATTACH DATABASE ? AS backup", (str(path),))
            try:
                if not self._db.execute(
                    "SELECT 1 FROM backup.sqlite_master WHERE type = 'table' AND name = 'conversations'"
                ).fetchone():
                    raise ValueError(f"{path} is not an EchoRAG conversation backup")
                # An older backup lacks the added columns: their defaults apply.
                present = tables.columns(self._db, "backup")
                every = ", ".join(c for c in tables.TURN_COLUMNS.split(", ") if c in present)
                columns = every.removeprefix("seq, ")
                with self._tx() as db:
                    before = db.total_changes
                    db.execute(
                        f"INSERT OR IGNORE INTO conversations ({every}) SELECT {every}"
                        " FROM backup.conversations AS b"
                        " WHERE NOT EXISTS (SELECT 1 FROM main.conversations AS c WHERE c.seq = b.seq)"
                        " AND b.seq NOT IN (SELECT value FROM json_each(?))",
                        (json.dumps(sorted(set(renumber))),),
                    )
                    # Rows to renumber, and rows whose seq is taken (a backup of another database), get a new
                    # seq. Only rows not yet present: an ignored insert would still use up a seq.
                    db.execute(
                        f"INSERT OR IGNORE INTO conversations ({columns}) SELECT {columns}"
                        " FROM backup.conversations AS b WHERE NOT EXISTS (SELECT 1 FROM main.conversations AS c"
                        " WHERE c.id = b.id OR c.fingerprint = b.fingerprint) ORDER BY seq"
                    )
                    added = db.total_changes - before
                    return added - erasure.purge(db)  # erased subjects stay erased
            finally:
                self._db.execute("DETACH DATABASE backup")

    def clear(self, backup: bool = False, backups_dir: str | Path | None = None) -> tuple[int, Path | None]:
        """Delete every conversation (and the filter counts), optionally after a backup
        (default folder: ``backups/`` next to the database). Seqs are never reused."""
        saved = self.backup(backups_dir or self.path.parent / "backups") if backup else None
        with self._tx() as db:
            deleted = db.execute("DELETE FROM conversations").rowcount
            db.execute("DELETE FROM filter_counts")
        return deleted, saved

    def cleanup(self, keep_days: float) -> dict[str, int]:
        """Delete conversations, events and answer records older than ``keep_days``."""
        cutoff = time.time() - keep_days * 86400
        with self._tx() as db:
            conversations = db.execute("DELETE FROM conversations WHERE created_at < ?", (cutoff,)).rowcount
            events = db.execute("DELETE FROM events WHERE created_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,))
        return {"conversations": conversations, "events": events}

    # -- runtime settings ---------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_settings(self, **values: Any) -> None:
        """Persist runtime settings (e.g. ``finetune_batch_size=50``) so restarts keep them."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [(k, tables.dumps(v), time.time()) for k, v in values.items()],
            )

    def set_setting(self, key: str, value: Any) -> None:
        self.set_settings(**{key: value})

    def runtime_settings(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self._query("SELECT key, value FROM settings")}

    # -- training runs ------------------------------------------------------------------

    def start_run(self, from_seq: int, to_seq: int, attempts: int = 1) -> Run:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO runs (status, from_seq, to_seq, started_at, attempts) VALUES ('running', ?, ?, ?, ?)",
                (from_seq, to_seq, time.time(), attempts),
            )
            return tables.run_record(db.execute("SELECT * FROM runs WHERE id = ?", (cursor.lastrowid,)).fetchone())

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        version: str | None = None,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Run:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, version = ?, metrics = ?, error = ?, ended_at = ? WHERE id = ?",
                (status, version, tables.dumps(metrics or {}), error, time.time(), run_id),
            )
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id}")
        return tables.run_record(row)

    def runs(self, limit: int = 50) -> list[Run]:
        return [tables.run_record(r) for r in self._query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))]

    def trained_watermark(self) -> int:
        """Everything with ``seq <=`` this has been trained on (by a run that completed,
        whether or not the gate promoted its adapter)."""
        rows = self._query("SELECT MAX(to_seq) FROM runs WHERE status = 'succeeded'")
        return rows[0][0] or 0

    def interrupt_running_runs(self, reason: str = "interrupted: the process restarted") -> list[Run]:
        """On startup: runs still marked running died with the previous process."""
        running = [r["id"] for r in self._query("SELECT id FROM runs WHERE status = 'running'")]
        return [self.finish_run(run_id, "failed", error=reason) for run_id in running]

    # -- events -------------------------------------------------------------------------

    def add_event(self, event: Event | str, message: str = "", data: dict[str, Any] | None = None) -> Event:
        """Store an event, given as an ``Event`` or as its type, message and data."""
        if isinstance(event, str):
            event = Event(type=event, message=message, data=data or {})
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO events (type, message, data, created_at) VALUES (?, ?, ?, ?)",
                (event.type, event.message, tables.dumps(event.data), event.created_at),
            )
        return event.model_copy(update={"id": cursor.lastrowid})

    def events(self, event_type: str | None = None, limit: int = 100) -> list[Event]:
        """Newest first."""
        if event_type is None:
            rows = self._query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM events WHERE type = ? ORDER BY id DESC LIMIT ?", (event_type, limit))
        return [tables.event_record(r) for r in rows]
