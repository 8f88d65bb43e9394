"""A small offline student that can copy: what the learning loop needs to learn a teacher.

The tiny demo model (``echorag.models.tiny_model``) has no mechanism that copies text from its
prompt, so no LoRA on it can imitate a teacher that quotes passages. This recipe builds a
larger Llama (4 layers, hidden 128, 1.56M parameters, its own 4,000-token Korean BPE)
and pretrains it on CPU (about 25 minutes on 2 cores) in two phases, nanoGPT-like:

1. **Repeats**: a run of 8-64 random tokens, other random tokens, the run again; loss
   on the repeat. Copying (induction heads: attend to what followed the earlier
   occurrence of the current token) forms suddenly after about a thousand steps; then
   the distance between the two grows to ``CONTEXT`` tokens. Natural text alone did
   not form copying in ten CPU minutes; runs of one fixed length taught a fixed offset;
   runs of the thousand commonest tokens taught copying that did not carry over to the
   rest of the vocabulary.
2. **Korean**: paragraphs of the given corpora packed to 128-1,024 tokens, then one to
   three of their sentences again (half of them after a few of their words); a quarter
   of the examples stay repeats. Loss on every token: Korean language modelling plus
   finding and copying sentences.

Measured on paragraphs it never saw (the card's ``copy_loss`` and ``text_loss``): 2.2
nats per token where a paragraph's opening comes again right after it, 5.8 on the
paragraph itself. Nothing here is the RAG chat format: the student meets the chat
template, the ``[n]`` citations and which sentence answers a question only in the
teacher's labels, in the learning loop. Pass corpora the learning benchmark does not
evaluate on (``bench/learning.py`` asks about the sample knowledge base and belebele;
KoBEST BoolQ's paragraphs are neither): ``echorag build-tiny-model --size small --corpus FILE``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from echorag.documents import read_jsonl
from echorag.models.tiny_corpus import FALLBACK_CORPUS
from echorag.models.tiny_model import KANANA_ID, save_model_dir, tiny_llama, train_tokenizer

logger = logging.getLogger(__name__)

SMALL_NAME = "echorag-small-ko"
SMALL_VERSION = 1
SMALL_VOCAB = 4000
SMALL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
REPEAT_STEPS = 3000  # at most; the phase ends once copying reaches CONTEXT
TEXT_STEPS = 1200
FORMED_LOSS = 1.0  # loss per repeated token (chance: ln 4000 = 8.3) that says copying works
REACH_GROWTH = 4  # tokens of distance added per step once it does
SETTLE_STEPS = 150
BATCH_TOKENS = 4096  # per optimizer step: short examples come many to a batch, long ones few
CONTEXT = 1024  # most tokens before a copy (served RAG prompts run 1,000-1,700)
LEARNING_RATE = 1e-3  # 3e-3 left the repeats' loss on its plateau
REPEAT_SHARE = 0.25  # of phase-2 examples
_SENTENCE_END = ("다.", "요.", "까?", "다!", ".")


def small_model_dir(models_dir: Path) -> Path:
    return Path(models_dir) / "small-ko"


def build_small_model(
    out_dir: Path,
    corpora: Sequence[Path] = (),
    seed: int = 0,
    repeat_steps: int = REPEAT_STEPS,
    text_steps: int = TEXT_STEPS,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Build the small student into ``out_dir`` (replaced atomically) from the built-in
    paragraphs plus ``corpora`` (JSONL files with a ``text`` field per line).
    ``progress(step, total, loss)`` is called after every optimizer step."""
    import torch

    from echorag.answering.prompts import SYSTEM_PROMPT

    started = time.perf_counter()
    paragraphs = [text for _, text in FALLBACK_CORPUS] + [p for path in corpora for p in read_texts(path)]
    # The system prompt tokenizes compactly, like the rest of a served prompt.
    tokenizer = train_tokenizer(paragraphs + [SYSTEM_PROMPT] * 20, SMALL_VOCAB)
    rng = random.Random(seed)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in paragraphs]
    # The last paragraphs are kept out of pretraining: the copy check reads them.
    held = min(50, len(encoded) // 10)
    paragraphs, encoded, unseen = paragraphs[: len(paragraphs) - held], encoded[: len(encoded) - held], encoded[len(encoded) - held :]
    model = tiny_llama(tokenizer, seed, SMALL_CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    estimate = repeat_steps + text_steps

    def report(step: int, loss: float) -> None:
        if progress:
            progress(step, max(estimate, step), loss)

    model.train()
    formed_at, used = _repeat_phase(model, optimizer, tokenizer, rng, repeat_steps, report)
    estimate = used + text_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, text_steps))
    loss_value = math.nan
    for step in range(text_steps):
        make = lambda: _repeat(tokenizer, rng, CONTEXT) if rng.random() < REPEAT_SHARE else _text(  # noqa: E731
            tokenizer, encoded, paragraphs, rng)
        loss_value = _step(model, optimizer, _batch(make), tokenizer.pad_token_id)
        schedule.step()
        report(used + step + 1, loss_value)
    model.eval()
    copy_loss, text_loss = copy_check(model, tokenizer, unseen)
    params = sum(p.numel() for p in model.parameters())
    card = dict(version=SMALL_VERSION, name=SMALL_NAME, size="small", seed=seed, params=params,
                vocab_size=len(tokenizer), repeat_steps=used, copying_formed_at=formed_at, text_steps=text_steps,
                final_loss=round(loss_value, 3), text_loss=round(text_loss, 3), copy_loss=round(copy_loss, 3),
                corpus_chars=sum(map(len, paragraphs)), corpora=[Path(c).name for c in corpora],
                seconds=round(time.perf_counter() - started, 1))
    save_model_dir(model, tokenizer, card, _model_card(card), Path(out_dir))
    logger.info("Built the small student (%d params) in %.0f s: %s", params, card["seconds"], out_dir)
    return Path(out_dir)


