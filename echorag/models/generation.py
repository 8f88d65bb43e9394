"""Text generation: a local transformers model with several LoRA adapters, or an OpenAI API.

Both backends take chat messages (see ``echorag.answering.prompts``) and share one interface:
``generate`` for a batch of conversations, ``stream`` for one conversation.

``LocalGenerator`` serves a whole batch with ONE ``model.generate`` call even when its
rows use different adapter versions: peft's mixed-batch inference routes every row
through its own LoRA weights (``adapter_names=["v2", "v3", "__base__"]``), and each row
comes out exactly as it would alone. That is what lets ``@serve.batch`` and several live
adapter versions (active, canary, rollback) go together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from echorag.models.chat_tokens import encode_all, mean_label_loss
from echorag.models.devices import pick_device, pick_dtype
from echorag.models.resolution import ResolvedModel, resolve_model
from echorag.types import BASE, Generation

logger = logging.getLogger(__name__)

_PEFT_BASE = "__base__"  # peft's name for the same thing in mixed batches


class Generator(Protocol):
    """What the pipeline and the Serve deployment need from a backend."""

    name: str
    kind: str

    def generate(
        self,
        conversations: list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analyses: list | None = None,  # the extractive backend's input; a model reads the prompt
    ) -> list[Generation]: ...

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analysis=None,
    ) -> Iterator[str]: ...

    def usage(self, messages: list[dict], text: str) -> tuple[int, int]: ...


class LocalGenerator:
    """A causal LM from a local directory or the hub, with LoRA adapters loaded by name."""

    def __init__(self, model: ResolvedModel | str, device: str = "auto", dtype: str = "auto") -> None:
        resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
        self.name = resolved.name
        self.kind = resolved.kind
        self.is_demo = resolved.is_demo
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)

        self.tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        self.tokenizer.padding_side = "left"  # new tokens are appended on the right
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=self.dtype)
        self.model.to(self.device).eval()

        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self._eos_ids = set(eos) if isinstance(eos, list) else {eos}
        self._adapters: dict[str, str] = {}
        # peft attaches adapter routing hooks per call; concurrent calls would mix them up.
        self._lock = threading.Lock()
        logger.info("Loaded %s (%s) on %s as %s", self.name, self.kind, self.device, self.dtype)

    # -- adapters ---------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under ``name``; loading a loaded name replaces it."""
        if name in (BASE, _PEFT_BASE):
            raise ValueError(f"{name!r} is reserved for the base model")
        with self._lock:
            if name in self._adapters:
                self._remove(name)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:  # the first adapter wraps the base model
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self.model.eval()
            self._adapters[name] = str(path)
        logger.info("Loaded adapter %s from %s", name, path)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise KeyError(f"adapter {name!r} is not loaded; loaded: {self.adapters or 'none'}")
            self._remove(name)
        logger.info("Unloaded adapter %s", name)

    def _remove(self, name: str) -> None:
        others = [other for other in self._adapters if other != name]
        if others:  # rows choose adapters per call, but peft wants an active one that stays
            self.model.set_adapter(others[0])
            self.model.delete_adapter(name)
        else:  # the last one: back to the plain base model
            self.model = self.model.unload()
        del self._adapters[name]

    def _peft_name(self, adapter: str | None) -> str:
        """peft's name for ``adapter``; None and "base" mean the base model."""
        if adapter in (None, BASE):
            return _PEFT_BASE
        if adapter not in self._adapters:
            raise KeyError(f"unknown adapter {adapter!r}; loaded: {self.adapters or 'none'}")
        return adapter

    def label_loss(self, chats: list[list[dict]], adapter: str | None = None, max_length: int = 1024,
                   batch_size: int = 8) -> float:
        """Mean cross-entropy per answer token of ``chats`` (each ending with its answer)
        under ``adapter``: the gate's held-out loss (``echorag.models.chat_tokens``)."""
        examples = encode_all(self.tokenizer, chats, max_length)
        if not examples:
            raise ValueError("no chat has answer tokens within max_length")
        name = self._peft_name(adapter)
        with self._lock:
            if not isinstance(self.model, PeftModel):
                context = nullcontext()
            elif name == _PEFT_BASE:
                context = self.model.disable_adapter()
            else:
                self.model.set_adapter(name)
                context = nullcontext()
            with context:
                return mean_label_loss(self.model, examples, self.tokenizer.pad_token_id, batch_size, self.device)

    # -- generation -------------------------------------------------------------------

    def count_tokens(self, messages: list[dict]) -> int:
        """Prompt length of one conversation, as ``generate`` would feed it."""
        return len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])

    def generate(
        self,
        conversations: list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analyses: list | None = None,  # the extractive backend's input; a model reads the prompt
    ) -> list[Generation]:
        """One ``model.generate`` call for the batch; row i uses ``adapters[i]`` (None: base)."""
        if not conversations:
            return []
        adapters = adapters if adapters is not None else [None] * len(conversations)
        if len(adapters) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(adapters)} adapters")
        inputs = self._encode(conversations)
        with self._lock, torch.inference_mode():
            options = self._options(adapters, max_new_tokens, temperature)
            output = self.model.generate(**inputs, **options)

        prompt_width = inputs["input_ids"].shape[1]
        results = []
        for row, new_tokens in enumerate(output[:, prompt_width:].tolist()):
            completion, stopped = self._until_eos(new_tokens)
            results.append(
                Generation(
                    text=self.tokenizer.decode(completion, skip_special_tokens=True),
                    prompt_tokens=int(inputs["attention_mask"][row].sum()),
                    completion_tokens=len(completion) + stopped,  # the end-of-turn token counts
                )
            )
        return results

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analysis=None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated; joined, they equal ``generate``'s text."""
        self._peft_name(adapter)  # fail at the call, not at the first ``next()``
        inputs = self._encode([messages])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    options = self._options([adapter], max_new_tokens, temperature)
                    stopping = StoppingCriteriaList([_StopWhenSet(stop)])
                    self.model.generate(**inputs, **options, streamer=streamer, stopping_criteria=stopping)
            except BaseException as exc:  # re-raised in the consumer below
                failure.append(exc)
                streamer.end()

        def pieces() -> Iterator[str]:
            thread = threading.Thread(target=run, name="echorag-stream", daemon=True)
            thread.start()
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            finally:
                stop.set()  # a consumer that leaves early (client gone) ends the generation too
                thread.join()
            if failure:
                raise failure[0]

        return pieces()

    def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        """(prompt, completion) token counts of a streamed answer."""
        return self.count_tokens(messages), len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, conversations: list[list[dict]]):
        return self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        ).to(self.device)

    def _options(self, adapters: list[str | None], max_new_tokens: int, temperature: float) -> dict:
        """``generate`` keyword arguments; call under the lock, as adapters may come and go."""
        options: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
        else:  # greedy; also silence sampling defaults a hub generation_config may carry
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        names = [self._peft_name(adapter) for adapter in adapters]
        if isinstance(self.model, PeftModel):  # one generate call, each row its own adapter
            options["adapter_names"] = names
        return options

    def _until_eos(self, tokens: list[int]) -> tuple[list[int], bool]:
        """The tokens before the first end-of-turn (the rest is padding), and whether it came."""
        for i, token in enumerate(tokens):
            if token in self._eos_ids:
                return tokens[:i], True
        return tokens, False


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class OpenAIGenerator:
    """An OpenAI-compatible chat completions API (the original project used gpt-4o-mini).

    Adapters do not exist remotely and are ignored.
    """

    kind = "openai"
    is_demo = False

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        *,
        client=None,
        max_concurrency: int = 8,
    ) -> None:
        from openai import OpenAI

        self.name = model
        self.client = client or OpenAI(api_key=api_key, base_url=base_url)
        self.max_concurrency = max_concurrency

    @property
    def adapters(self) -> list[str]:
        return []

    def generate(
        self,
        conversations: list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analyses: list | None = None,  # the extractive backend's input; a model reads the prompt
    ) -> list[Generation]:
        if not conversations:
            return []
        # Remote calls wait on the network: send the batch's rows concurrently.
        with ThreadPoolExecutor(min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(lambda m: self._complete(m, max_new_tokens, temperature), conversations))

    def _complete(self, messages: list[dict], max_new_tokens: int, temperature: float) -> Generation:
        response = self.client.chat.completions.create(
            model=self.name, messages=messages, max_tokens=max_new_tokens, temperature=temperature
        )
        usage = response.usage
        return Generation(
            text=response.choices[0].message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analysis=None,
    ) -> Iterator[str]:
        chunks = self.client.chat.completions.create(
            model=self.name,
            messages=messages,
            max_tokens=max_new_tokens,
            temperature=temperature,
            stream=True,
        )
        for chunk in chunks:
            if chunk.choices and (piece := chunk.choices[0].delta.content):
                yield piece

    def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        return 0, 0  # the remote tokenizer is not known here
