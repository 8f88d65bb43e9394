"""The ``bag_of_tokens`` restorer's search: for ``input_embedding_mean`` pooling, the token
multiset whose mean embedding points at the target, then an order for it from a language
model and the corpus's token pairs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from echorag.inversion.language_model import LanguageModel


def _leading_special(tokenizer) -> int | None:
    """The token the tokenizer puts before every text (BOS), if any: it is part of every mean."""
    ids = tokenizer("가")["input_ids"]
    return ids[0] if ids and ids[0] in tokenizer.all_special_ids else None


def recover_token_bag(
    table: np.ndarray, target: np.ndarray, bos_id: int | None = None, beam: int = 256, **options,
) -> tuple[list[int], float]:
    """The token multiset whose mean embedding points closest to ``target``: beam searches
    of growing width (1, 4, 16, ... ``beam``) until one finds an exact bag (cosine 1).
    Wider is not always better for a fixed number of steps, and narrow is cheap."""
    best: tuple[list[int], float] = ([], -1.0)
    width = 1
    while True:
        bag, cosine = _beam_token_bag(table, target, bos_id, min(width, beam), **options)
        if cosine > best[1]:
            best = (bag, cosine)
        if best[1] > 1 - 1e-7 or width >= beam:
            return best
        width *= 4


def _beam_token_bag(
    table: np.ndarray, target: np.ndarray, bos_id: int | None, beam: int,
    expand: int = 8, max_tokens: int = 96, patience: int = 8,
) -> tuple[list[int], float]:
    """The token multiset whose mean embedding points closest to ``target``.

    Beam search over integer multisets: each state is extended by the ``expand``
    tokens that raise its cosine most (computed for the whole vocabulary at once),
    then the best states overall are refined by single-token removals and swaps.
    When the true multiset is found its cosine is 1 up to float rounding. With a
    wide table (KANANA: 1792 dims) even the greedy path (beam 1) finds it; a
    narrow one (the tiny model: 64 dims) needs a wide beam and can still miss.
    """
    table = np.asarray(table, np.float64)
    target = np.asarray(target, np.float64)
    target = target / np.linalg.norm(target)
    vocab = table.shape[0]
    t_dot = table @ target  # (V,)
    sq = (table * table).sum(1)
    banned = np.zeros(vocab, bool)
    if bos_id is not None:
        banned[bos_id] = True
    base = table[bos_id] if bos_id is not None else np.zeros(table.shape[1])

    def cosines(sums: np.ndarray) -> np.ndarray:  # (B, V): cosine after adding each token
        dots = sums @ target
        norms = (sums * sums).sum(1)[:, None] + 2 * (sums @ table.T) + sq[None]
        out = (dots[:, None] + t_dot[None]) / np.sqrt(np.maximum(norms, 1e-18))
        out[:, banned] = -np.inf
        return out

    def cos_of(vec: np.ndarray) -> float:
        n = np.linalg.norm(vec)
        return float(vec @ target / n) if n > 0 else -1.0

    states: list[tuple[float, tuple[int, ...], np.ndarray]] = [(cos_of(base), (), base)]
    best = states[0]
    since_best = 0
    for _ in range(max_tokens):
        sums = np.stack([s for _, _, s in states])
        cos = cosines(sums)
        k = min(expand, vocab - 1)
        top = np.argpartition(-cos, k, axis=1)[:, :k]
        children: dict[tuple[int, ...], tuple[float, tuple[int, ...], np.ndarray]] = {}
        for row, (_, bag, total) in enumerate(states):
            for token in top[row]:
                key = tuple(sorted(bag + (int(token),)))
                if key not in children:
                    children[key] = (float(cos[row, token]), key, total + table[token])
        states = sorted(children.values(), key=lambda s: -s[0])[:beam]
        if states[0][0] > best[0] + 1e-9:
            best, since_best = states[0], 0
        else:
            since_best += 1
        if best[0] > 1 - 1e-7 or since_best >= patience:
            break
    bag, cosine = _refine_bag(list(best[1]), best[2], table, target, cosines, cos_of)
    return bag, cosine


def _refine_bag(bag, total, table, target, cosines, cos_of):
    """Single-token removals and swaps while they raise the cosine."""
    cosine = cos_of(total)
    improved = True
    while improved and bag and cosine < 1 - 1e-7:
        improved = False
        for i in range(len(bag)):
            rest = total - table[bag[i]]
            swap = cosines(rest[None])[0]
            token = int(swap.argmax())
            removed = cos_of(rest)
            if max(swap[token], removed) > cosine + 1e-9:
                if swap[token] >= removed:
                    bag[i], total, cosine = token, rest + table[token], float(swap[token])
                else:
                    bag.pop(i)
                    total, cosine = rest, removed
                improved = True
                break
    return bag, cosine


def _broken_characters(tokenizer, ids: list[int]) -> int:
    """Characters a byte-level prefix cannot be completed into (a split character is fine
    only at the very end, where the next token may finish it)."""
    return tokenizer.decode(ids).rstrip("\ufffd").count("\ufffd")


# How much the corpus's token pairs count beside the LM's log-probabilities when a bag is
# ordered: chosen on held-out sample-KB sentences (bench/inversion_tune.py; token F1 0.563
# without, 0.672 at 2 on a 512-wide tiny model), not on the evaluation targets.
BIGRAM_WEIGHT = 2.0


@dataclass
class TokenBigrams:
    """Token bigram counts of a corpus under the model's own tokenizer: which token follows
    which. A small LM (the tiny one) knows little of how tokens join into words; what
    follows what in the texts the restorer may consult tells it."""

    pairs: Counter
    firsts: Counter  # how often each token is followed by anything
    unigram: Counter
    total: int

    @classmethod
    def fit(cls, tokenizer, texts: Sequence[str]) -> "TokenBigrams":
        pairs, firsts, unigram = Counter(), Counter(), Counter()
        for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
            unigram.update(ids)
            pairs.update(zip(ids, ids[1:]))
            firsts.update(ids[:-1])
        return cls(pairs, firsts, unigram, max(sum(unigram.values()), 1))

    def association(self, prev: int | None, token: int, smoothing: float = 1.0) -> float:
        """log P(token | prev) / P(token): how much more often ``token`` follows ``prev`` than
        it occurs at all (the LM already knows how frequent a token is). P(token | prev) is
        interpolated with the add-one unigram, so an unseen pair costs little after a rare
        token and much after a common one."""
        if prev is None:
            return 0.0
        unigram = (self.unigram[token] + 1) / (self.total + len(self.unigram) + 1)
        return math.log((self.pairs[(prev, token)] + smoothing * unigram) / (self.firsts[prev] + smoothing) / unigram)


def order_tokens(
    lm: LanguageModel, tokens: list[int], beam: int = 16, broken_penalty: float = 20.0,
    bigrams: TokenBigrams | None = None, bigram_weight: float = BIGRAM_WEIGHT,
) -> list[int]:
    """Order a token multiset by language-model likelihood (beam search over permutations),
    plus, given ``bigrams``, how likely each token follows the previous one in the corpus.

    Byte-level BPE splits Hangul syllables into byte tokens; an order that leaves a
    broken character behind is penalised, which the LM alone (the tiny one) does not know.
    """
    import torch

    tokenizer, model = lm.tokenizer, lm.model
    bos = _leading_special(tokenizer)
    prefix = [bos] if bos is not None else []
    device = next(model.parameters()).device
    states: list[tuple[float, list[int], Counter]] = [(0.0, [], Counter(tokens))]
    for _ in range(len(tokens)):
        inputs = torch.tensor([prefix + seq for _, seq, _ in states], device=device)
        if inputs.shape[1] == 0:  # no BOS: the first token has no context; score it by frequency alone
            nxt = torch.zeros((len(states), model.config.vocab_size))
        else:
            with torch.inference_mode():
                nxt = torch.log_softmax(model(input_ids=inputs).logits[:, -1].float(), -1).cpu()
        children = []
        for row, (logp, seq, left) in enumerate(states):
            for token in left:
                rest = left.copy()
                rest[token] -= 1
                if not rest[token]:
                    del rest[token]
                score = logp + float(nxt[row, token])
                if bigrams is not None:
                    score += bigram_weight * bigrams.association(seq[-1] if seq else bos, token)
                score -= broken_penalty * _broken_characters(tokenizer, seq + [token])
                children.append((score, seq + [token], rest))
        states = sorted(children, key=lambda s: -s[0])[:beam]
    # A sentence should also end where it ends: rank the full orders by log p(end | order).
    end = tokenizer.eos_token_id
    if end is not None and len(states) > 1:
        inputs = torch.tensor([prefix + seq for _, seq, _ in states], device=device)
        with torch.inference_mode():
            last = torch.log_softmax(model(input_ids=inputs).logits[:, -1].float(), -1)[:, end].cpu()
        states = sorted(((s[0] + float(e), s[1], s[2]) for s, e in zip(states, last)), key=lambda s: -s[0])
    return states[0][1]
