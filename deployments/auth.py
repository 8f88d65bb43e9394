"""Who is calling, and which session they hold: the dependency of every user route
(``/chat``, ``/chat/stream``, ``/memory``, ``/feedback``, ``/sessions``, ``/v1/*``) and
the server-issued sessions (``echorag/identity/access.py``).

- ``open``: nobody is authenticated; a session is held by presenting its id.
- ``api_keys``: ``Authorization: Bearer <user key>``; the identity service checks the key on
  every request (one actor call), so a revoked key fails on the next one.
- ``trusted_header``: the user named by the configured header, believed only when
  the request comes from a configured proxy address.

Like ``guard.py``, the dependency is configured per process by the ingress replica
(one ingress per replica process), because Serve freezes the app before settings exist.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from echorag.identity.access import Caller, SessionSigner, header_user, parse_networks, session_owner
from echorag.identity.admin_token import token_matches

# Korean: a person reads these in the web UI and in chat clients.
KEY_REQUIRED = "사용자 키가 필요합니다. 관리자에게 발급받은 키를 Authorization: Bearer <사용자 키>로 보내 주세요."
KEY_INVALID = "사용자 키가 올바르지 않거나 폐기되었습니다. 관리자에게 새 키를 받아 주세요."
ADMIN_IS_NOT_A_USER = "관리자 토큰은 사용자 키가 아닙니다. 대화에는 관리자가 발급한 사용자 키를 쓰세요."
PROXY_REQUIRED = "인증 프록시를 거친 요청만 받습니다. 로그인 후 다시 시도해 주세요."
SESSION_UNKNOWN = "대화 세션을 찾을 수 없습니다. session_id 없이 보내면 새 세션이 시작됩니다."

user_bearer = HTTPBearer(
    auto_error=False, scheme_name="UserKey",
    description="A user key (erk_…), needed when the server runs with ECHORAG_AUTH_MODE=api_keys",
)


class Unauthorized(HTTPException):
    """401 for a user route; ``info`` tells a client what it lacks (``{"auth": "user_key"}``)."""

    def __init__(self, message: str, scheme: str = "user_key") -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": 'Bearer realm="echorag-user"'})
        self.info = {"auth": scheme}


class UnknownSession(HTTPException):
    """404: the session was not issued, or not to this caller; existence is not revealed."""

    def __init__(self) -> None:
        super().__init__(404, SESSION_UNKNOWN)
        self.info = {"session": "unknown"}


class UserAuth:
    mode: ClassVar[str] = "open"
    identities: ClassVar[Any] = None
    admin_token: ClassVar[str | None] = None
    header: ClassVar[str] = "X-Forwarded-User"
    proxies: ClassVar[tuple] = ()

    @classmethod
    def configure(cls, settings, identities, admin_token: str | None) -> None:
        cls.mode, cls.identities, cls.admin_token = settings.auth_mode, identities, admin_token
        cls.header, cls.proxies = settings.trusted_user_header, parse_networks(settings.trusted_proxies)


async def _identify(http: Request, credentials: HTTPAuthorizationCredentials | None, required: bool) -> Caller:
    mode = UserAuth.mode
    if mode == "open":
        return Caller()
    if mode == "trusted_header":
        host = http.client.host if http.client else None
        user = header_user(host, http.headers, UserAuth.header, UserAuth.proxies)
        if user is None:
            if required:
                raise Unauthorized(PROXY_REQUIRED, "proxy")
            return Caller()
        return Caller(user_id=user)
    if credentials is None:
        if required:
            raise Unauthorized(KEY_REQUIRED)
        return Caller()
    key = credentials.credentials
    if UserAuth.admin_token and token_matches(key, UserAuth.admin_token):
        raise Unauthorized(ADMIN_IS_NOT_A_USER)
    caller = await UserAuth.identities.authenticate.remote(key)
    if caller is None:
        raise Unauthorized(KEY_INVALID)
    return caller


async def require_caller(http: Request, credentials: HTTPAuthorizationCredentials | None = Security(user_bearer)) -> Caller:
    """Dependency of every user route: the user (401 without one where the mode needs one)."""
    return await _identify(http, credentials, required=True)


async def optional_caller(http: Request, credentials: HTTPAuthorizationCredentials | None = Security(user_bearer)) -> Caller:
    """For ``GET /me``: nobody when no key is given (a wrong key is still a 401)."""
    return await _identify(http, credentials, required=False)


class Sessions:
    """Issues and verifies session ids with the application's secret: ``session_secret``
    when configured, else the one the identity service keeps (fetched once per replica)."""

    def __init__(self, identities, configured: str | None = None) -> None:
        self.identities = identities
        self._signer = SessionSigner(configured) if configured else None
        self._fetching = asyncio.Lock()

    async def signer(self) -> SessionSigner:
        if self._signer is None:
            async with self._fetching:
                if self._signer is None:
                    self._signer = SessionSigner(await self.identities.session_secret.remote())
        return self._signer

    async def issue(self, caller: Caller) -> str:
        return (await self.signer()).issue(caller.user_id)

    async def hold(self, caller: Caller, session_id: str | None) -> str:
        """``session_id`` if this caller holds it, else 404 (never 403: existence does not leak)."""
        if not (await self.signer()).verify(session_id, caller.user_id):
            raise UnknownSession()
        return session_id

    async def open(self, caller: Caller, session_id: str | None) -> tuple[str, bool]:
        """The caller's session: the one given (held), or a new one. ``(id, new)``."""
        if session_id is None:
            return await self.issue(caller), True
        return await self.hold(caller, session_id), False

    def belongs(self, user_id: str):
        """For forgetting a user's short-term memory: which session ids are theirs."""
        signer = self._signer
        return (lambda sid: signer.verify(sid, user_id)) if signer else (lambda sid: False)


def owner(caller: Caller, session_id: str) -> str:
    """Whose data a turn is: the user's, or (open mode) the session's own."""
    return caller.user_id or session_owner(session_id)
