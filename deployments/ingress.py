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

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from echorag.config import load_settings
from echorag.generation import BASE, Generation
from echorag.memory import SessionMemory
from echorag.pipeline import ChatPipeline, Turn
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


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return JSONResponse(
        status_code=422, content={"error": f"invalid request: {where}: {first['msg']}", "detail": errors}
    )


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"error": exc.detail}, headers=exc.headers)


class ServeServices:
    """``ChatServices`` over deployment handles."""

    def __init__(self, embedder: DeploymentHandle, retriever: DeploymentHandle, generator: DeploymentHandle) -> None:
        self.embedder, self.retriever, self.generator = embedder, retriever, generator

    async def embed_query(self, text: str) -> np.ndarray:
        return await self.embedder.embed_query.remote(text)

    async def search(self, query: str, vector: np.ndarray, user_id: str) -> list[SearchResult]:
        return await self.retriever.chat_context.remote(query, vector, user_id)

    async def generate(self, messages: list[dict], adapter: str) -> Generation:
        return await self.generator.options(multiplexed_model_id=adapter).generate.remote(messages)

    async def stream(self, messages: list[dict], adapter: str) -> AsyncIterator[str]:
        pieces = self.generator.options(multiplexed_model_id=adapter, stream=True).stream.remote(messages)
        async for piece in pieces:
            yield piece

    async def record(self, turn: Turn) -> MlopsInfo:
        return MlopsInfo(current_version=turn.adapter_version)

    async def remember(self, turn: Turn) -> None:
        await self.retriever.remember.remote(turn.id, turn.memory_text(), turn.memory_metadata())

    async def active_version(self) -> str:
        return BASE


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
        self.services = ServeServices(embedder, retriever, generator)
        self.memory = SessionMemory(self.settings.memory_turns)
        self.started = time.time()
        self.requests = self.errors = 0
        self.latency_total = 0.0
        self._pipeline: ChatPipeline | None = None
        self._model_info: dict | None = None

    async def _ready(self) -> ChatPipeline:
        if self._pipeline is None:
            self._model_info = await self.generator.info.remote()
            self._pipeline = ChatPipeline(self.services, self.memory, self._model_info["name"])
        return self._pipeline

    def _check_length(self, request: ChatRequest) -> None:
        limit = self.settings.max_message_chars
        if len(request.message) > limit:
            raise HTTPException(413, f"message is {len(request.message)} characters; the limit is {limit}")

    def _check_version(self, request: ChatRequest) -> None:
        version = request.adapter_version
        if version and version != BASE and not (self.settings.adapters_dir / version / "adapter_config.json").is_file():
            raise HTTPException(404, f"adapter version {version!r} does not exist")

    @app.post("/chat", response_model=ChatResponse)
    async def chat(self, request: ChatRequest) -> ChatResponse:
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
        return response

    @app.post("/chat/stream", response_class=StreamingResponse)
    async def chat_stream(self, request: ChatRequest) -> StreamingResponse:
        """Server-sent events: ``sources``, then ``token`` pieces, then ``done`` (the /chat response)."""
        self._check_length(request)
        self._check_version(request)
        pipeline = await self._ready()
        self.requests += 1

        async def events() -> AsyncIterator[str]:
            try:
                async for event in pipeline.chat_stream(request):
                    yield f"event: {event['event']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
            except Exception:
                self.errors += 1
                error = {"event": "error", "error": "답변을 생성하지 못했습니다. 잠시 후 다시 시도해 주세요."}
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
        embedder = await self.embedder.info.remote()
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

    @app.post("/documents", response_model=DocumentsResponse)
    async def add_documents(self, request: DocumentsRequest) -> DocumentsResponse:
        documents = [d.model_dump() for d in request.documents]
        return DocumentsResponse(**await self.retriever.add_documents.remote(documents))
