"""EchoRAG's tiny offline Korean model, built locally in seconds without network.

When KANANA is neither cached nor reachable, the service still runs end to end on a
tiny Llama built here: a Korean byte-level BPE tokenizer, a KANANA-like chat template
and a short deterministic warm-up. Its answers are Korean-looking but meaningless, so
every surface labels it a demo. ``echorag.models.resolution`` decides when to use (and build) it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from echorag.models.tiny_corpus import corpus

logger = logging.getLogger(__name__)

# The model the tiny one stands in for: its chat format is imitated, its card points to it.
KANANA_ID = "kakaocorp/kanana-1.5-2.1b-instruct-2505"
TINY_NAME = "echorag-tiny-ko-demo"
TINY_VERSION = 2  # bump when the recipe changes: cached builds are then rebuilt
TINY_MARKER = "echorag_tiny.json"


def tiny_model_dir(models_dir: Path) -> Path:
    return Path(models_dir) / "tiny-ko"


# Llama-3 style, as KANANA 1.5 uses. `{% generation %}` marks the assistant reply
# (and its end-of-turn token) for `return_assistant_tokens_mask=True`.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, "<|start_header_id|>", "<|end_header_id|>", EOT]

# Model and warm-up recipe: small enough to build in seconds on 2 CPU cores.
TINY_VOCAB = 3000
TINY_CONFIG = dict(
    hidden_size=96,
    intermediate_size=288,
    num_hidden_layers=2,
    num_attention_heads=3,  # head_dim 32: the smallest vLLM's CPU attention kernels take
    num_key_value_heads=3,
    max_position_embeddings=4096,  # RoPE: free; fits a full 3000-character RAG prompt
    tie_word_embeddings=True,
)
WARMUP_STEPS = 160
WARMUP_BATCH = 8
WARMUP_LR = 1e-2
CHAT_CONTEXT_CHARS = 160  # short passages keep warm-up sequences cheap
NO_CONTEXT_SHARE = 0.05
QUESTIONS = ["{}에 대해 알려 주세요.", "{}에 대해 설명해 주세요.", "{}의 특징은 무엇인가요?"]


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build EchoRAG's tiny offline Korean model into ``out_dir`` (replaced atomically)."""
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    docs = corpus()
    chats = _chats(docs, seed)
    # Train BPE on the prompt format too, so the system prompt and labels tokenize compactly.
    tokenizer = train_tokenizer(
        [f"{d['title']}\n{d['text']}" for d in docs] + [m["content"] for chat in chats for m in chat]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster here, and reproducible
    try:
        model = tiny_llama(tokenizer, seed)
        loss = _warm_up(model, tokenizer, chats, seed)
    finally:
        torch.set_num_threads(threads)

    params = sum(p.numel() for p in model.parameters())
    card = dict(version=TINY_VERSION, name=TINY_NAME, seed=seed, params=params,
                vocab_size=len(tokenizer), warmup_steps=WARMUP_STEPS, warmup_loss=round(loss, 3),
                corpus_chars=sum(len(d["text"]) for d in docs))
    save_model_dir(model, tokenizer, card, _model_card(card), out_dir)
    logger.info("Built the tiny demo model (%d params, vocab %d) in %.1f s: %s",
                params, len(tokenizer), time.perf_counter() - started, out_dir)
    return out_dir


def save_model_dir(model, tokenizer, card: dict, readme: str, out_dir: Path) -> None:
    """Write model, tokenizer, marker and model card to ``out_dir``, replaced atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is for every user
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TINY_MARKER).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(readme)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)  # readers see no directory or a complete one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    # Plain text starts with <|begin_of_text|>, like Llama 3; chat templates add it themselves.
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bpe.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOT,  # end of an assistant turn, as in Llama-3-style instruct models
        pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def tiny_llama(tokenizer, seed: int, config: dict | None = None):
    """A randomly initialised Llama of ``config`` (default ``TINY_CONFIG``) for this tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    bos, eot, pad = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOT, PAD))
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, **(config or TINY_CONFIG)
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, do_sample=False
    )
    return model


