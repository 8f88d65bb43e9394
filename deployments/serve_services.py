"""``ChatServices`` over deployment handles: how the ingress reaches the embedder,
retriever, generator and collector, with retries where a call has no side effect yet.

A replica that dies mid-request is replaced by Serve; embedding, retrieval and
generation before its first token are safe to send again. Generator handles are
cached per adapter version (one ``options(multiplexed_model_id=...)`` handle each),
as Ray Serve LLM's ingress does, instead of a new handle per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.http_app import STORE_DOWN, ServiceUnavailable
from echorag.config import Settings
from echorag.learning.registry import AdapterRegistry
from echorag.serving.routing import Traffic
from echorag.types import Analysis, ChatContext, Generation, MlopsInfo, Turn

log = logging.getLogger(__name__)

REPLICA_GONE = (RayActorError, ActorUnavailableError)
RETRIES = 3
LONG_POLL_S = 30.0  # how long the collector may hold a traffic poll open


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


class TrafficFeed:
    """The active version and the student's share, in the ingress replica's memory.

    A background task long-polls the collector (``traffic_after``), which answers as soon
    as the registry's pointer moves, so a chat reads no storage. Until the first answer,
    and while the collector is away (restarting), each request reads the pointer itself,
    as every replica could: the pointer is the truth, the feed only spares the reads.
    """

    def __init__(self, collector, read: Callable[[], Traffic]) -> None:
        self.collector, self._read = collector, read
        self._known: Traffic | None = None
        self._follower: asyncio.Task | None = None

    async def current(self) -> Traffic:
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(self._follow())
        if self._known is None:
            return await asyncio.to_thread(self._read)
        return self._known

    def forget(self) -> None:
        """This replica just changed the traffic: read it again until the feed has it."""
        self._known = None

    async def _follow(self) -> None:
        while True:
            try:
                self._known = await self.collector.traffic_after.remote(self._known, LONG_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the collector restarts: read the pointer meanwhile
                log.warning("traffic feed interrupted (%s); reading the pointer per request", exc)
                self._known = None
                await asyncio.sleep(1.0)


class ServeServices:
    def __init__(self, embedder: DeploymentHandle, retriever: DeploymentHandle, generator: DeploymentHandle,
                 collector, registry: AdapterRegistry, settings: Settings,
                 student: DeploymentHandle | None = None) -> None:
        """``student``: the separate student deployment where a teacher answers (echorag.serving.routing)."""
        self.embedder, self.retriever, self.generator, self.student = embedder, retriever, generator, student
        self.collector, self.registry, self.settings = collector, registry, settings
        self._versions: dict[tuple[str, bool, bool], DeploymentHandle] = {}
        self.traffic_feed = TrafficFeed(collector, lambda: registry.traffic(settings.canary_fraction))

    def generator_for(self, adapter: str, stream: bool = False, student: bool = False) -> DeploymentHandle:
        """The generator (or student) handle that routes to replicas holding ``adapter``."""
        key = (adapter, stream, student)
        if key not in self._versions:
            handle = self.student if student else self.generator
            self._versions[key] = handle.options(multiplexed_model_id=adapter, stream=stream)
        return self._versions[key]

    async def embed_query(self, text: str) -> np.ndarray:
        return await retrying(self.embedder.embed_query.remote, text)

    async def context(self, query: str, vector: np.ndarray, user_id: str) -> ChatContext:
        try:
            return await retrying(self.retriever.answer_context.remote, query, vector, user_id)
        except REPLICA_GONE:
            raise
        except Exception as exc:
            # The vector store (a Chroma server) going away is the usual cause; say so in Korean.
            if not await self.store_ok():
                raise ServiceUnavailable(STORE_DOWN) from exc
            raise

    async def store_ok(self) -> bool:
        try:
            return await self.retriever.ping.remote()
        except Exception:
            return False

    async def generate(self, messages: list[dict], adapter: str, analysis: Analysis, student: bool = False) -> Generation:
        return await retrying(self.generator_for(adapter, student=student).generate.remote, messages, analysis)

    async def stream(self, messages: list[dict], adapter: str, analysis: Analysis, student: bool = False) -> AsyncIterator[str]:
        for attempt in range(RETRIES):
            started = False
            try:
                async for piece in self.generator_for(adapter, True, student).stream.remote(messages, analysis):
                    started = True
                    yield piece
                return
            except REPLICA_GONE:
                if started or attempt == RETRIES - 1:  # the user already saw part of an answer
                    raise
                await backoff(attempt)

    async def usage(self, messages: list[dict], text: str, student: bool = False) -> tuple[int, int]:
        return await retrying((self.student if student else self.generator).usage.remote, messages, text)

    async def record(self, turn: Turn) -> MlopsInfo:
        # Ray retries this call across a collector restart; storing a turn id twice is a no-op.
        return await self.collector.record.remote(turn)

    async def remember(self, turn: Turn, question_vector: np.ndarray) -> None:
        await retrying(self.retriever.remember.remote, turn, question_vector)

    async def traffic(self) -> Traffic:
        return await self.traffic_feed.current()
