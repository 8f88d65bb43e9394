"""The learning loop's conversation data at rest: backups (listing, restoring), cleanup
of old data and export of the training set.

Plain functions of the store and the data directory. What they change is described by
an ``Event`` they return; ``LearningLoop`` stores it (and tells its observer), and
holds its lock around a restore, which must not race a run starting.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import echorag.learning.dataset as dataset
from echorag.learning.api import BackupInfo, BackupsResponse, CleanupResponse, ExportResponse, RestoreResponse
from echorag.learning.database import ConversationStore
from echorag.learning.events import Event
from echorag.learning.jobs import MlopsError, NotFound
from echorag.learning.records import Run
from echorag.types import MlopsInfo

BACKUP_GLOB = "conversations-*.sqlite"  # what ConversationStore.backup writes


# -- backups ----------------------------------------------------------------------------------


def read_backup(path: Path) -> list[tuple[int, str]]:
    """``(seq, id)`` of every turn in a conversation backup, read-only; ``MlopsError`` if
    the file is not one."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return [(r[0], r[1]) for r in db.execute("SELECT seq, id FROM conversations ORDER BY seq")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise MlopsError(f"{path.name} is not a readable conversation backup: {exc}", {"backup": path.name}) from None


def list_backups(backups_dir: Path) -> BackupsResponse:
    """The conversation backups in ``backups_dir``, newest first."""
    found = []
    for path in backups_dir.glob(BACKUP_GLOB):
        try:
            stat = path.stat()
            turns = len(read_backup(path))
        except FileNotFoundError:  # deleted while listing
            continue
        except MlopsError:
            turns = None
        found.append(BackupInfo(name=path.name, size_bytes=stat.st_size, created_at=stat.st_mtime, turns=turns))
    found.sort(key=lambda b: (b.created_at, b.name), reverse=True)
    return BackupsResponse(directory=str(backups_dir), backups=found, count=len(found))


def backup_path(backups_dir: Path, backup: str) -> Path:
    """A backup by name (or by its full path inside ``backups_dir``); anything else is refused."""
    directory = backups_dir.resolve()
    try:
        given = Path(backup)
        path = (given if given.is_absolute() else directory / given).resolve()  # follows "..", symlinks
    except (ValueError, OSError):  # e.g. a NUL byte
        path = directory
    if path.parent != directory or not fnmatch(path.name, BACKUP_GLOB):
        raise MlopsError(
            f"{backup!r} is not a conversation backup in the backups directory; GET /mlops/backups lists them",
            {"backup": backup},
        )
    if not path.is_file():
        raise NotFound(f"no backup named {path.name!r}; GET /mlops/backups lists them", {"backup": path.name})
    return path


def cleared_event(deleted: int, backup: Path | None) -> Event:
    """``backup``: where the conversations were saved before they were deleted, if they were."""
    return Event(
        type="conversations_cleared",
        message=f"🗑️ 대화 {deleted}건 삭제" + (f" (백업: {backup.name})" if backup else ""),
        data={"deleted": deleted, "backup_path": str(backup) if backup else None},
    )


# -- restoring ----------------------------------------------------------------------------------


def seqs_to_renumber(rows: list[tuple[int, str]], watermark: int, runs: Iterable[Run]) -> list[int]:
    """The backup's seqs that must come back as new, pending turns.

    The watermark stays a single number and never moves back, so each restored turn is
    placed by whether a run really trained on it:

    - trained (inside a succeeded run that trained): it keeps its seq, below the
      watermark, and is not trained again (it may still be replayed, as before);
    - never trained but below the watermark (``clear_conversations`` moved the
      watermark past the deleted data with an empty run): it gets a new seq after
      the newest turn, so it is pending again and the next run trains it once;
    - above the watermark: it keeps its seq and is still pending.

    ``runs``: every run (empty runs, from a clear or all 👎, trained nothing).
    """
    trained = [
        (r.from_seq, r.to_seq) for r in runs if r.status == "succeeded" and not r.metrics.get("empty")
    ]
    return [seq for seq, _ in rows if seq <= watermark and not any(a < seq <= b for a, b in trained)]


