"""What every ``echorag`` command shares: user-facing errors and the HTTP client."""

from __future__ import annotations

import os

import httpx

DEFAULT_URL = os.environ.get("ECHORAG_URL", "http://127.0.0.1:8000")


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit code 1."""


def admin_token() -> str | None:
    """ECHORAG_ADMIN_TOKEN, else the token a local server generated in its data dir."""
    if token := os.environ.get("ECHORAG_ADMIN_TOKEN"):
        return token
    from echorag.config import load_settings
    from echorag.identity.admin_token import TOKEN_FILE

    path = load_settings().data_dir / TOKEN_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def client(args) -> httpx.Client:
    headers = {}
    if token := admin_token():
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout)


def call(client: httpx.Client, method: str, path: str, **kwargs) -> dict:
    """One request; connection failures and error statuses become a ``CommandError``."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach EchoRAG at {client.base_url}: {exc}") from None
    if response.is_error:
        hint = ""
        if response.status_code == 401 and "authorization" not in client.headers:
            hint = " -- no admin token found: set ECHORAG_ADMIN_TOKEN (or run this where the server's data dir is)"
        raise CommandError(f"{method} {path} failed ({response.status_code}): {error_text(response)}{hint}")
    return response.json()


def error_text(response: httpx.Response) -> str:
    """The ``error`` of an EchoRAG error body, else the body as it is."""
    try:
        return response.json().get("error", response.text)
    except ValueError:
        return response.text
