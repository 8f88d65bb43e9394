"""Chat, health, statistics, short-term memory and document ingestion."""

# No ``from __future__ import annotations`` in route modules: FastAPI reads the route
# annotations at runtime, and Serve's class-based ingress cannot resolve postponed ones.

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Header, Query, Request, Security
from fastapi.responses import FileResponse, StreamingResponse

from deployments.auth import require_caller
from deployments.http_app import UI_DIR, Admin, app, user_message
from echorag.identity.access import Caller
from echorag.serving.schemas import (
    ChatRequest,
    ChatResponse,
    DocumentsRequest,
    DocumentsResponse,
    DoneEvent,
    ErrorEvent,
    ErrorResponse,
    HealthResponse,
    MemoryResponse,
    StatsResponse,
)

# What a user route may answer besides its result: no key (401), a session not theirs (404).
USER_ERRORS = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
SESSION_PARAM = Query(..., min_length=1, max_length=128, description="A session id this server issued to you.")
IDEMPOTENCY_KEY = Header(
    None, alias="Idempotency-Key", min_length=1, max_length=200,
    description="Any unique string per message: a retry with the same key in the same session_id "
    "(after a timeout or a dropped connection) answers again but stores the turn once, under the same turn_id.",
)


class ChatRoutes:
    @app.get("/", include_in_schema=False)
    async def index(self) -> FileResponse:
        return FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.post("/chat", response_model=ChatResponse, responses=USER_ERRORS | {429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def chat(
        self, request: ChatRequest, http: Request, caller: Caller = Security(require_caller),
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> ChatResponse:
        """Answer in the caller's session (``session_id``; omitted: a new private one)."""
        request, limit_key = await self.scoped(caller, request)
        self.admit(http, request, limit_key)
        pipeline = await self._ready()
        return await self.counters.answer(pipeline.chat(request, request_key=idempotency_key))

    @app.post("/chat/stream", response_class=StreamingResponse, responses=USER_ERRORS | {429: {"model": ErrorResponse}})
    async def chat_stream(
        self, request: ChatRequest, http: Request, caller: Caller = Security(require_caller),
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> StreamingResponse:
        """Server-sent events: ``sources``, then ``token`` pieces, then ``done`` (the /chat response)."""
        request, limit_key = await self.scoped(caller, request)
        self.admit(http, request, limit_key)
        pipeline = await self._ready()
        started = self.counters.start()

        async def events() -> AsyncIterator[str]:
            try:
                async for event in pipeline.chat_stream(request, request_key=idempotency_key):
                    if isinstance(event, DoneEvent):
                        self.counters.answered(started, event.response)
                    yield event.sse()
            except Exception as exc:
                self.counters.failed()
                yield ErrorEvent(error=user_message(exc)).sse()

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
            model=info.name,
            model_kind=info.kind,
            demo_model=info.demo,
            embedder=embedder.id,
            device=info.device,
            engine=info.engine,
            documents=counts["documents"],
            memory=counts["memory"],
            adapter_version=(await self.services.traffic()).version,
            uptime_s=time.time() - self.started,
            detail=detail,
        )

    @app.get("/stats", response_model=StatsResponse)
    async def stats(self) -> StatsResponse:
        counts = await self.retriever.counts.remote()
        return StatsResponse(
            requests=self.counters.requests,
            errors=self.counters.errors,
            avg_latency_s=self.counters.mean_latency_s,
            documents=counts["documents"],
            memory=counts["memory"],
            sessions=len(self.memory),
            uptime_s=time.time() - self.started,
        )

    @app.get("/memory", response_model=MemoryResponse, responses=USER_ERRORS)
    async def get_memory(self, session_id: str = SESSION_PARAM, caller: Caller = Security(require_caller)) -> MemoryResponse:
        """The short-term memory of a session the caller holds (404 for any other)."""
        session_id = await self.sessions.hold(caller, session_id)
        return MemoryResponse(
            session_id=session_id, turns=self.memory.get(session_id), max_turns=self.memory.max_turns
        )

    @app.delete("/memory", responses=USER_ERRORS)
    async def clear_memory(self, session_id: str = SESSION_PARAM, caller: Caller = Security(require_caller)) -> dict:
        """Forget a held session's short-term memory (its stored turns stay: DELETE /sessions/{id})."""
        session_id = await self.sessions.hold(caller, session_id)
        return {"session_id": session_id, "cleared": self.memory.clear(session_id)}

    @app.post("/documents", response_model=DocumentsResponse, dependencies=[Admin])
    async def add_documents(self, request: DocumentsRequest) -> DocumentsResponse:
        documents = [d.model_dump() for d in request.documents]
        return await self.retriever.add_documents.remote(documents)
