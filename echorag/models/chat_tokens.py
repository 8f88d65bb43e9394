"""Chats as token ids with labels, and the loss on those labels: the numbers training,
the gate and the serving engines share.

A chat is rendered with the tokenizer's own chat template; its labels are ``IGNORE``
everywhere except on the last assistant reply (with its end-of-turn token), so a loss
measures the answer only. ``mean_label_loss`` is the gate's held-out loss: the mean
cross-entropy per label token, whatever model computes it (a transformers model here, the
vLLM engine from its prompt logprobs in ``echorag.models.engine``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads where a model does, not to encode a chat
    import torch

logger = logging.getLogger(__name__)

IGNORE = -100  # label value that cross-entropy skips (prompt tokens, padding)
Chat = list[dict[str, str]]  # chat messages: [{"role": ..., "content": ...}, ...]

# A template "supports" assistant masks when it marks replies with {% generation %}.
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def supports_assistant_mask(tokenizer) -> bool:
    return bool(tokenizer.chat_template and _GENERATION_TAG.search(tokenizer.chat_template))


def _render(tokenizer, messages: Chat, add_generation_prompt: bool = False) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=True)[
            "input_ids"
        ]
    )


def encode_chat(tokenizer, messages: Chat, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels for one chat: labels are ``-100`` everywhere except on the
    last assistant reply (with its end-of-turn token), so the loss teaches the answer
    only; earlier replies are remembered turns the answerer was served, not its output.

    Templates with ``{% generation %}`` markers give the mask directly (its last run of
    assistant tokens is the reply). Others (KANANA's) are rendered twice: the reply spans
    from the end of the prompt for it (``messages[:i]`` + generation prompt) to the end of
    ``messages[:i + 1]``.
    """
    if supports_assistant_mask(tokenizer):
        enc = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        end = max((i + 1 for i, m in enumerate(mask) if m), default=0)
        start = end
        while start > 0 and mask[start - 1]:
            start -= 1
    else:
        ids = _render(tokenizer, messages)
        replies = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        start = end = 0
        if replies:
            prompt = _render(tokenizer, messages[: replies[-1]], add_generation_prompt=True)
            through_reply = _render(tokenizer, messages[: replies[-1] + 1])
            if ids[: len(prompt)] != prompt or ids[: len(through_reply)] != through_reply:
                # Without prefix-stable rendering the span would be a guess: refuse, loudly.
                raise ValueError("the chat template does not render conversations prefix-stably")
            start, end = len(prompt), len(through_reply)
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": [t if start <= i < end else IGNORE for i, t in enumerate(ids)]}


def encode_all(tokenizer, chats: Sequence[Chat], max_length: int) -> list[dict[str, list[int]]]:
    encoded = [encode_chat(tokenizer, chat, max_length) for chat in chats]
    kept = [e for e in encoded if any(label != IGNORE for label in e["labels"])]
    if len(kept) < len(encoded):  # the prompt alone filled max_length: nothing to learn
        logger.warning("skipped %d of %d chats with no assistant tokens within max_length=%d",
                       len(encoded) - len(kept), len(encoded), max_length)
    return kept


def collate(batch: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and loss."""
    import torch

    width = max(len(e["input_ids"]) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def mean_label_loss(model: torch.nn.Module, examples: list[dict[str, list[int]]], pad_id: int,
                    batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy per label token (every token weighs the same, whatever its chat)."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]  # token t predicts token t + 1
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            ).item()
            count += int((targets != IGNORE).sum())
    return total / count
