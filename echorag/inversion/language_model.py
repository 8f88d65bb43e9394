"""The causal LM a restorer uses to order recovered tokens and propose continuations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from echorag.retrieval.rotation import unwrap
from echorag.retrieval.vectors import Embedder


@dataclass
class LanguageModel:
    """A causal LM and its tokenizer (transformers), used to order and propose tokens."""

    model: Any
    tokenizer: Any

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "LanguageModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        return cls(model, tokenizer)


def default_lm(embedder: Embedder, device: str = "cpu") -> LanguageModel | None:
    """The causal LM over a kanana embedder's own weights (for ordering token bags); None for e5."""
    inner, _ = unwrap(embedder)
    model = getattr(inner, "model", None)
    if model is None:
        return None
    return LanguageModel.load(model.config._name_or_path, device)
