"""HTTP ingress: FastAPI routes over the embedder, retriever and generator handles.

(No ``from __future__ import annotations`` here: FastAPI reads the route annotations
at runtime, and Serve's class-based ingress cannot resolve postponed ones.)

Follow ``POST /chat``: ``chat`` → ``ChatPipeline.chat`` (echorag/pipeline.py) →
``ServeServices`` below → the Embedder, Retriever and Generator deployments.
"""


import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

import echorag
from deployments import metrics
from deployments.guard import RequestGuard, require_admin
from deployments.mlops import get_collector
from echorag.config import load_settings
from echorag.generation import BASE, Generation
from echorag.memory import SessionMemory
from echorag.mlops import api as mlops_api
from echorag.mlops.loop import MlopsError
from echorag.mlops.registry import AdapterRegistry, InvalidAdapterError
from echorag import openai_compat as oai
from echorag.inversion import InvertRequest, InvertResponse
from echorag.pipeline import ChatPipeline, Turn
from echorag.ratelimit import RateLimiter
from echorag.security import ensure_admin_token
from echorag.schemas import (
    ChatRequest,
    ChatResponse,
    DocumentsRequest,
    DocumentsResponse,
    ErrorResponse,
    HealthResponse,
    MemoryResponse,
    MlopsInfo,
    SearchResult,
    StatsResponse,
)

app = FastAPI(
    title="EchoRAG",
    description="Korean retrieval-augmented chat that learns from its conversations.",
    version="0.1.0",
    responses={422: {"model": ErrorResponse}},
)

# The web UI: static files shipped in the package, no build step.
UI_DIR = Path(echorag.__file__).parent / "ui"


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

# Korean messages shown in chat when the service cannot answer.
STORE_DOWN = "검색 저장소에 연결할 수 없습니다. 잠시 후 다시 시도해 주세요."
SERVER_ERROR = "답변을 생성하지 못했습니다. 잠시 후 다시 시도해 주세요."
RATE_LIMITED = "요청이 너무 많습니다. {seconds}초 후에 다시 시도해 주세요."

# A replica that died mid-request (Serve replaces it): safe to retry work that
# has no side effects yet — embedding, retrieval, generation before any token.
REPLICA_GONE = (RayActorError, ActorUnavailableError)
RETRIES = 3
HTTP_INVERT_BUDGET = 2000  # about 15 s of e5 embedding on one CPU core


class ServiceUnavailable(Exception):
    """A backing service (the vector store) is down; the user should retry later."""


async def backoff(attempt: int) -> None:
    await asyncio.sleep(0.5 * 2**attempt)


async def retrying(call, *args, **kwargs):
    for attempt in range(RETRIES):
        try:
            return await call(*args, **kwargs)
        except REPLICA_GONE:
            if attempt == RETRIES - 1:
                raise
            await backoff(attempt)


def user_message(exc: Exception) -> str:
    """What a user reads when an answer fails part-way (a stream cannot change its status)."""
    return str(exc) if isinstance(exc, ServiceUnavailable) else SERVER_ERROR


def _error(request: Request, status: int, message: str, detail=None, headers=None) -> JSONResponse:
    """Errors are JSON: ``{"error": message}``, or OpenAI's envelope under ``/v1/``."""
    if request.url.path.startswith("/v1/"):
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


# Every admin route depends on this; it runs before the request body is parsed.
Admin = Security(require_admin)


@app.exception_handler(MlopsError)
async def _mlops_error(request: Request, exc: MlopsError) -> JSONResponse:
    # Raised in the collector actor: ``str(exc)`` would carry Ray's remote traceback.
    return _error(request, exc.status_code, exc.message, exc.detail)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(request, exc.status_code, exc.detail, headers=exc.headers)


@app.exception_handler(ServiceUnavailable)
async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
    return _error(request, 503, str(exc), headers={"Retry-After": "5"})


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _error(request, 500, SERVER_ERROR, type(exc).__name__)


