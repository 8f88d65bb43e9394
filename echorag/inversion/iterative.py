"""The ``iterative`` restorer's moves: word and morpheme edits (Kiwi) of a hypothesis, and
continuations proposed by a language model."""

from __future__ import annotations

import random

from echorag.inversion.language_model import LanguageModel
from echorag.korean import get_kiwi, normalize

_CONTENT = ("NNG", "NNP", "VV", "VA", "MAG", "SL", "SN", "XR")


def _content_morphemes(sentences: list[str]) -> list[tuple[str, str]]:
    found = []
    for tokens in get_kiwi().tokenize(sentences):
        found += [(t.form, t.tag) for t in tokens if t.tag.partition("-")[0] in _CONTENT]
    return list(dict.fromkeys(found))


def _units(sentences: list[str]) -> list[str]:
    """Edit units of some sentences: their words (eojeols) and content morphemes."""
    words = [w for s in sentences for w in s.split()]
    return list(dict.fromkeys(words + [m for m, _ in _content_morphemes(sentences)]))


def _is_noun(unit: str) -> bool:
    tokens = get_kiwi().tokenize(unit)
    return len(tokens) == 1 and tokens[0].tag.startswith("NN")


def _replace_noun(word: str, noun: str) -> str | None:
    """The word with its first noun replaced (particles re-attached by Kiwi: 을/를, 은/는)."""
    kiwi = get_kiwi()
    morphs = [(t.form, t.tag) for t in kiwi.tokenize(word)]
    for i, (_, tag) in enumerate(morphs):
        if tag.startswith("NN"):
            morphs[i] = (noun, "NNG")
            try:
                return kiwi.join(morphs)
            except Exception:
                return None
    return None


def _edits(words, vocab, weights, nouns, rng: random.Random, per_state: int) -> list[str]:
    """Candidate edits of one hypothesis: every deletion and adjacent swap, then random
    insertions and replacements of vocabulary units, and noun substitutions inside words."""
    out = [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))] if len(words) > 1 else []
    out += [" ".join(words[:i] + [words[i + 1], words[i]] + words[i + 2 :]) for i in range(len(words) - 1)]
    while len(out) < per_state and vocab:
        kind = rng.random()
        unit = rng.choices(vocab, weights)[0]
        i = rng.randrange(len(words) + 1)
        if kind < 0.4 or not words:
            out.append(" ".join(words[:i] + [unit] + words[i:]))
        elif kind < 0.8:
            i = min(i, len(words) - 1)
            out.append(" ".join(words[:i] + [unit] + words[i + 1 :]))
        elif nouns:
            i = min(i, len(words) - 1)
            if (word := _replace_noun(words[i], rng.choice(nouns))) is not None:
                out.append(" ".join(words[:i] + [word] + words[i + 1 :]))
    return out


def _lm_continuations(lm: LanguageModel, words: list[str], rng: random.Random, n: int) -> list[str]:
    """The generator's proposals: continue a random prefix of the current hypothesis."""
    import torch

    cut = rng.randrange(len(words) + 1)
    prefix = " ".join(words[:cut])
    inputs = lm.tokenizer(prefix or lm.tokenizer.bos_token, return_tensors="pt").to(next(lm.model.parameters()).device)
    torch.manual_seed(rng.randrange(2**31))
    with torch.inference_mode():
        out = lm.model.generate(
            **inputs, do_sample=True, top_k=40, max_new_tokens=12, num_return_sequences=n,
            pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
        )
    return [normalize(lm.tokenizer.decode(row, skip_special_tokens=True)).strip() for row in out]
