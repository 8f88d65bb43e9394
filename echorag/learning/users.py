"""Users and their keys (``ECHORAG_AUTH_MODE=api_keys``), in the collector's database.

A key is shown once, when it is issued; the database keeps its id, a random salt and
the scrypt hash of its secret. ``authenticate`` reads the key's row on every call, so
a revoked key or a deleted user is refused on the very next request; the scrypt
verification itself is done once per key and remembered (by a SHA-256 digest of the
key, in this process's memory only), so a request pays a database read, not scrypt.

The collector owns this (one process per application), so every ingress replica sees
the same users. It also keeps the secret that signs session ids.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from echorag.identity import access as identity
from echorag.learning.jobs import Conflict, NotFound

if TYPE_CHECKING:
    from echorag.learning.database import ConversationStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    salt       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys (user_id);
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
MAX_VERIFIED = 10_000  # verified keys remembered per process


class KeyInfo(BaseModel):
    id: str = Field(..., description="The key's public id (its second part: erk_<id>_…).")
    created_at: float
    revoked_at: float | None = None


class UserInfo(BaseModel):
    id: str
    name: str
    created_at: float
    keys: list[KeyInfo] = Field(default_factory=list)


class UsersResponse(BaseModel):
    users: list[UserInfo]
    count: int


class NewUserRequest(BaseModel):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="A name for people (unique); the user's id is generated.")


class IssuedKey(BaseModel):
    user: UserInfo
    api_key: str = Field(..., description="Shown once: only its hash is stored. Send it as Authorization: Bearer.")


class UserDirectory:
    def __init__(self, store: ConversationStore) -> None:
        self.store = store
        with store.transaction() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
        self._verified: dict[str, tuple[bytes, str, str]] = {}  # key id -> (key digest, stored hash, user id)
        self._lock = threading.Lock()

    # -- the session-signing secret ---------------------------------------------------------

    def secret(self, name: str = "session") -> str:
        """A random secret created on first use and kept in the database."""
        with self.store.transaction() as db:
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            if row:
                return row[0]
            value = secrets.token_urlsafe(32)
            db.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", (name, value))
            return value

    # -- users and keys ---------------------------------------------------------------------

    def _info(self, user_id: str) -> UserInfo:
        rows = self.store.query("SELECT id, name, created_at FROM users WHERE id = ?", (user_id,))
        if not rows:
            raise NotFound(f"no user {user_id!r}", {"user_id": user_id})
        keys = self.store.query(
            "SELECT id, created_at, revoked_at FROM api_keys WHERE user_id = ? ORDER BY created_at", (user_id,)
        )
        return UserInfo(**dict(rows[0]), keys=[KeyInfo(**dict(k)) for k in keys])

    def list(self) -> UsersResponse:
        ids = [r[0] for r in self.store.query("SELECT id FROM users ORDER BY created_at, id")]
        users = [self._info(i) for i in ids]
        return UsersResponse(users=users, count=len(users))

    def get(self, user_id: str) -> UserInfo:
        return self._info(user_id)

    def add(self, name: str) -> IssuedKey:
        """A new user with one key (409 when the name is taken)."""
        user_id = f"usr_{secrets.token_hex(8)}"
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a user named {name!r} exists; names are unique", {"name": name})
            db.execute("INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)", (user_id, name, time.time()))
            key = self._insert_key(db, user_id)
        return IssuedKey(user=self._info(user_id), api_key=key)

    def issue_key(self, user_id: str) -> IssuedKey:
        """One more key for a user (the others stay valid until revoked)."""
        with self.store.transaction() as db:
            if not db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
                raise NotFound(f"no user {user_id!r}", {"user_id": user_id})
            key = self._insert_key(db, user_id)
        return IssuedKey(user=self._info(user_id), api_key=key)

    @staticmethod
    def _insert_key(db, user_id: str) -> str:
        new = identity.new_key()
        db.execute(
            "INSERT INTO api_keys (id, user_id, salt, digest, created_at) VALUES (?, ?, ?, ?, ?)",
            (new.key_id, user_id, new.salt, new.digest, time.time()),
        )
        return new.key

    def revoke(self, user_id: str, key_id: str | None = None) -> UserInfo:
        """Revoke one key of a user, or all of them; effective on the next request."""
        self._info(user_id)  # 404 for an unknown user
        sql, params = "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", [time.time(), user_id]
        if key_id is not None:
            sql, params = sql + " AND id = ?", params + [key_id]
        with self.store.transaction() as db:
            if db.execute(sql, params).rowcount == 0 and key_id is not None:
                if not db.execute("SELECT 1 FROM api_keys WHERE id = ? AND user_id = ?", (key_id, user_id)).fetchone():
                    raise NotFound(f"user {user_id!r} has no key {key_id!r}", {"key_id": key_id})
        self._forget(user_id)
        return self._info(user_id)

    def delete(self, user_id: str) -> int:
        """Delete a user and their keys; returns how many keys were still valid."""
        with self.store.transaction() as db:
            valid = db.execute(
                "SELECT COUNT(*) FROM api_keys WHERE user_id = ? AND revoked_at IS NULL", (user_id,)
            ).fetchone()[0]
            db.execute("DELETE FROM api_keys WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM users WHERE id = ?", (user_id,))
        self._forget(user_id)
        return valid

    def _forget(self, user_id: str) -> None:
        """Drop the user's verified keys from memory (the database already refuses them)."""
        with self._lock:
            for key_id in [k for k, (_, _, owner) in self._verified.items() if owner == user_id]:
                del self._verified[key_id]

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, key: str) -> identity.Caller | None:
        """The user a key belongs to, or None (malformed, unknown, revoked, deleted user)."""
        parsed = identity.parse_key(key)
        if parsed is None:
            return None
        key_id, secret_part = parsed
        rows = self.store.query(
            "SELECT k.salt, k.digest, u.id AS user_id, u.name FROM api_keys AS k JOIN users AS u ON u.id = k.user_id"
            " WHERE k.id = ? AND k.revoked_at IS NULL",
            (key_id,),
        )
        if not rows:
            return None
        row = rows[0]
        fingerprint = identity.key_fingerprint(key)
        with self._lock:
            known = self._verified.get(key_id)
        if known is not None and known[1] == row["digest"]:
            if not hmac.compare_digest(known[0], fingerprint):
                return None
        else:
            if not identity.secret_matches(secret_part, row["salt"], row["digest"]):
                return None
            with self._lock:
                if len(self._verified) >= MAX_VERIFIED:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[key_id] = (fingerprint, row["digest"], row["user_id"])
        return identity.Caller(user_id=row["user_id"], name=row["name"])