class ServeServices:
    """``ChatServices`` over deployment handles."""

    def __init__(self, embedder: DeploymentHandle, retriever: DeploymentHandle, generator: DeploymentHandle,
                 collector, registry: AdapterRegistry) -> None:
        self.embedder, self.retriever, self.generator = embedder, retriever, generator
        self.collector, self.registry = collector, registry

    async def embed_query(self, text: str) -> np.ndarray:
        return await retrying(self.embedder.embed_query.remote, text)

    async def search(self, query: str, vector: np.ndarray, user_id: str) -> list[SearchResult]:
        try:
            return await retrying(self.retriever.chat_context.remote, query, vector, user_id)
        except REPLICA_GONE:
            raise
        except Exception as exc:
            # The vector store (a Chroma server) going away is the usual cause; say so in Korean.
            if not await self._store_ok():
                raise ServiceUnavailable(STORE_DOWN) from exc
            raise

    async def _store_ok(self) -> bool:
        try:
            return await self.retriever.ping.remote()
        except Exception:
            return False

    async def generate(self, messages: list[dict], adapter: str) -> Generation:
        handle = self.generator.options(multiplexed_model_id=adapter)
        return await retrying(handle.generate.remote, messages)

    async def stream(self, messages: list[dict], adapter: str) -> AsyncIterator[str]:
        for attempt in range(RETRIES):
            started = False
            try:
                pieces = self.generator.options(multiplexed_model_id=adapter, stream=True).stream.remote(messages)
                async for piece in pieces:
                    started = True
                    yield piece
                return
            except REPLICA_GONE:
                if started or attempt == RETRIES - 1:  # the user already saw part of an answer
                    raise
                await backoff(attempt)

    async def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        return await retrying(self.generator.usage.remote, messages, text)

    async def record(self, turn: Turn) -> MlopsInfo:
        # Ray retries this call across a collector restart; storing a turn id twice is a no-op.
        return await self.collector.call.remote("record", turn)

    async def remember(self, turn: Turn) -> None:
        await retrying(self.retriever.remember.remote, turn.id, turn.memory_text(), turn.memory_metadata())

    async def active_version(self) -> str:
        # The registry's pointer file is the truth; every replica reads it, so new and
        # restarted replicas serve the active version by themselves.
        return self.registry.active


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(app)
class EchoRAGIngress:
    def __init__(
        self,
        settings: dict,
        embedder: DeploymentHandle,
        retriever: DeploymentHandle,
        generator: DeploymentHandle,
    ) -> None:
        self.settings = load_settings(**settings)
        self.retriever, self.generator, self.embedder = retriever, generator, embedder
        self.registry = AdapterRegistry(self.settings.adapters_root)
        metrics.set_enabled(self.settings.monitoring_export_metrics)
        self.collector = get_collector(settings, serve.get_replica_context().app_name)
        self.admin_token = ensure_admin_token(self.settings.data_dir, self.settings.admin_token)
        self.services = ServeServices(embedder, retriever, generator, self.collector, self.registry)
        self.memory = SessionMemory(self.settings.memory_turns)
        self.limiter = RateLimiter(self.settings.rate_limit_per_minute, self.settings.rate_limit_burst)
        RequestGuard.configure(self.settings.max_body_bytes, self.settings.cors_origins, self.admin_token)
        self.started = time.time()
        self.requests = self.errors = 0
        self.latency_total = 0.0
        self._pipeline: ChatPipeline | None = None
        self._model_info: dict | None = None
        self._embedder_info: dict | None = None

    async def _ready(self) -> ChatPipeline:
        if self._pipeline is None:
            self._model_info = await self.generator.info.remote()
            self._pipeline = ChatPipeline(self.services, self.memory, self._model_info["name"])
        return self._pipeline

    async def _embedder(self) -> dict:
        """The embedder's id and dimension: fixed for the application's life, asked once."""
        if self._embedder_info is None:
            self._embedder_info = await self.embedder.info.remote()
        return self._embedder_info

    def _check_length(self, request: ChatRequest) -> None:
        limit = self.settings.max_message_chars
        if len(request.message) > limit:
            raise HTTPException(413, f"message is {len(request.message)} characters; the limit is {limit}")

    def _check_version(self, request: ChatRequest) -> None:
        version = request.adapter_version
        if version and version != BASE:
            try:
                self.registry.path(version)
            except InvalidAdapterError as exc:  # also an unknown or malformed name
                raise HTTPException(404, f"adapter version {version!r} is not available: {exc}") from None

    def _rate_limit(self, http: Request, user_id: str | None, session_id: str | None = None) -> None:
        # Named users have their own bucket; anonymous ones one per address and session,
        # so many people chatting from behind one address are not throttled together.
        if user_id and user_id != "anonymous":
            key = f"user:{user_id}"
        else:
            key = f"addr:{http.client.host if http.client else '?'}/{session_id or ''}"
        if wait := self.limiter.acquire(key):
            seconds = RateLimiter.retry_after(wait)
            raise HTTPException(429, RATE_LIMITED.format(seconds=seconds), headers={"Retry-After": seconds})

    async def _loop(self, method: str, *args, **kwargs):
        """Call the learning loop; its errors (409 conflict, 404…) keep their status codes."""
        return await self.collector.call.remote(method, *args, **kwargs)

    @app.get("/", include_in_schema=False)
    async def index(self) -> FileResponse:
        return FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.post("/chat", response_model=ChatResponse, responses={429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def chat(self, request: ChatRequest, http: Request) -> ChatResponse:
        self._rate_limit(http, request.user_id, request.session_id)
        self._check_length(request)
        self._check_version(request)
        pipeline = await self._ready()
        started = time.perf_counter()
        self.requests += 1
        try:
            response = await pipeline.chat(request)
        except Exception:
            self.errors += 1
            raise
        self.latency_total += time.perf_counter() - started
        metrics.record_chat(response.timing, response.search_results)
        return response

    @app.post("/chat/stream", response_class=StreamingResponse, responses={429: {"model": ErrorResponse}})
    async def chat_stream(self, request: ChatRequest, http: Request) -> StreamingResponse:
        """Server-sent events: ``sources``, then ``token`` pieces, then ``done`` (the /chat response)."""
        self._rate_limit(http, request.user_id, request.session_id)
        self._check_length(request)
        self._check_version(request)
        pipeline = await self._ready()
        self.requests += 1

        async def events() -> AsyncIterator[str]:
            try:
                async for event in pipeline.chat_stream(request):
                    if event["event"] == "done":
                        metrics.record_chat(event["response"]["timing"], event["response"]["search_results"])
                    yield f"event: {event['event']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
            except Exception as exc:
                self.errors += 1
                error = {"event": "error", "error": user_message(exc)}
                yield f"event: error\ndata: {json.dumps(error, ensure_ascii=False)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health", response_model=HealthResponse)
    async def health(self) -> HealthResponse:
        await self._ready()
        info = self._model_info
        try:
            counts, store_ok = await asyncio.gather(self.retriever.counts.remote(), self.retriever.ping.remote())
        except Exception as exc:  # the store is unreachable: report, don't fail
            counts, store_ok = {"documents": 0, "memory": 0}, False
            detail = {"store_error": str(exc)[:300]}
        else:
            detail = {}
        embedder = await self.embedder.info.remote()  # a health probe asks every time
        return HealthResponse(
            status="ok" if store_ok else "degraded",
            model=info["name"],
            model_kind=info["kind"],
            demo_model=info["demo"],
            embedder=embedder["id"],
            device=str(info["device"]),
            documents=counts["documents"],
            memory=counts["memory"],
            adapter_version=await self.services.active_version(),
            uptime_s=time.time() - self.started,
            detail=detail,
        )

    @app.get("/stats", response_model=StatsResponse)
    async def stats(self) -> StatsResponse:
        counts = await self.retriever.counts.remote()
        answered = self.requests - self.errors
        return StatsResponse(
            requests=self.requests,
            errors=self.errors,
            avg_latency_s=self.latency_total / answered if answered else 0.0,
            documents=counts["documents"],
            memory=counts["memory"],
            sessions=len(self.memory),
            uptime_s=time.time() - self.started,
        )

    @app.get("/memory", response_model=MemoryResponse)
    async def get_memory(self, session_id: str = "default") -> MemoryResponse:
        return MemoryResponse(
            session_id=session_id, turns=self.memory.get(session_id), max_turns=self.memory.max_turns
        )

    @app.delete("/memory")
    async def clear_memory(self, session_id: str = "default") -> dict:
        return {"session_id": session_id, "cleared": self.memory.clear(session_id)}

    @app.post("/documents", response_model=DocumentsResponse, dependencies=[Admin])
    async def add_documents(self, request: DocumentsRequest) -> DocumentsResponse:
        documents = [d.model_dump() for d in request.documents]
        return DocumentsResponse(**await self.retriever.add_documents.remote(documents))

    # -- OpenAI-compatible API (echorag/openai_compat.py) ---------------------------------
    @app.get("/v1/models", response_model=oai.ModelList, responses=oai.ERROR_RESPONSES)
    async def openai_models(self) -> oai.ModelList:
        cards = [oai.ModelCard(id=oai.MODEL, created=int(self.started)),
                 oai.ModelCard(id=oai.model_id(BASE), created=int(self.started))]
        for info in self.registry.history():
            cards.append(oai.ModelCard(id=oai.model_id(info.version), created=int(info.created_at)))
        return oai.ModelList(data=cards)

    def _openai_request(self, request: oai.ChatCompletionRequest, http: Request):
        try:
            version = oai.parse_model(request.model)
        except oai.UnknownModel as exc:
            raise HTTPException(404, str(exc)) from None
        chat, history = oai.to_chat_request(request, version)
        self._rate_limit(http, request.user)
        self._check_length(chat)
        self._check_version(chat)
        return chat, history

    @app.post("/v1/chat/completions", response_model=oai.ChatCompletion,
              responses={**oai.ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}})
    async def openai_chat(self, request: oai.ChatCompletionRequest, http: Request):
        """Retrieval-augmented like ``/chat``; ``stream: true`` answers in OpenAI's chunk format."""
        chat, history = self._openai_request(request, http)
        pipeline = await self._ready()
        self.requests += 1
        if not request.stream:
            response = await pipeline.chat(chat, history)
            metrics.record_chat(response.timing, response.search_results)
            usage = response.usage
            return oai.completion(response, request.model, usage.prompt_tokens, usage.completion_tokens)

        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        async def chunks() -> AsyncIterator[str]:
            completion_id, created = f"chatcmpl-{time.time_ns():x}", int(time.time())

            def sse(body: dict) -> str:
                return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

            yield sse(oai.chunk(completion_id, request.model, created, {"role": "assistant", "content": ""}))
            try:
                async for event in pipeline.chat_stream(chat, history):
                    if event["event"] == "token":
                        yield sse(oai.chunk(completion_id, request.model, created, {"content": event["text"]}))
                    elif event["event"] == "done":
                        metrics.record_chat(event["response"]["timing"], event["response"]["search_results"])
                        usage = event["response"]["usage"]
                        yield sse(oai.chunk(completion_id, request.model, created, {}, finish="stop"))
                        if include_usage:
                            totals = oai.Usage(**usage, total_tokens=sum(usage.values()))
                            yield sse(oai.chunk(completion_id, request.model, created, {}, usage=totals, choices=False))
            except Exception as exc:
                self.errors += 1
                yield sse(oai.error_body(user_message(exc), "server_error"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/v1/embeddings", response_model=oai.EmbeddingList, responses=oai.ERROR_RESPONSES)
    async def openai_embeddings(self, request: oai.EmbeddingRequest, http: Request) -> oai.EmbeddingList:
        """The service's own embedder (L2-normalised); ``input_type`` picks query or passage prefixes."""
        if request.model not in (oai.MODEL, (await self._embedder())["id"]):
            raise HTTPException(404, f"model {request.model!r} does not exist; use {oai.MODEL!r}")
        try:
            texts = request.texts()
        except ValueError as exc:
            raise HTTPException(422, f"invalid request: input: {exc}") from None
        self._rate_limit(http, request.user)
        if request.input_type == "query":
            vectors = await asyncio.gather(*(retrying(self.embedder.embed_query.remote, t) for t in texts))
        else:
            vectors = await retrying(self.embedder.embed_passages.remote, texts)
        items = [oai.EmbeddingItem(index=i, embedding=np.asarray(v, dtype=float).tolist()) for i, v in enumerate(vectors)]
        tokens = sum(len(t) for t in texts)  # characters: the embedder's tokenizer is internal to it
        return oai.EmbeddingList(data=items, model=request.model, usage=oai.Usage(prompt_tokens=tokens, total_tokens=tokens))

    # -- inverse vectorisation (echorag/inversion.py) --------------------------------------
    @app.post("/vectors/invert", response_model=InvertResponse, dependencies=[Admin])
    async def invert_vector(self, request: InvertRequest) -> InvertResponse:
        """What a stored (or given) vector still reveals: the restored text, its cosine to the
        target and the method's trace. ``nearest`` is the store's own echo; ``iterative``
        consults the target's neighbours but never the target itself."""
        if (request.budget or 0) > HTTP_INVERT_BUDGET:
            raise HTTPException(422, f"budget is at most {HTTP_INVERT_BUDGET} over HTTP; "
                                     "echorag eval-inversion runs larger ones offline")
        if request.id is not None:
            vector = await self.retriever.stored_vector.remote(request.id, request.collection)
            if vector is None:
                raise HTTPException(404, f"no stored item {request.id!r} in {request.collection}")
        else:
            vector = np.asarray(request.vector, dtype=np.float32)
            dim = (await self._embedder())["dim"]
            if vector.shape[0] != dim or not np.isfinite(vector).all() or not np.any(vector):
                raise HTTPException(422, f"vector must be {dim} finite numbers, not all zero")
        exclude = None if request.method == "nearest" else request.id
        try:
            consult = await self.retriever.nearest_texts.remote(vector, request.collection, 8, exclude)
            return InvertResponse(**await self.embedder.invert.remote(
                vector, request.method, request.budget, request.side, consult
            ))
        except ValueError as exc:  # e.g. bag_of_tokens with an embedder that is not mean-pooled
            cause = getattr(exc, "cause", exc)  # raised in a replica: Ray wraps it
            raise HTTPException(422, f"cannot invert: {cause}") from None

    # -- the learning loop ---------------------------------------------------------------
    @app.post("/feedback", response_model=mlops_api.FeedbackResponse)
    async def feedback(self, request: mlops_api.FeedbackRequest):
        return await self._loop("feedback", request.turn_id, request.rating)

    @app.get("/mlops/status", response_model=mlops_api.StatusResponse)
    async def mlops_status(self):
        return await self._loop("status")

    @app.get("/mlops/training-progress", response_model=mlops_api.TrainingProgress)
    async def training_progress(self):
        return await self._loop("training_progress")

    @app.get("/mlops/training-history", response_model=mlops_api.TrainingHistory)
    async def training_history(self, limit: int = Query(50, ge=1, le=1000)):
        return await self._loop("training_history", limit)

    @app.get("/mlops/models", response_model=mlops_api.ModelsResponse)
    async def models(self):
        return await self._loop("models")

    @app.get("/mlops/performance", response_model=mlops_api.PerformanceMetrics)
    async def performance(self):
        return await self._loop("performance")

    @app.get("/mlops/events", response_model=mlops_api.EventsResponse, dependencies=[Admin])
    async def events(
        self, event_type: str | None = None, limit: int = Query(100, ge=1, le=mlops_api.EVENTS_LIMIT_MAX),
    ):
        return await self._loop("events", event_type, limit)

    @app.get("/mlops/conversations", response_model=mlops_api.ConversationsResponse, dependencies=[Admin])
    async def conversations(
        self, limit: int = Query(50, ge=1, le=mlops_api.CONVERSATIONS_LIMIT_MAX), offset: int = Query(0, ge=0, le=2**62),
    ):
        return await self._loop("conversations", limit, offset)

    @app.delete("/mlops/conversations", response_model=mlops_api.ClearConversationsResponse, dependencies=[Admin])
    async def clear_conversations(self, backup: bool = False):
        return await self._loop("clear_conversations", backup)

    @app.post("/mlops/finetune", response_model=mlops_api.FinetuneResponse, dependencies=[Admin])
    async def finetune(self, request: mlops_api.FinetuneRequest | None = None):
        request = request or mlops_api.FinetuneRequest()
        return await self._loop("finetune", request.force, request.backup_existing)

    @app.post("/mlops/settings", response_model=mlops_api.RuntimeSettings, dependencies=[Admin])
    async def update_settings(self, update: mlops_api.SettingsUpdate):
        return await self._loop("update_settings", update)

    @app.post("/mlops/rollback", response_model=mlops_api.AdapterChange, dependencies=[Admin])
    async def rollback(self, request: mlops_api.RollbackRequest):
        return await self._loop("rollback", request.version)

    @app.post("/mlops/promote", response_model=mlops_api.AdapterChange, dependencies=[Admin])
    async def promote(self, request: mlops_api.PromoteRequest):
        return await self._loop("promote", request.version)

    @app.post("/mlops/export", response_model=mlops_api.ExportResponse, dependencies=[Admin])
    async def export(self, request: mlops_api.ExportRequest | None = None):
        request = request or mlops_api.ExportRequest()
        return await self._loop("export", None, request.inline)

    @app.post("/mlops/cleanup", response_model=mlops_api.CleanupResponse, dependencies=[Admin])
    async def cleanup(self, request: mlops_api.CleanupRequest):
        return await self._loop("cleanup", request.keep_days)

    @app.get("/mlops/backups", response_model=mlops_api.BackupsResponse, dependencies=[Admin])
    async def backups(self):
        return await self._loop("backups")

    @app.post("/mlops/restore", response_model=mlops_api.RestoreResponse, dependencies=[Admin])
    async def restore(self, request: mlops_api.RestoreRequest):
        return await self._loop("restore", request.backup)