@dataclass(frozen=True)
class Restored:
    backup: str  # the file name
    restored: int
    skipped: int  # already present (same id or same content)
    pending: int  # restored and waiting for a run

    @property
    def already_trained(self) -> int:
        return self.restored - self.pending

    def event(self) -> Event:
        return Event(
            type="conversations_restored",
            message=(
                f"♻️ 대화 {self.restored}건 복원: {self.backup} "
                f"(학습 대기 {self.pending}건, 이미 학습됨 {self.already_trained}건)"
            ),
            data={"backup": self.backup, "restored": self.restored, "skipped": self.skipped,
                  "pending": self.pending, "already_trained": self.already_trained},
        )

    def response(self, info: MlopsInfo) -> RestoreResponse:
        """``info``: the loop's state once the restored turns have been seen by the policy."""
        return RestoreResponse(
            backup=self.backup, restored=self.restored, skipped=self.skipped,
            already_trained=self.already_trained, pending=self.pending,
            total_collected=info.total_collected, new_data_count=info.new_data_count,
            training_queued=info.training_queued,
        )


def restore_backup(
    store: ConversationStore, path: Path, rows: list[tuple[int, str]], watermark: int, runs: Iterable[Run]
) -> Restored:
    """Put the turns of a backup (``rows``: ``read_backup(path)``) back into ``store``,
    placed as ``seqs_to_renumber`` says. Turns already present are skipped, so restoring
    twice adds nothing. Backups are meant for the data directory that wrote them (seqs
    are only meaningful there)."""
    renumber = seqs_to_renumber(rows, watermark, runs)
    ids = {turn_id for _, turn_id in rows}

    def pending_from_backup() -> int:
        return sum(1 for t in store.turns_after(watermark) if t.id in ids)

    pending_before = pending_from_backup()
    try:
        added = store.restore(path, renumber=renumber)
    except (ValueError, sqlite3.Error) as exc:
        raise MlopsError(f"cannot restore {path.name}: {exc}", {"backup": path.name}) from None
    return Restored(path.name, added, len(rows) - added, pending_from_backup() - pending_before)


# -- cleanup and export -------------------------------------------------------------------------


def cleanup(store: ConversationStore, keep_days: float) -> tuple[CleanupResponse, Event]:
    """Delete conversations and events older than ``keep_days``."""
    if keep_days < 0:
        raise ValueError("keep_days must be >= 0")
    removed = store.cleanup(keep_days)
    event = Event(
        type="cleanup",
        message=f"🧹 {keep_days:g}일 지난 데이터 정리: 대화 {removed['conversations']}건, 이벤트 {removed['events']}건",
        data={"keep_days": keep_days, **removed},
    )
    return CleanupResponse(keep_days=keep_days, **removed), event


def export(
    store: ConversationStore, exports_dir: Path, path: str | Path | None = None, inline: bool = False,
    train_on: str = "teacher",
) -> tuple[ExportResponse, Event | None]:
    """The training dataset (chat messages: what ``train_on`` learns from, the evaluation
    pool apart) as JSONL: written to ``path`` (default ``exports_dir/training-<time>.jsonl``),
    or returned when ``inline`` (no event)."""
    if inline:
        turns = dataset.training_turns(store, train_on)
        text = "".join(t.export_line() + "\n" for t in turns)
        return ExportResponse(count=len(turns), jsonl=text), None
    target = Path(path) if path else exports_dir / f"training-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    count = dataset.export_jsonl(store, target, train_on)
    event = Event(
        type="dataset_exported", message=f"📤 학습 데이터 {count}건 내보내기: {target.name}",
        data={"path": str(target), "count": count},
    )
    return ExportResponse(count=count, path=str(target)), event
