"""Generator deployment: the base LLM plus LoRA adapters, one per version, or the
extractive answerer where no language model loads (``models.resolve_answerer``).

Where a teacher answers, a second deployment of this class (``Student``) serves the
student's versions to the canary's share of sessions (echorag.serving.routing).

The adapter version is the Serve multiplexed model id (``base`` = no adapter):
requests for the same version go to replicas that already hold it. vLLM
(``echorag.models.engine``, where installed) batches every request continuously with its own
adapter; under transformers one batched ``generate`` call serves rows with different
adapters (peft mixed batch, ``@serve.batch``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ray import serve

from deployments import metrics
from echorag.answering.extractive import ExtractiveGenerator
from echorag.config import Settings
from echorag.learning.registry import AdapterRegistry
from echorag.models.engine import VLLMGenerator, local_generator
from echorag.models.generation import LocalGenerator, OpenAIGenerator
from echorag.models.resolution import resolve_answerer, resolve_student
from echorag.serving.services import adapter_arg, iterate_in_thread
from echorag.types import BASE, Analysis, Generation, ModelInfo

logger = logging.getLogger("ray.serve")
BATCH = 8  # rows per transformers generate call (static batches)


class LoadedAdapter:
    """What the multiplexing cache holds; Serve calls ``__del__`` when it evicts it."""

    def __init__(self, generator: LocalGenerator | None, version: str) -> None:
        self.generator, self.version = generator, version

    def __del__(self) -> None:
        if self.generator is not None and self.version in self.generator.adapters:
            self.generator.unload_adapter(self.version)


@serve.deployment(max_ongoing_requests=64)
class Generator:
    def __init__(self, settings: Settings, student: bool = False) -> None:
        """``student``: serve the local model the loop fine-tunes (``resolve_student``),
        deployed as ``Student`` beside a teacher that answers the other sessions."""
        self.settings = s = settings
        metrics.set_enabled(s.monitoring_export_metrics)
        self.registry = AdapterRegistry(s.adapters_root)
        if student:
            self.resolved = resolve_student(s)
            self.model = local_generator(self.resolved, s, ray_metrics=True)
        elif s.generator_backend == "openai":
            self.model = OpenAIGenerator(api_key=s.openai_api_key, base_url=s.openai_base_url, model=s.openai_model)
            self.resolved = None
        elif (resolved := resolve_answerer(s)).kind == "extractive":
            self.model = ExtractiveGenerator.from_settings(s)
            self.resolved = None
            logger.info("EchoRAG answers extractively: quotes of the retrieved documents, no language model.")
        else:
            self.resolved = resolved
            self.model = local_generator(resolved, s, ray_metrics=True)
            if resolved.is_demo:
                logger.warning("EchoRAG is serving the tiny offline demo model, not KANANA.")

    def info(self) -> ModelInfo:
        kind = getattr(self.model, "kind", "openai")
        return ModelInfo(
            name=self.model.name,
            kind=kind,
            demo=kind == "tiny",
            device=str(getattr(self.model, "device", "cpu" if kind == "extractive" else "remote")),
            engine="vllm" if isinstance(self.model, VLLMGenerator)
            else "transformers" if isinstance(self.model, LocalGenerator) else None,
        )

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_adapter(self, version: str) -> LoadedAdapter:
        # Adapters apply to a local language model only (not to openai or extractive).
        if version == BASE or self.resolved is None:
            return LoadedAdapter(None, BASE)
        path = self.registry.path(version)  # a missing or corrupted version is never served
        await asyncio.to_thread(self.model.load_adapter, version, path)
        return LoadedAdapter(self.model, version)

    async def _adapter_name(self) -> str | None:
        adapter = await self.get_adapter(serve.get_multiplexed_model_id() or BASE)
        return adapter_arg(adapter.version)

    async def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        return await asyncio.to_thread(self.model.usage, messages, text)

    async def warmup(self) -> str:
        """Load the requested version now, so its first real request pays nothing."""
        return (await self.get_adapter(serve.get_multiplexed_model_id() or BASE)).version

    async def generate(self, messages: list[dict], analysis: Analysis) -> Generation:
        adapter, s = await self._adapter_name(), self.settings
        if not isinstance(self.model, VLLMGenerator):
            return await self._generate_batch(messages, analysis, adapter)
        # The engine batches continuously: each request joins the running batch on its own.
        generation = await self.model.agenerate(messages, adapter, s.max_new_tokens, s.temperature)
        metrics.record_tokens(generation.completion_tokens, adapter or BASE)
        return generation

    async def answer_pool(self, conversations: list[list[dict]], max_new_tokens: int) -> list[Generation]:
        """Greedy answers of the requested version to the gate's evaluation pool: what it
        would serve, from the engine that serves it."""
        adapter = await self._adapter_name()
        if isinstance(self.model, VLLMGenerator):
            return list(await asyncio.gather(*(self.model.agenerate(c, adapter, max_new_tokens, 0.0)
                                               for c in conversations)))
        rows: list[Generation] = []
        for start in range(0, len(conversations), BATCH):
            batch = conversations[start : start + BATCH]
            rows += await asyncio.to_thread(self.model.generate, batch, [adapter] * len(batch), max_new_tokens, 0.0)
        return rows

    async def pool_loss(self, chats: list[list[dict]], max_length: int) -> float:
        """Mean loss per answer token of the requested version on the gate's evaluation
        pool (chats that end with their answer), from the model that serves it."""
        adapter = await self._adapter_name()
        return await asyncio.to_thread(self.model.label_loss, chats, adapter, max_length)

    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=0.002)
    async def _generate_batch(
        self, conversations: list[list[dict]], analyses: list[Analysis], adapters: list[str | None]
    ) -> list[Generation]:
        s = self.settings
        generations = await asyncio.to_thread(
            self.model.generate, conversations, adapters, s.max_new_tokens, s.temperature, analyses
        )
        for generation, adapter in zip(generations, adapters):
            metrics.record_tokens(generation.completion_tokens, adapter or BASE)
        return generations

    async def stream(self, messages: list[dict], analysis: Analysis) -> AsyncIterator[str]:
        adapter, s = await self._adapter_name(), self.settings
        pieces = []
        if isinstance(self.model, VLLMGenerator):
            source = self.model.astream(messages, adapter, s.max_new_tokens, s.temperature)
        else:
            source = iterate_in_thread(self.model.stream, messages, adapter, s.max_new_tokens, s.temperature, analysis)
        async for piece in source:
            pieces.append(piece)
            yield piece
        tokenizer = getattr(self.model, "tokenizer", None)  # pieces are text, not tokens
        if tokenizer is not None:
            tokens = len(tokenizer("".join(pieces), add_special_tokens=False).input_ids)
            metrics.record_tokens(tokens, adapter or BASE)
