"""The ``/chat`` request path, independent of where its parts run.

``ChatPipeline`` orchestrates: session memory → query embedding → retrieval
(documents + remembered turns) → evidence gate → prompt → generation → collection,
then the turn is indexed into long-term memory after the answer has gone out. When
no retrieved sentence supports an answer (``echorag.answering.evidence``) the answer is
``NO_ANSWER`` and no backend is called.
The parts are reached through ``ChatServices``: in the Ray Serve application
they are deployment handles (deployments/ingress.py), in-process they are plain
objects (``LocalServices``), so both paths run exactly this code.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from echorag.answering import small_talk
from echorag.answering.prompts import NO_ANSWER, build_messages
from echorag.serving.memory import SessionMemory
from echorag.serving.routing import Answerer, Route, Router, Traffic
from echorag.serving.schemas import (
    ChatEvent,
    ChatRequest,
    ChatResponse,
    DoneEvent,
    MlopsInfo,
    SearchResult,
    SourcesEvent,
    Timing,
    TokenEvent,
    TokenUsage,
)
from echorag.types import Analysis, ChatContext, Generation, MemoryTurn, Turn

logger = logging.getLogger(__name__)


def turn_id(session_id: str | None, request_key: str | None) -> str:
    """A new turn's id: random, or, for a client's retry key, the same in the same session
    (the collector stores a turn id once, so a retried request is never two turns)."""
    if request_key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{session_id}\n{request_key}".encode()).hexdigest()[:32]


class ChatServices(Protocol):
    async def embed_query(self, text: str) -> np.ndarray: ...

    async def context(self, query: str, vector: np.ndarray, user_id: str) -> ChatContext: ...

    async def generate(self, messages: list[dict], adapter: str, analysis: Analysis, student: bool = False) -> Generation: ...

    def stream(self, messages: list[dict], adapter: str, analysis: Analysis, student: bool = False) -> AsyncIterator[str]: ...

    async def usage(self, messages: list[dict], text: str, student: bool = False) -> tuple[int, int]: ...

    async def record(self, turn: Turn) -> MlopsInfo: ...

    async def remember(self, turn: Turn, question_vector: np.ndarray) -> None: ...

    async def traffic(self) -> Traffic: ...


@dataclass
class _Prepared:
    messages: list[MemoryTurn]
    results: list[SearchResult]
    memory: list[MemoryTurn]
    route: Route  # who answers, with which adapter version
    vector: np.ndarray  # the question's: it retrieved, and it files the turn in memory
    timing: Timing
    started: float
    remember: bool  # False when the caller brought its own history (OpenAI-style)
    analysis: Analysis  # every retrieved sentence scored; abstain: NO_ANSWER, no generation
    turn_id: str  # the turn this answer will be stored as


class ChatPipeline:
    def __init__(self, services: ChatServices, memory: SessionMemory, answerer: Answerer,
                 student: Answerer | None = None) -> None:
        """``answerer``: the generator (``Generator.info()``); ``student``: the separate
        student deployment where a teacher answers (echorag.serving.routing)."""
        self.services = services
        self.memory = memory
        self.router = Router(answerer, student)
        self._indexing: dict[str, set[asyncio.Task]] = {}  # user id -> turns being remembered

    # -- long-term memory, off the answer's path

    def _remember_later(self, turn: Turn, question_vector: np.ndarray) -> None:
        """Indexing the turn into the ``memory`` collection is a store write the user
        need not wait for."""
        task = asyncio.create_task(self.services.remember(turn, question_vector))
        pending = self._indexing.setdefault(turn.user_id, set())
        pending.add(task)

        def done(task: asyncio.Task) -> None:
            pending.discard(task)
            if not pending:  # a later turn of this user starts a new set
                del self._indexing[turn.user_id]
            if not task.cancelled() and task.exception() is not None:
                logger.error("turn %s not remembered: %r", turn.id, task.exception())

        task.add_done_callback(done)

    async def remembered(self, user_id: str | None = None, timeout: float = 10.0) -> None:
        """Wait until the turns of ``user_id`` (everyone's when None) are in memory: a
        user's next question waits here, so a follow-up finds the turn before it. After
        ``timeout`` the question goes on without it (a slow store must not stall chat)."""
        pending = {t for uid, tasks in self._indexing.items() if user_id in (None, uid) for t in tasks}
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _prepare(
        self, request: ChatRequest, history: list[MemoryTurn] | None, request_key: str | None
    ) -> _Prepared:
        timing, started = Timing(), time.perf_counter()
        clock = started

        def lap() -> float:
            nonlocal clock
            now = time.perf_counter()
            elapsed, clock = now - clock, now
            return elapsed

        memory = self.memory.get(request.session_id) if history is None else history
        route = self.router.route(request.session_id, await self.services.traffic(), request.adapter_version)
        await self.remembered(request.user_id)  # read your own writes: usually long done
        timing.memory = lap()
        query = small_talk.without_greeting(request.message)  # "안녕하세요, …": the question
        vector = await self.services.embed_query(query)
        timing.embedding = lap()
        context = await self.services.context(query, vector, request.user_id)
        timing.retrieval = lap()
        messages = build_messages(request.message, context.results, memory)
        return _Prepared(messages, context.results, memory, route, vector, timing, started, history is None,
                         context.analysis, turn_id(request.session_id, request_key))

    async def _finish(
        self, request: ChatRequest, prepared: _Prepared, answer: str, usage: TokenUsage
    ) -> ChatResponse:
        timing, route = prepared.timing, prepared.route
        turn = Turn(
            id=prepared.turn_id,
            session_id=request.session_id,
            user_id=request.user_id,
            user=request.message,
            assistant=answer,
            adapter_version=route.adapter,
            model=route.answerer.name,
            sources=[r.id for r in prepared.results if r.collection == "documents"],
            prompt=prepared.messages,  # exactly what the answerer was (or would have been) served
            backend=route.answerer.kind,
            label=route.label,
            latency_ms=(time.perf_counter() - prepared.started) * 1000,
            selection=prepared.analysis.selection,
        )
        if prepared.remember:
            self.memory.add(request.session_id, request.message, answer)
        clock = time.perf_counter()
        mlops_info = await self.services.record(turn)  # collected means committed: awaited
        if turn.selection is not None:
            mlops_info.selector_version = turn.selection.selector
        timing.collection = time.perf_counter() - clock
        self._remember_later(turn, prepared.vector)
        timing.total = time.perf_counter() - prepared.started
        return ChatResponse(
            response=answer,
            search_results=prepared.results,
            memory_content=prepared.memory,
            timing=timing,
            mlops_info=mlops_info,
            model=route.answerer.name,
            adapter_version=route.adapter,
            session_id=request.session_id,
            turn_id=turn.id,
            usage=usage,
            abstained=prepared.analysis.abstain or answer == NO_ANSWER,  # the selector, or the backend itself
        )

    async def _small_talk(self, request: ChatRequest, history: list[MemoryTurn] | None) -> ChatResponse | None:
        """The reply to a greeting, thanks or "뭐 할 수 있어?" (echorag.answering.small_talk): no
        retrieval, no model, not collected; None for a real question."""
        reply = small_talk.reply(request.message)
        if reply is None:
            return None
        started = time.perf_counter()
        memory = self.memory.get(request.session_id) if history is None else history
        route = self.router.route(request.session_id, await self.services.traffic(), request.adapter_version)
        if history is None:
            self.memory.add(request.session_id, request.message, reply)
        return ChatResponse(
            response=reply, search_results=[], memory_content=memory,
            timing=Timing(total=time.perf_counter() - started), mlops_info=MlopsInfo(current_version=route.adapter),
            model=route.answerer.name, adapter_version=route.adapter, session_id=request.session_id,
        )

    async def chat(
        self, request: ChatRequest, history: list[MemoryTurn] | None = None, request_key: str | None = None
    ) -> ChatResponse:
        """Answer one message. ``history`` (earlier exchanges) replaces the
        session's memory when the caller keeps the conversation itself. A ``request_key``
        (the client's Idempotency-Key) names the turn: a retry in the same session stores it once."""
        if (polite := await self._small_talk(request, history)) is not None:
            return polite
        prepared = await self._prepare(request, history, request_key)
        if prepared.analysis.abstain:
            return await self._finish(request, prepared, NO_ANSWER, TokenUsage())
        clock = time.perf_counter()
        route = prepared.route
        generation = await self.services.generate(prepared.messages, route.adapter, prepared.analysis, route.student)
        prepared.timing.generation = time.perf_counter() - clock
        usage = TokenUsage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens)
        return await self._finish(request, prepared, generation.text.strip(), usage)

    async def chat_stream(
        self, request: ChatRequest, history: list[MemoryTurn] | None = None, request_key: str | None = None
    ) -> AsyncIterator[ChatEvent]:
        """Events: ``sources`` first, then ``token`` pieces, then ``done`` with the full response."""
        if (polite := await self._small_talk(request, history)) is not None:
            yield SourcesEvent(search_results=[], adapter_version=polite.adapter_version, model=polite.model)
            yield TokenEvent(text=polite.response)
            yield DoneEvent(response=polite)
            return
        prepared = await self._prepare(request, history, request_key)
        route = prepared.route
        yield SourcesEvent(search_results=prepared.results, adapter_version=route.adapter, model=route.answerer.name)
        if prepared.analysis.abstain:
            yield TokenEvent(text=NO_ANSWER)
            yield DoneEvent(response=await self._finish(request, prepared, NO_ANSWER, TokenUsage()))
            return
        clock, pieces = time.perf_counter(), []
        async for piece in self.services.stream(prepared.messages, route.adapter, prepared.analysis, route.student):
            pieces.append(piece)
            yield TokenEvent(text=piece)
        prepared.timing.generation = time.perf_counter() - clock
        answer = "".join(pieces).strip()
        prompt_tokens, completion_tokens = await self.services.usage(prepared.messages, answer, route.student)
        usage = TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        response = await self._finish(request, prepared, answer, usage)
        yield DoneEvent(response=response)
