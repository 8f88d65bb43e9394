"""HTTP guard rails: request body size and CORS for every route, the admin token
for admin routes.

Serve freezes the FastAPI app when the ingress class is defined, before any
settings are known, so the guards are installed then and configured by the
ingress replica when it starts (``RequestGuard.configure``). One ingress runs
per replica process, so process-wide configuration is the replica's own.
"""

from __future__ import annotations

import json
from typing import ClassVar

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echorag.identity.admin_token import token_matches

bearer = HTTPBearer(auto_error=False, description="ECHORAG_ADMIN_TOKEN")


class BodyTooLarge(Exception):
    pass


class RequestGuard:
    max_body_bytes: ClassVar[int] = 10 * 1024 * 1024
    cors_origins: ClassVar[tuple[str, ...]] = ()
    admin_token: ClassVar[str | None] = None  # None: admin routes refuse everyone

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: CORSMiddleware | None = None
        self._cors_for: tuple[str, ...] | None = None

    @classmethod
    def configure(cls, max_body_bytes: int, cors_origins: tuple[str, ...], admin_token: str | None = None) -> None:
        cls.max_body_bytes, cls.cors_origins = max_body_bytes, tuple(cors_origins)
        cls.admin_token = admin_token

    def _inner(self) -> ASGIApp:
        if not self.cors_origins:  # same origin only: browsers block other origins by themselves
            return self.app
        if self._cors_for != self.cors_origins:
            self._cors = CORSMiddleware(
                self.app, allow_origins=list(self.cors_origins), allow_methods=["*"],
                allow_headers=["Authorization", "Content-Type"],
            )
            self._cors_for = self.cors_origins
        return self._cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _too_large(send, limit)

        received, started = 0, False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body without Content-Length
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._inner()(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"request body exceeds {limit} bytes"}).encode()
    await send({
        "type": "http.response.start", "status": 413,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def require_admin(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """Dependency of every admin route. It runs before the body is read, so a caller
    without the token learns nothing about what the route expects."""
    token = RequestGuard.admin_token
    if credentials is None or token is None or not token_matches(credentials.credentials, token):
        raise HTTPException(
            401, "admin token required: Authorization: Bearer $ECHORAG_ADMIN_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
