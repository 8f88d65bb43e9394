"""Identity and privacy: users and keys, the session secret, erasing a user's (or a
session's) data and exporting it.

``IdentityService`` is its own actor (``deployments.mlops.Identities``), so each method
is a typed remote call (``await identities.authenticate.remote(key)``) that never waits
behind the learning loop. What is stored about people lives in the collector's SQLite
database, which both open; the vectors in Chroma are the retriever's, and the ingress
deletes those (``routes/users.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

import echorag.learning.erasure as erasure
from echorag.identity.access import Caller
from echorag.learning.archive import BACKUP_GLOB
from echorag.learning.database import ConversationStore
from echorag.learning.erasure import ErasureReport, SubjectKind
from echorag.learning.events import Event
from echorag.learning.filters import pseudonym
from echorag.learning.records import StoredTurn
from echorag.learning.users import IssuedKey, UserDirectory, UserInfo, UsersResponse

if TYPE_CHECKING:
    from echorag.config import Settings


log = logging.getLogger(__name__)


class SubjectConversations(BaseModel):
    """Everything stored of one user (or session): ``GET /admin/users/{id}/conversations``."""

    kind: SubjectKind
    subject: str
    count: int
    conversations: list[StoredTurn]


def _event(event_type: str, message: str, **data: Any) -> Event:
    return Event(type=event_type, message=message, data=data)


class IdentityService:
    """Users and keys, the session secret, and one subject's stored data, read or erased.
    Its own actor beside the collector (``deployments.mlops``), over the same database."""

    def __init__(self, settings: Settings) -> None:
        self.store = ConversationStore(settings.sqlite_path)
        self.backups_dir = settings.backups_dir
        self.exports_dir = settings.exports_dir
        self._users = UserDirectory(self.store)

    def close(self) -> None:
        self.store.close()

    def _event(self, event: Event) -> None:
        try:
            self.store.add_event(event)
        except Exception:  # an event must never undo the change it describes
            log.exception("could not store the %s event", event.type)

    # -- sessions and keys ------------------------------------------------------------------

    def session_secret(self) -> str:
        """The secret every ingress replica signs and verifies session ids with."""
        return self._users.secret("session")

    def authenticate(self, key: str) -> Caller | None:
        """The user of a key, or None; a revoked key is refused at once."""
        return self._users.authenticate(key)

    def users(self) -> UsersResponse:
        return self._users.list()

    def add_user(self, name: str) -> IssuedKey:
        issued = self._users.add(name)
        self._event(_event("user_added", f"👤 사용자 추가: {issued.user.id}", user_id=issued.user.id))
        return issued

    def issue_key(self, user_id: str) -> IssuedKey:
        issued = self._users.issue_key(user_id)
        key_id = issued.user.keys[-1].id
        self._event(_event("user_key_issued", f"🔑 사용자 키 발급: {user_id}", user_id=user_id, key_id=key_id))
        return issued

    def revoke_user(self, user_id: str, key_id: str | None = None) -> UserInfo:
        user = self._users.revoke(user_id, key_id)
        self._event(_event("user_revoked", f"⛔ 사용자 키 폐기: {user_id}", user_id=user_id, key_id=key_id))
        return user

    # -- erasure and export -----------------------------------------------------------------

    def erase(self, kind: SubjectKind, subject: str) -> ErasureReport:
        """Delete a user (their keys too) or a session from the database, the backups and
        the exported training sets, and keep them out of every later run. Idempotent."""
        keys = self._users.delete(subject) if kind == "user" else 0
        deleted = self.store.erase(kind, subject)
        watermark = self.store.trained_watermark()
        run_id = next((r.id for r in self.store.runs(limit=1) if r.status == "running"), None)
        backups = erasure.scrub_backups(sorted(self.backups_dir.glob(BACKUP_GLOB)), kind, subject)
        # An export written before a correction holds the original answer.
        lines = {t.export_line(answer) for t in deleted for answer in {t.assistant, t.answer}}
        exported = erasure.scrub_exports(sorted(self.exports_dir.glob("*.jsonl")), lines)
        report = ErasureReport(
            kind=kind, subject=subject, conversations=len(deleted),
            pending=sum(t.seq > watermark for t in deleted), backups=backups, exported=exported,
            keys_revoked=keys, run_in_progress=run_id,
        )
        counts = report.model_dump(exclude={"kind", "subject", "vectors"})
        # A session id is a bearer secret in open mode: the log names it by a hash.
        shown = pseudonym(subject) if kind == "user" else f"session-{erasure.subject_hash(subject)[:16]}"
        self._event(_event(
            "data_erased",
            f"🗑️ 데이터 삭제: {'사용자' if kind == 'user' else '세션'} {shown} (대화 {len(deleted)}건)",
            kind=kind, subject=shown, **counts,
        ))
        return report

    def subject_conversations(self, kind: SubjectKind, subject: str) -> SubjectConversations:
        turns = self.store.turns_of(kind, subject)
        return SubjectConversations(kind=kind, subject=subject, count=len(turns), conversations=turns)