def read_texts(path: Path) -> list[str]:
    """The ``text`` of every line of a JSONL corpus."""
    return [t for row in read_jsonl(path) if (t := str(row.get("text") or "").strip())]


def _step(model, optimizer, batch: list[tuple[list[int], list[int]]], pad_id: int) -> float:
    import torch

    from echorag.models.chat_tokens import collate

    loss = model(**collate([{"input_ids": ids, "labels": labels} for ids, labels in batch], pad_id)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _repeat_phase(model, optimizer, tokenizer, rng: random.Random, max_steps: int,
                  report: Callable[[int, float], None]) -> tuple[int | None, int]:
    """Repeats at short distances until copying forms (the loss on the repeat falls below
    ``FORMED_LOSS``), then at distances growing to ``CONTEXT``; stops ``SETTLE_STEPS``
    after reaching it, or at ``max_steps``. Returns (step copying formed at, steps)."""
    smoothed, formed_at, reach, step = None, None, 64, 0
    while step < max_steps:
        loss = _step(model, optimizer, _batch(lambda: _repeat(tokenizer, rng, reach)), tokenizer.pad_token_id)
        step += 1
        report(step, loss)
        smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
        if formed_at is None and smoothed < FORMED_LOSS:
            formed_at = step
        if formed_at is not None:  # then over longer distances
            reach = min(CONTEXT, 64 + (step - formed_at) * REACH_GROWTH)
            if step - formed_at >= (CONTEXT - 64) // REACH_GROWTH + SETTLE_STEPS:
                break
    return formed_at, step


def _cosine(step: int, total: int) -> float:
    """From the full learning rate down to a tenth of it."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def _repeat(tokenizer, rng: random.Random, reach: int) -> tuple[list[int], list[int]]:
    """BOS, a run of 8-64 random ordinary tokens, up to ``reach`` other random tokens, the
    run again; loss on the repeat."""
    first = len(tokenizer.all_special_ids) + 256  # after the specials and single bytes
    draw = lambda n: [rng.randrange(first, len(tokenizer)) for _ in range(n)]  # noqa: E731
    run, gap = draw(rng.randint(8, 64)), draw(rng.randint(0, reach))
    ids = [tokenizer.bos_token_id, *run, *gap, *run]
    return ids, [-100] * (len(ids) - len(run)) + run


def _batch(make: Callable[[], tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
    """Examples until their padded size reaches ``BATCH_TOKENS``."""
    batch = [make()]
    while (len(batch) + 1) * max(len(ids) for ids, _ in batch) <= BATCH_TOKENS:
        batch.append(make())
    return batch


def _sentences(paragraph: str) -> list[str]:
    words = paragraph.split(" ")
    sentences, current = [], []
    for word in words:
        current.append(word)
        if word.endswith(_SENTENCE_END):
            sentences.append(" ".join(current))
            current = []
    return [s for s in sentences if len(s) >= 15]


def _text(tokenizer, encoded: list[list[int]], paragraphs: list[str], rng: random.Random) -> tuple[list[int], list[int]]:
    """Paragraphs up to ``CONTEXT // 8``…``CONTEXT`` tokens, then one to three of their
    sentences again, half of them after a few of their words: language modelling plus
    finding and copying (a copy is a fifth of the tokens or more, not a rare event)."""
    ids, chosen = [tokenizer.bos_token_id], []
    newline = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    length = rng.randint(CONTEXT // 8, CONTEXT)  # short contexts are cheap, long ones teach distance
    while len(ids) < length:
        i = rng.randrange(len(encoded))
        ids += encoded[i] + newline
        chosen.append(i)
    candidates = [s for i in chosen for s in _sentences(paragraphs[i])]
    for sentence in rng.sample(candidates, min(len(candidates), rng.randint(1, 3))):
        words = sentence.split(" ")
        cue = " ".join(rng.sample(words, min(len(words), rng.randint(1, 3)))) + "\n" if rng.random() < 0.5 else ""
        ids += tokenizer(cue + sentence, add_special_tokens=False)["input_ids"] + newline
    return ids, list(ids)


def copy_check(model, tokenizer, encoded: list[list[int]]) -> tuple[float, float]:
    """Loss per token on unseen paragraphs' first 40 tokens where they come again right
    after the paragraph (low: it copies), and on the paragraphs themselves (language model)."""
    import torch

    copies, texts = [], []
    with torch.no_grad():
        for tokens in encoded:
            if len(tokens) < 20:
                continue
            sentence = tokens[:40]
            ids = torch.tensor([[tokenizer.bos_token_id, *tokens, *sentence]])
            logits = model(input_ids=ids).logits[0, :-1]
            losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            texts.append(losses[: len(tokens)].mean().item())
            copies.append(losses[len(tokens) :].mean().item())
    mean = lambda values: sum(values) / len(values) if values else math.nan  # noqa: E731
    return mean(copies), mean(texts)


def _model_card(card: dict) -> str:
    c = SMALL_CONFIG
    return f"""---
language: ko
library_name: transformers
tags: [echorag, student, small, llama]
---
# {SMALL_NAME}: EchoRAG's small offline student

A small Llama that EchoRAG builds offline so that the learning loop has a student that
can learn to quote its passages where Kakao's KANANA (`{KANANA_ID}`) is not available.
It is not an assistant: it continues Korean text and copies what it has seen in its
context; the chat format, citations and which sentence answers come from the teacher's
labels in the learning loop.

- Architecture: `LlamaForCausalLM`, {c['num_hidden_layers']} layers, hidden size {c['hidden_size']},
  {c['num_attention_heads']} heads, tied embeddings, {card['params']:,} parameters, vocabulary {card['vocab_size']:,}.
- Pretraining: {card['repeat_steps']} steps of random-token repeats (loss on the repeat; copying
  formed at step {card['copying_formed_at']}), then {card['text_steps']} steps of Korean paragraphs
  ({card['corpus_chars']:,} characters: the built-in text and {', '.join(card['corpora']) or 'nothing else'})
  followed by some of their sentences again. Final loss {card['final_loss']}. On unseen
  paragraphs: {card['text_loss']} nats per token, {card['copy_loss']} where their opening comes
  again right after them. {card['seconds']} s.
- Seed {card['seed']}, recipe version {card['version']}.

Rebuild with `echorag build-tiny-model --size small --corpus FILE`.
"""
