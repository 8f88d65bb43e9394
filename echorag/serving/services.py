"""In-process ``ChatServices``: the whole pipeline in one Python process.

Used by benchmarks (the baseline the Serve application is compared with), by
tests that need no cluster, and by offline evaluation. Blocking model calls run
in threads so the event loop stays free, as they do inside Serve replicas.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np

from echorag.config import Settings
from echorag.retrieval.hybrid import Retriever
from echorag.serving.routing import Traffic
from echorag.types import BASE, Analysis, ChatContext, DocumentsResponse, Generation, MlopsInfo, Turn


def adapter_arg(version: str) -> str | None:
    """The generator's name for a version: ``None`` is the bare base model."""
    return None if version in (BASE, "", None) else version


class LocalServices:
    def __init__(self, settings: Settings, embedder, retriever: Retriever, generator, loop=None,
                 student=None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.retriever = retriever
        self.generator = generator
        self.student = student  # the separate student generator where a teacher answers
        self.loop = loop  # an echorag.learning.LearningLoop, or None: nothing is collected

    def _generator(self, student: bool):
        return self.student if student else self.generator

    async def embed_query(self, text: str) -> np.ndarray:
        return (await asyncio.to_thread(self.embedder.embed_queries, [text]))[0]

    async def context(self, query: str, vector: np.ndarray, user_id: str) -> ChatContext:
        return await asyncio.to_thread(self.retriever.answer_context, query, vector, user_id, self.settings)

    async def generate(self, messages: list[dict], adapter: str, analysis: Analysis, student: bool = False) -> Generation:
        s = self.settings
        out = await asyncio.to_thread(
            self._generator(student).generate, [messages], [adapter_arg(adapter)], s.max_new_tokens, s.temperature,
            [analysis],
        )
        return out[0]

    async def stream(self, messages: list[dict], adapter: str, analysis: Analysis, student: bool = False) -> AsyncIterator[str]:
        s = self.settings
        async for piece in iterate_in_thread(
            self._generator(student).stream, messages, adapter_arg(adapter), s.max_new_tokens, s.temperature, analysis
        ):
            yield piece

    async def usage(self, messages: list[dict], text: str, student: bool = False) -> tuple[int, int]:
        return await asyncio.to_thread(self._generator(student).usage, messages, text)

    async def record(self, turn: Turn) -> MlopsInfo:
        if self.loop is None:
            return MlopsInfo(current_version=turn.adapter_version)
        return await asyncio.to_thread(self.loop.record, turn)

    async def remember(self, turn: Turn, question_vector: np.ndarray) -> None:
        await asyncio.to_thread(self.retriever.remember_turn, turn, question_vector)

    async def traffic(self) -> Traffic:
        if self.loop is None:
            return Traffic(BASE, 0.0)
        return self.loop.traffic()

    def ingest(self, documents: list[dict]) -> DocumentsResponse:
        s = self.settings
        return self.retriever.ingest(documents, self.embedder.embed_passages, s.chunk_size, s.chunk_overlap)


async def iterate_in_thread(blocking_iterator_fn, *args) -> AsyncIterator:
    """Drive a blocking iterator in a worker thread and yield its items on the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def produce() -> None:
        try:
            for item in blocking_iterator_fn(*args):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # surfaced to the consumer below
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := await queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
