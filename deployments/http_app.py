"""The FastAPI application of the ingress: the web UI, metrics middleware, error
handlers and the Korean messages a user reads when the service cannot answer.

Routes live in ``deployments/routes/`` as methods of the ingress class; Serve binds
them to the replica (``deployments/ingress.py``). Errors are JSON everywhere:
``{"error", "detail"}``, or OpenAI's envelope under ``/v1/``.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

import echorag
from deployments import metrics
from deployments.guard import RequestGuard, require_admin
from echorag.learning.jobs import MlopsError
from echorag.serving import openai as oai
from echorag.serving.schemas import ErrorResponse

app = FastAPI(
    title="EchoRAG",
    description="Korean retrieval-augmented chat that learns from its conversations.",
    version="0.1.0",
    responses={422: {"model": ErrorResponse}},
)

# The web UI: static files shipped in the package, no build step.
UI_DIR = Path(echorag.__file__).parent / "ui"

# Korean messages shown in chat when the service cannot answer.
STORE_DOWN = "검색 저장소에 연결할 수 없습니다. 잠시 후 다시 시도해 주세요."
SERVER_ERROR = "답변을 생성하지 못했습니다. 잠시 후 다시 시도해 주세요."
RATE_LIMITED = "요청이 너무 많습니다. {seconds}초 후에 다시 시도해 주세요."

# Every admin route depends on this; it runs before the request body is parsed.
Admin = Security(require_admin)


class ServiceUnavailable(Exception):
    """A backing service (the vector store) is down; the user should retry later."""


def user_message(exc: Exception) -> str:
    """What a user reads when an answer fails part-way (a stream cannot change its status)."""
    return str(exc) if isinstance(exc, ServiceUnavailable) else SERVER_ERROR


class UIFiles(StaticFiles):
    """Static files a browser revalidates, so an upgrade never mixes old and new scripts."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


app.mount("/ui", UIFiles(directory=UI_DIR, check_dir=False), name="ui")
app.add_middleware(RequestGuard)


@app.middleware("http")
async def _record_metrics(request: Request, call_next):
    started, status = time.perf_counter(), 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:  # a route template, never a raw URL, keeps the series' cardinality bounded
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.record_request(route, status, time.perf_counter() - started)


def _error(request: Request, status: int, message: str, detail=None, headers=None) -> JSONResponse:
    """Errors are JSON: ``{"error": message}``, or OpenAI's envelope under ``/v1/``."""
    # Under a route prefix (an application at /keys), the path still starts with it.
    if request.url.path.removeprefix(request.scope.get("root_path", "")).startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(status_code=status, content=oai.error_body(message, kind), headers=headers)
    return JSONResponse(status_code=status, content={"error": message, "detail": detail}, headers=headers)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return _error(request, 422, f"invalid request: {where}: {first['msg']}", errors)


@app.exception_handler(MlopsError)
async def _mlops_error(request: Request, exc: MlopsError) -> JSONResponse:
    # Raised in the collector actor: ``str(exc)`` would carry Ray's remote traceback.
    return _error(request, exc.status_code, exc.message, exc.detail)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # ``info``: what a client may act on (deployments/auth.py: a user key, a new session).
    return _error(request, exc.status_code, exc.detail, getattr(exc, "info", None), headers=exc.headers)


@app.exception_handler(ServiceUnavailable)
async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
    return _error(request, 503, str(exc), headers={"Retry-After": "5"})


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _error(request, 500, SERVER_ERROR, type(exc).__name__)
