"""Who is asking, and whose data a request may touch.

Three authentication modes (``ECHORAG_AUTH_MODE``):

- ``open``: no user identity. Each session is its own scope; a caller holds a session
  by presenting its id, which the server issued and signed, so it cannot be guessed.
- ``api_keys``: per-user keys (``erk_<key id>_<secret>``), stored as salted scrypt
  hashes; the key decides the user.
- ``trusted_header``: an authenticating proxy names the user in a header, believed
  only from the configured proxy addresses.

Everything stored about a conversation belongs to one **owner**: the user's id, or
``session:<session id>`` in ``open`` mode. Memory recall, stored turns, feedback and
erasure all filter on it. Plain Python: no Ray, no web framework.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

AuthMode = Literal["open", "api_keys", "trusted_header"]

SESSION_OWNER_PREFIX = "session:"
# Owners that existed before identities did (every caller shared them) or that only a
# label could produce; no authenticated user may be one of them.
RESERVED_USER_IDS = frozenset({"anonymous", "openai", "default"})

KEY_PREFIX = "erk"
# scrypt: 16 MiB and ~40 ms per verification on one core; the collector verifies a key
# once and then compares a SHA-256 digest of it, so a request does not pay this.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


# -- owners -----------------------------------------------------------------------------------


def session_owner(session_id: str) -> str:
    """The owner of an ``open``-mode session's data."""
    return SESSION_OWNER_PREFIX + session_id


def valid_user_id(user_id: str) -> bool:
    """Whether an authenticated user (a proxy's header) may have this id."""
    return (
        0 < len(user_id) <= 128
        and user_id == user_id.strip()
        and user_id.isprintable()
        and user_id.casefold() not in RESERVED_USER_IDS
        and not user_id.startswith(SESSION_OWNER_PREFIX)
    )


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: a user (``api_keys``, ``trusted_header``) or nobody (``open``)."""

    user_id: str | None = None
    name: str | None = None


# -- sessions ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SessionSigner:
    """Server-issued session ids: ``s-<random>.<MAC>``. The MAC binds the id to its owner
    (the user, or nobody in ``open`` mode), so every replica verifies an id without a
    lookup and no one can present an id they were not given, or another user's."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 characters")
        self._key = hashlib.sha256(("echorag-session\x00" + secret).encode()).digest()

    def _mac(self, nonce: str, user_id: str | None) -> str:
        message = f"{nonce}\x00{user_id or ''}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest()[:16])

    def issue(self, user_id: str | None = None) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"s-{nonce}.{self._mac(nonce, user_id)}"

    def verify(self, session_id: str | None, user_id: str | None = None) -> bool:
        """True only for an id this server issued to ``user_id`` (constant time)."""
        if not session_id or not session_id.startswith("s-") or session_id.count(".") != 1:
            return False
        nonce, mac = session_id[2:].split(".")
        return hmac.compare_digest(mac.encode(), self._mac(nonce, user_id).encode())


# -- user keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewKey:
    """A freshly issued key: ``key`` is shown once; only ``salt`` and ``digest`` are stored."""

    key_id: str
    key: str
    salt: str
    digest: str


def new_key() -> NewKey:
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return NewKey(key_id, f"{KEY_PREFIX}_{key_id}_{secret}", salt.hex(), hash_secret(secret, salt).hex())


def parse_key(key: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != 12 or len(secret) < 32 or len(key) > 200:
        return None
    try:
        int(key_id, 16)
    except ValueError:
        return None
    return key_id, secret


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)


def secret_matches(secret: str, salt_hex: str, digest_hex: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, bytes.fromhex(salt_hex)), bytes.fromhex(digest_hex))


def key_fingerprint(key: str) -> bytes:
    """What a verified key is remembered by in memory (never the key itself)."""
    return hashlib.sha256(key.encode()).digest()


# -- trusted proxies --------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.5``, ``10.0.0.0/24``, ``::1`` → networks; a bad entry raises ``ValueError``."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def from_proxy(host: str | None, proxies: tuple[Network, ...]) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in proxies)


def header_user(
    host: str | None, headers: Mapping[str, str], header: str, proxies: tuple[Network, ...]
) -> str | None:
    """The user a trusted proxy names in ``header``; None when the request did not come
    through a trusted proxy, or the header is missing or not a valid user id."""
    if not from_proxy(host, proxies):
        return None
    value = headers.get(header)
    return value if value is not None and valid_user_id(value) else None


# -- HTTP bodies ------------------------------------------------------------------------------


class SessionResponse(BaseModel):
    session_id: str = Field(..., description="A new private session; send it back as ``session_id``.")
    user_id: str | None = Field(None, description="The session's owner (None in open mode).")


class MeResponse(BaseModel):
    auth_mode: AuthMode
    user_id: str | None = Field(None, description="Who the key or the proxy says you are (None: nobody).")
    name: str | None = None
    key_required: bool = Field(..., description="True when chat routes need a user key (api_keys mode).")