def _warm_up(model, tokenizer, chats: list[list[dict]], seed: int) -> float:
    """Seeded AdamW steps on RAG-shaped chats, loss on the replies only (as the learning loop
    trains), so the model answers in Korean-looking sentences and ends its turn.

    Short one-sentence replies are learnable by a 2-layer model in a few seconds; packed
    plain-text blocks of the same text left it underfit and looping within that budget.
    """
    import torch

    examples = _chat_examples(tokenizer, chats)
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARMUP_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * (1 - step / WARMUP_STEPS)
    )
    model.train()
    batches = _shuffled_batches(len(examples), WARMUP_BATCH, random.Random(seed))
    for _ in range(WARMUP_STEPS):
        input_ids, labels, attention = _collate([examples[i] for i in next(batches)], tokenizer.pad_token_id)
        # Replies end every left-padded row, so only the last `keep` positions need logits;
        # the LM head over the whole prompt would cost most of the step for nothing.
        keep = input_ids.shape[1] - int((labels != -100).any(0).nonzero()[0]) + 1
        loss = model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=keep,
            labels=labels[:, -keep:],
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def _shuffled_batches(n: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    while True:  # epoch after epoch, each in a new seeded order
        order = rng.sample(range(n), n)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def _collate(batch: list[dict[str, list[int]]], pad_id: int):
    """Left-padded tensors, as ``generate`` sees prompts."""
    # Not training.collate: it pads on the right, which changes the weights and breaks logits_to_keep.
    import torch

    width = max(len(e["input_ids"]) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids, lab = e["input_ids"], e["labels"]
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        labels[row, width - len(lab) :] = torch.tensor(lab)
        attention[row, width - len(ids) :] = 1
    return input_ids, labels, attention


def _chats(docs: list[dict], seed: int) -> list[list[dict]]:
    """Chats shaped like the service's prompts: a question about a document, the document as
    passage [1], and one of its sentences as the cited answer; without a passage, the
    "not in the documents" answer the system prompt asks for."""
    from echorag.answering.prompts import NO_ANSWER, build_messages

    rng = random.Random(seed)
    chats = []
    for doc in docs:
        passage = {"text": doc["text"], "metadata": {"title": doc["title"]}}
        sentences = _sentences(doc["text"])
        for template in QUESTIONS:
            question = template.format(doc["title"])
            if rng.random() < NO_CONTEXT_SHARE:
                messages, answer = build_messages(question, [], []), NO_ANSWER
            else:
                messages = build_messages(question, [passage], [], max_context_chars=CHAT_CONTEXT_CHARS)
                answer = f"{sentences[0]} [1]"
            chats.append([*messages, {"role": "assistant", "content": answer}])
    return chats


def _chat_examples(tokenizer, chats: list[list[dict]]) -> list[dict[str, list[int]]]:
    """Loss on the assistant reply only, encoded exactly as the learning loop trains."""
    from echorag.models.chat_tokens import encode_chat

    # Never cuts: warm-up chats are far shorter than the model's context.
    return [encode_chat(tokenizer, chat, TINY_CONFIG["max_position_embeddings"]) for chat in chats]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _model_card(card: dict) -> str:
    c = TINY_CONFIG
    return f"""---
language: ko
library_name: transformers
tags: [echorag, demo, tiny, llama]
---
# {TINY_NAME}: EchoRAG's tiny demo model

This is **not** a real language model. EchoRAG builds it locally, in seconds and
without network, so that the whole service (retrieval, chat, streaming, LoRA
adapters, the learning loop) runs offline and in tests when Kakao's KANANA
(`{KANANA_ID}`) is not available. Its answers look Korean but mean nothing.

- Architecture: `LlamaForCausalLM`, {c['num_hidden_layers']} layers, hidden size {c['hidden_size']},
  {c['num_attention_heads']} heads, tied embeddings, {card['params']:,} parameters.
- Tokenizer: byte-level BPE trained on EchoRAG's Korean text ({card['corpus_chars']:,} characters),
  {card['vocab_size']:,} tokens, with a KANANA-like (Llama 3 style) chat template that marks
  assistant tokens with `{{% generation %}}`; generation ends at `<|eot_id|>`.
- Warm-up: {card['warmup_steps']} seeded AdamW steps on question/answer chats built from the same
  text, loss on the replies only (final loss {card['warmup_loss']}).
- Seed {card['seed']}, recipe version {card['version']}: the same inputs rebuild the same bytes.

Rebuild with `echorag build-tiny-model`.
"""
