"""``Inverter``: restore text from a vector by one of the methods, within a work budget."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from echorag.inversion.iterative import _content_morphemes, _edits, _is_noun, _lm_continuations, _units
from echorag.inversion.language_model import LanguageModel
from echorag.inversion.morphemes import MorphemeDecoder, join_morphemes, random_spans
from echorag.inversion.results import InvertResponse, InvertStep, Method, Side
from echorag.inversion.token_bag import TokenBigrams, _leading_special, order_tokens, recover_token_bag
from echorag.korean import normalize, split_sentences
from echorag.retrieval.rotation import unwrap
from echorag.retrieval.vectors import Embedder

METHODS: tuple[str, ...] = get_args(Method)  # the request model's choices, in order

# Default work limits, small enough for an HTTP request on CPU.
DEFAULT_BUDGET = {"nearest": 8, "bag_of_tokens": 256, "bag_of_morphemes": 200, "iterative": 600}


# --------------------------------------------------------------------------- results


@dataclass
class Inversion:
    text: str
    cosine: float
    method: str
    trace: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_response(self) -> InvertResponse:
        return InvertResponse(
            text=self.text, cosine=self.cosine, method=self.method,  # type: ignore[arg-type]
            trace=[InvertStep(**s) for s in self.trace], seconds=self.seconds,
        )


class _Trace:
    """Steps worth showing: every improvement, capped so a response stays small."""

    def __init__(self, limit: int = 64) -> None:
        self.steps: list[dict[str, Any]] = []
        self.limit = limit

    def add(self, action: str, text: str, cosine: float) -> None:
        step = {"step": len(self.steps), "action": action, "text": text, "cosine": round(float(cosine), 6)}
        if len(self.steps) >= self.limit:  # keep the first steps and the latest one
            self.steps[-1] = step | {"step": self.steps[-1]["step"] + 1}
        else:
            self.steps.append(step)


# --------------------------------------------------------------------------- the inverter


def corpus_sentences(texts: Sequence[str]) -> list[str]:
    """The distinct sentences of ``texts`` (NFC): the units a restorer consults."""
    return list(dict.fromkeys(s for text in texts for s in split_sentences(normalize(text))))


class Inverter:
    """Restore text from vectors of ``embedder``.

    nearest: ``nearest(vector, k) -> list[str]`` over the store, or None.
    corpus: texts the restorer may consult (indexed by sentence, lazily).
    lm: orders recovered tokens (bag_of_tokens) and proposes continuations (iterative).
    """

    def __init__(
        self,
        embedder: Embedder,
        nearest: Callable[[np.ndarray, int], list[str]] | None = None,
        corpus: Sequence[str] | None = None,
        lm: LanguageModel | None = None,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        self.embedder = embedder
        self._nearest = nearest
        self.corpus = [normalize(t) for t in corpus or [] if t.strip()]
        self.lm = lm
        self.seed = seed
        self.batch_size = batch_size
        self._corpus_index: tuple[list[str], dict[str, np.ndarray]] | None = None
        self._unit_index: tuple[list[str], dict[str, np.ndarray]] | None = None
        self._decoders: dict[str, MorphemeDecoder] = {}
        self._token_bigrams: TokenBigrams | None = None

    # -- public API

    def invert(
        self, vector: Sequence[float] | np.ndarray, method: str = "iterative",
        budget: int | None = None, side: Side = "passage",
    ) -> Inversion:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
        target = np.asarray(vector, np.float32).reshape(-1)
        if target.shape[0] != self.embedder.dim:
            raise ValueError(f"vector has {target.shape[0]} dims; the embedder makes {self.embedder.dim}")
        if not np.isfinite(target).all() or not np.linalg.norm(target) > 0:
            raise ValueError("vector must be finite and non-zero")
        target = target / np.linalg.norm(target)
        budget = int(budget or DEFAULT_BUDGET[method])
        started = time.perf_counter()
        run = {"nearest": self._invert_nearest, "bag_of_tokens": self._invert_bag_of_tokens,
               "bag_of_morphemes": self._invert_bag_of_morphemes, "iterative": self._invert_iterative}[method]
        text, cosine, trace = run(target, budget, side)
        return Inversion(text, round(float(cosine), 6), method, trace, round(time.perf_counter() - started, 4))

    def embed(self, texts: list[str], side: Side = "passage") -> np.ndarray:
        """Batched embedding, as the service embeds (the only way candidates are scored)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            part = texts[start : start + self.batch_size]
            out.append(self.embedder.embed_queries(part) if side == "query" else self.embedder.embed_passages(part))
        return np.concatenate(out) if out else np.zeros((0, self.embedder.dim), np.float32)

    # -- what the restorer may consult

    def consult(self, target: np.ndarray, k: int, side: Side = "passage") -> list[str]:
        """Texts near ``target``: the store's ``k`` nearest (whole, and their sentences) and the
        corpus's ``k`` nearest sentences."""
        sentences: list[str] = []
        if self._nearest is not None:
            for text in self._nearest(target, k):
                sentences += [text, *split_sentences(text)]  # whole: a stored chunk is its own echo
        if self.corpus:
            texts, vectors = self._corpus_vectors(side)
            order = np.argsort(-(vectors @ target))[:k]
            sentences += [texts[i] for i in order]
        return list(dict.fromkeys(s.strip() for s in sentences if s.strip()))

    def _corpus_vectors(self, side: Side) -> tuple[list[str], np.ndarray]:
        if self._corpus_index is None:
            self._corpus_index = (corpus_sentences(self.corpus), {})
        sentences, by_side = self._corpus_index
        if side not in by_side:  # embedded once per side, on first use
            by_side[side] = self.embed(sentences, side)
        return sentences, by_side[side]

    def _corpus_units(self, side: Side) -> tuple[list[str], np.ndarray]:
        """Every word and content morpheme of the corpus, each embedded alone (once):
        a probe of how much of a target each unit explains, free for every later target."""
        if self._unit_index is None:
            sentences, _ = self._corpus_vectors(side)
            units = list(dict.fromkeys(_units(sentences)))
            self._unit_index = (units, {})
        units, by_side = self._unit_index
        if side not in by_side:
            by_side[side] = self.embed(units, side)
        return units, by_side[side]

    def _corpus_unit_scores(self, target: np.ndarray, side: Side) -> tuple[list[str], list[float]]:
        if not self.corpus:
            return [], []
        units, vectors = self._corpus_units(side)
        return units, (vectors @ target).tolist()

    def _bigrams(self, tokenizer) -> TokenBigrams | None:
        """The corpus's token pairs under ``tokenizer``, counted once; None without a corpus."""
        if self._token_bigrams is None and self.corpus:
            self._token_bigrams = TokenBigrams.fit(tokenizer, corpus_sentences(self.corpus))
        return self._token_bigrams

    def _decoder(self, side: Side) -> MorphemeDecoder:
        """Fitted once per side on the corpus's sentences and random spans of them."""
        if side not in self._decoders:
            sentences, vectors = self._corpus_vectors(side)
            spans = random_spans(sentences, per_sentence=8, rng=random.Random(self.seed))
            texts = sentences + spans
            all_vectors = np.vstack([vectors, self.embed(spans, side)]) if spans else vectors
            self._decoders[side] = MorphemeDecoder.fit(texts, all_vectors, lambda units: self.embed(units, side))
        return self._decoders[side]

    # -- nearest

    def _invert_nearest(self, target: np.ndarray, budget: int, side: Side):
        trace = _Trace()
        candidates = self.consult(target, budget, side)
        if not candidates:
            raise ValueError("nearest needs a store or a corpus to consult")
        scores = self.embed(candidates, side) @ target
        order = np.argsort(-scores)
        for rank, i in enumerate(order[:5]):
            trace.add(f"neighbour {rank + 1}", candidates[i], scores[i])
        best = int(order[0])
        return candidates[best], float(scores[best]), trace.steps

    # -- bag of tokens

    def _invert_bag_of_tokens(self, target: np.ndarray, budget: int, side: Side):
        inner, rotation = unwrap(self.embedder)
        if getattr(inner, "pooling", None) != "input_embedding_mean":
            raise ValueError("bag_of_tokens needs a kanana embedder with input_embedding_mean pooling")
        if rotation is not None:  # we hold the key: undo the rotation first
            target = rotation.invert(target[None])[0]
        table = inner.model.get_input_embeddings().weight.detach().float().cpu().numpy()
        tokenizer = inner.tokenizer
        trace = _Trace()
        tokens, cosine = recover_token_bag(table, target, bos_id=_leading_special(tokenizer), beam=budget)
        pieces = tokenizer.convert_ids_to_tokens(tokens)
        trace.add(f"token bag ({len(tokens)} tokens, beam up to {budget})", " ".join(pieces), cosine)
        lm = self.lm
        ordered = order_tokens(lm, tokens, bigrams=self._bigrams(tokenizer)) if lm is not None and tokens else tokens
        text = tokenizer.decode(ordered, skip_special_tokens=True)
        # The mean is order-free: the embedding of the ordered text should match the bag's cosine.
        final = float(self.embed([text], side)[0] @ (rotation.apply(target[None])[0] if rotation else target))
        how = "ordered by the language model" + (" and the corpus's token pairs" if self.corpus else "")
        trace.add(how if lm is not None else "unordered", text, final)
        return text, final, trace.steps

    # -- bag of morphemes

    def _invert_bag_of_morphemes(self, target: np.ndarray, budget: int, side: Side):
        if not self.corpus:
            raise ValueError("bag_of_morphemes needs a corpus to fit its decoder on")
        trace = _Trace()
        units = self._decoder(side).decode(target, limit=budget)
        text = join_morphemes(units)
        cosine = float(self.embed([text], side)[0] @ target) if text else 0.0
        trace.add(f"decoded {len(units)} morphemes, joined by Kiwi", text, cosine)
        return text, cosine, trace.steps

    # -- iterative

    def _invert_iterative(self, target: np.ndarray, budget: int, side: Side):
        rng = random.Random(self.seed)
        trace = _Trace()
        seen: dict[str, float] = {}

        def score(texts: list[str]) -> list[float]:
            """Embed the unseen texts in one batch; every text costs one unit of budget."""
            fresh = [t for t in dict.fromkeys(texts) if t not in seen and t.strip()]
            fresh = fresh[: max(0, budget - len(seen))]
            if fresh:
                for text, s in zip(fresh, self.embed(fresh, side) @ target):
                    seen[text] = float(s)
            return [seen.get(t, -1.0) for t in texts]

        # 1. Start from the nearest sentences the restorer can consult.
        sentences = self.consult(target, 24, side)
        if not sentences and self.lm is None:
            raise ValueError("iterative needs a store, a corpus or a language model to draw words from")
        seed_scores = score(sentences)
        ranked = [s for _, s in sorted(zip(seed_scores, sentences), reverse=True)]
        # 2. The vocabulary: words and content morphemes, each probed alone to rank how
        #    much of the target it explains: the corpus's once for all targets, the
        #    store neighbours' in one batch.
        morphs = _content_morphemes(ranked[:12])
        unit_scores = dict(zip(*self._corpus_unit_scores(target, side)))
        fresh = [u for u in _units(ranked[:12]) if u not in unit_scores]
        unit_scores |= dict(zip(fresh, score(fresh)))
        vocab = sorted(unit_scores, key=lambda u: -unit_scores[u])[:80]
        top = unit_scores[vocab[0]] if vocab else 0.0
        weights = [math.exp((unit_scores[u] - top) / 0.03) for u in vocab]  # favour the most telling units
        nouns = [m for m, tag in morphs if tag.startswith("N")]
        nouns += [u for u in vocab if u not in nouns and _is_noun(u)][:20]
        # A second start: the most telling units alone, in probe order.
        bag_start = " ".join(vocab[:6])
        starts = ranked[:3] + ([bag_start] if vocab else [])
        if self.corpus:  # a third: the morpheme bag the corpus-fitted decoder reads off the vector
            starts.append(join_morphemes(self._decoder(side).decode(target)))
        start_scores = score(starts)
        best_text, best = max(zip(starts, start_scores), key=lambda p: p[1]) if starts else ("", -1.0)
        trace.add("nearest sentence" if best_text in ranked else "top probed words" if best_text == bag_start
                  else "decoded morphemes", best_text, best)
        beam = sorted(zip(start_scores, starts), reverse=True)[:3]

        # 3. Edit rounds: every candidate of a round is embedded in one batch.
        stall = 0
        while len(seen) < budget and best < 0.995 and stall < 4:
            candidates = []
            for _, text in beam:
                candidates += _edits(text.split(), vocab, weights, nouns, rng, per_state=self.batch_size // len(beam))
            if self.lm is not None:
                candidates += _lm_continuations(self.lm, best_text.split(), rng, n=4)
            if not candidates:
                break
            before = len(seen)
            scores = score(candidates)
            if len(seen) == before:  # nothing new to try
                break
            pool = sorted(set(zip(scores, candidates)) | set(beam), reverse=True)
            beam = pool[:3]
            if beam[0][0] > best + 1e-6:
                best, best_text = beam[0]
                trace.add("edit", best_text, best)
                stall = 0
            else:
                stall += 1
        trace.add(f"stopped after {len(seen)} embedded texts", best_text, best)
        return best_text, best, trace.steps
