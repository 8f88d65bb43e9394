"""Inverse vectorisation: what does a stored vector still reveal about its text?

Three restorers, from the cheapest to the most general:

- ``nearest``: the nearest texts the restorer can see (the store, or a corpus).
  The store's own echo: exact whenever the text itself is stored.
- ``bag_of_tokens``: for ``input_embedding_mean`` pooling (the original project's
  vectors: the mean of the input token embeddings), search for the token multiset
  whose embedding mean points exactly at the target, then order the tokens with a
  language model.
- ``bag_of_morphemes``: for any embedder, the bag-of-words inversion of Song &
  Raghunathan (2020): a linear decoder fitted on the corpus (its sentences and random
  spans of them, embedded once) predicts each morpheme's count from a vector; probing
  every corpus morpheme alone sharpens it; the bag that maximises the expected token F1
  is kept and joined in the order its morphemes usually take.
- ``iterative``: for any embedder, a vec2text-style loop without a trained
  corrector: start from the nearest sentences, propose word and morpheme edits
  (Kiwi) and keep the ones that raise the cosine to the target, embedding every
  round of candidates in one batch.

The defence is ``VectorRotation``: a secret orthogonal matrix applied to every
stored and query vector. Cosines, and so retrieval, are unchanged; without the
key the vectors no longer line up with the public model and inversion falls to
chance. ``RotatedEmbedder`` wraps any embedder and changes its id, so the store's
embedder guard refuses to mix rotated and unrotated vectors.

Plain Python (numpy, torch only through the embedder and the LM); no Ray.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from echorag.embedding import Embedder, l2_normalize
from echorag.korean import get_kiwi, normalize, split_sentences

Method = Literal["nearest", "bag_of_tokens", "bag_of_morphemes", "iterative"]
METHODS: tuple[str, ...] = ("nearest", "bag_of_tokens", "bag_of_morphemes", "iterative")
Side = Literal["passage", "query"]

# Default work limits, small enough for an HTTP request on CPU.
DEFAULT_BUDGET = {"nearest": 8, "bag_of_tokens": 256, "bag_of_morphemes": 200, "iterative": 600}
MAX_BUDGET = 20_000


# --------------------------------------------------------------------------- HTTP models


class InvertRequest(BaseModel):
    """Body of ``POST /vectors/invert`` (admin): a stored ``id`` or a raw ``vector``."""

    id: str | None = Field(None, description="id of a stored item whose vector is inverted")
    collection: Literal["documents", "memory"] = "documents"
    vector: list[float] | None = Field(None, description="a raw vector from this service's embedder")
    method: Method = "iterative"
    budget: int | None = Field(
        None, ge=1, le=MAX_BUDGET,
        description="nearest: texts consulted; bag_of_tokens: beam width; "
        "bag_of_morphemes: morphemes considered; iterative: texts embedded",
    )
    side: Side = Field("passage", description="how the vector was embedded (stored items: passage)")

    @model_validator(mode="after")
    def _one_target(self) -> "InvertRequest":
        if (self.id is None) == (self.vector is None):
            raise ValueError("give exactly one of 'id' or 'vector'")
        if self.vector is not None and not self.vector:
            raise ValueError("'vector' is empty")
        return self


class InvertStep(BaseModel):
    step: int
    action: str
    text: str
    cosine: float


class InvertResponse(BaseModel):
    text: str
    cosine: float = Field(description="cosine between the reconstruction's embedding and the target")
    method: Method
    trace: list[InvertStep]
    seconds: float


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


# --------------------------------------------------------------------------- the defence


def key_fingerprint(key: str) -> str:
    """A short, non-secret name for a key (safe to store in collection metadata)."""
    return hashlib.sha256(b"echorag-rotation-fingerprint:" + key.encode()).hexdigest()[:12]


class VectorRotation:
    """A secret orthogonal matrix, derived deterministically from ``key``.

    Q from the QR decomposition of a Gaussian matrix seeded by the key (signs fixed
    so Q is Haar-distributed). Orthogonal maps preserve dot products, so cosine
    retrieval is unchanged, while the rotated vectors no longer match the public
    model's geometry.
    """

    def __init__(self, key: str, dim: int) -> None:
        if not key:
            raise ValueError("the rotation key must not be empty")
        seed = int.from_bytes(hashlib.sha256(b"echorag-rotation:" + key.encode()).digest()[:8], "little")
        gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
        q, r = np.linalg.qr(gaussian)
        self.matrix = (q * np.sign(np.diag(r))).astype(np.float32)  # (dim, dim), orthogonal
        self.dim = dim
        self.fingerprint = key_fingerprint(key)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float32) @ self.matrix.T).astype(np.float32)

    def invert(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float32) @ self.matrix).astype(np.float32)


def estimate_rotation(public: np.ndarray, rotated: np.ndarray) -> VectorRotation:
    """The known-plaintext attack: orthogonal Procrustes from pairs of (public-model vector,
    stored vector) of the same texts. With about ``dim`` pairs it recovers the key's rotation,
    so the defence holds only while stored vectors cannot be paired with their texts."""
    u, _, vt = np.linalg.svd(np.asarray(rotated, np.float64).T @ np.asarray(public, np.float64))
    estimate = VectorRotation.__new__(VectorRotation)
    estimate.matrix, estimate.dim, estimate.fingerprint = (u @ vt).astype(np.float32), public.shape[1], "estimated"
    return estimate


class RotatedEmbedder:
    """Any embedder, with every vector rotated by a secret key."""

    def __init__(self, inner: Embedder, key: str | VectorRotation) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.rotation = key if isinstance(key, VectorRotation) else VectorRotation(key, inner.dim)
        # A different id: the store refuses to mix rotated and unrotated vectors.
        self.id = f"{inner.id}+rot:{self.rotation.fingerprint}"

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.rotation.apply(self.inner.embed_queries(texts)))

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.rotation.apply(self.inner.embed_passages(texts)))


def unwrap(embedder: Embedder) -> tuple[Embedder, VectorRotation | None]:
    """The embedder under any rotation, and the rotation (None when unrotated)."""
    if isinstance(embedder, RotatedEmbedder):
        return embedder.inner, embedder.rotation
    return embedder, None


# --------------------------------------------------------------------------- metrics

_PUNCT_TAGS = ("SF", "SP", "SS", "SE", "SO", "SW")


def eval_morphemes(text: str) -> list[str]:
    """Kiwi morpheme forms (punctuation left out): the unit of token F1 and BLEU."""
    return [t.form.lower() for t in get_kiwi().tokenize(normalize(text)) if not t.tag.startswith(_PUNCT_TAGS)]


def token_f1(reference: str, hypothesis: str) -> float:
    """F1 of the morpheme multisets (order-free)."""
    ref, hyp = Counter(eval_morphemes(reference)), Counter(eval_morphemes(hypothesis))
    overlap = sum((ref & hyp).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(hyp.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def bleu(reference: str, hypothesis: str, max_n: int = 4) -> float:
    """Sentence BLEU over morphemes, add-one smoothing for n > 1 (Lin & Och 2004)."""
    ref, hyp = eval_morphemes(reference), eval_morphemes(hypothesis)
    if not ref or not hyp:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp_ngrams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        ref_ngrams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        matches, total = sum((hyp_ngrams & ref_ngrams).values()), max(len(hyp) - n + 1, 0)
        smooth = 0 if n == 1 else 1
        if matches + smooth == 0:
            return 0.0
        log_precision += math.log((matches + smooth) / (total + smooth)) / max_n
    brevity = min(0.0, 1 - len(ref) / len(hyp))
    return math.exp(brevity + log_precision)


def exact_match(reference: str, hypothesis: str) -> bool:
    """Same text up to spacing and punctuation (Kiwi joins morphemes with its own spacing)."""
    return eval_morphemes(reference) == eval_morphemes(hypothesis)


# --------------------------------------------------------------------------- the inverter


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


# --------------------------------------------------------------------------- bag of tokens


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


# --------------------------------------------------------------------------- bag of morphemes

# Chosen by leave-documents-out cross-validation on the sample knowledge base (5 folds,
# held-out sentences of 6-25 morphemes), not on the evaluation targets.
PROBE_WEIGHT, PROBE_Z, LENGTH_SCALE, RIDGE = 0.2, 2.0, 0.8, 0.01


def random_spans(sentences: list[str], per_sentence: int, rng: random.Random) -> list[str]:
    """Runs of 2-12 words from each sentence: more (text, vector) pairs for the decoder."""
    spans = []
    for sentence in sentences:
        words = sentence.split()
        for _ in range(per_sentence if len(words) > 2 else 0):
            n = rng.randint(2, 12)
            start = rng.randrange(max(1, len(words) - n + 1))
            spans.append(" ".join(words[start : start + n]))
    return spans


@dataclass
class MorphemeDecoder:
    """Vector -> expected count of every morpheme (Kiwi form and tag), by ridge regression
    fitted in closed form, with the text's expected length in the last column."""

    vocab: list[tuple[str, str]]
    weights: np.ndarray  # (dim + 1, len(vocab) + 1)
    positions: np.ndarray  # mean relative position of each morpheme in its texts
    unit_vectors: np.ndarray  # each morpheme embedded alone: a target-specific probe

    @classmethod
    def fit(cls, texts: list[str], vectors: np.ndarray, embed: Callable[[list[str]], np.ndarray]) -> "MorphemeDecoder":
        index: dict[tuple[str, str], int] = {}
        rows, cols, where = [], [], []
        for row, tokens in enumerate(get_kiwi().tokenize(texts)):
            units = [(t.form, t.tag) for t in tokens if not t.tag.startswith(_PUNCT_TAGS)]
            for position, unit in enumerate(units):
                rows.append(row)
                cols.append(index.setdefault(unit, len(index)))
                where.append(position / max(len(units) - 1, 1))
        rows_a, cols_a = np.array(rows, int), np.array(cols, int)
        x = np.hstack([vectors, np.ones((len(vectors), 1), np.float32)]).astype(np.float64)
        # X^T Y without the dense (texts x vocabulary) count matrix; the last column is length.
        xty = np.zeros((len(index) + 1, x.shape[1]))
        np.add.at(xty, cols_a, x[rows_a])
        xty[-1] = np.bincount(rows_a, minlength=len(x)) @ x
        gram = x.T @ x + RIDGE * np.eye(x.shape[1])
        weights = np.linalg.solve(gram, xty.T).astype(np.float32)
        positions = np.bincount(cols_a, weights=where, minlength=len(index)) / np.bincount(cols_a, minlength=len(index))
        vocab = list(index)
        return cls(vocab, weights, positions, embed([form for form, _ in vocab]))

    def decode(self, target: np.ndarray, limit: int = 200) -> list[tuple[str, str]]:
        predicted = np.append(target, 1.0).astype(np.float32) @ self.weights
        counts, length = np.clip(predicted[:-1], 0, None), max(float(predicted[-1]), 1.0)
        probes = self.unit_vectors @ target
        z = (probes - probes.mean()) / (probes.std() + 1e-9)
        scores = counts + PROBE_WEIGHT * np.clip(z - PROBE_Z, 0, None)
        # Every copy of a morpheme is an item, as likely as what remains of its expected count.
        items = sorted(
            ((min(1.0, float(scores[j]) - copy), int(j)) for j in np.argsort(-scores)[:limit]
             for copy in range(3) if scores[j] - copy > 0.05),
            reverse=True,
        )
        # Keep the k likeliest items that maximise the expected F1, 2 * sum(p) / (k + length).
        best_k, best, total = 0, 0.0, 0.0
        for k, (p, _) in enumerate(items, 1):
            total += p
            if (f1 := 2 * total / (k + LENGTH_SCALE * length)) > best:
                best_k, best = k, f1
        chosen = sorted((j for _, j in items[:best_k]), key=lambda j: self.positions[j])
        return [self.vocab[j] for j in chosen]


def join_morphemes(units: list[tuple[str, str]]) -> str:
    """Words from morphemes, greedily: each morpheme either attaches to the last word (Kiwi
    joins it: particles, endings) or starts a new one, whichever keeps more of the morphemes
    placed so far when the text is read back; a bag in typical order is not a sentence,
    and a blind join fuses morphemes into words Kiwi reads differently."""
    kiwi = get_kiwi()
    words: list[list[tuple[str, str]]] = []

    def render(candidate: list[list[tuple[str, str]]]) -> str | None:
        try:
            return " ".join(kiwi.join(word) for word in candidate)
        except Exception:
            return None

    for i, unit in enumerate(units):
        placed = Counter(form.lower() for form, _ in units[: i + 1])
        options = [words + [[unit]]] + ([words[:-1] + [words[-1] + [unit]]] if words else [])
        if unit[1].startswith(("J", "E", "XS", "VCP")):
            options.reverse()  # on a tie, a particle or an ending attaches
        best, best_kept = options[0], -1
        for option in options:
            text = render(option)
            kept = -1 if text is None else sum((placed & Counter(eval_morphemes(text))).values())
            if kept > best_kept:
                best, best_kept = option, kept
        words = best
    return render(words) or " ".join(form for form, _ in units)


# --------------------------------------------------------------------------- iterative edits

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


# --------------------------------------------------------------------------- evaluation


def default_lm(embedder: Embedder, device: str = "cpu") -> LanguageModel | None:
    """The causal LM over a kanana embedder's own weights (for ordering token bags); None for e5."""
    inner, _ = unwrap(embedder)
    model = getattr(inner, "model", None)
    if model is None:
        return None
    return LanguageModel.load(model.config._name_or_path, device)


def check_no_overlap(targets: list[str], corpus: list[str]) -> None:
    """Refuse an evaluation whose corpus contains a target: restoring it would be lookup."""
    joined = "\n".join(normalize(t) for t in corpus)
    leaked = [t for t in targets if normalize(t).strip() and normalize(t).strip() in joined]
    if leaked:
        raise ValueError(f"{len(leaked)} target text(s) occur in the corpus, e.g. {leaked[0]!r}")


def evaluate(
    inverter: Inverter, targets: list[str], methods: Sequence[str] = METHODS,
    budget: int | None = None, side: Side = "passage", attacker: Inverter | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Embed each target with ``inverter``'s embedder, forget the text, restore it from the
    vector alone (by ``attacker`` when given, e.g. one without the rotation key) and score."""
    check_no_overlap(targets, inverter.corpus + (attacker.corpus if attacker else []))
    vectors = inverter.embed(targets, side)  # the only thing the restorer sees
    restorer = attacker or inverter
    report = {}
    for method in methods:
        rows = []
        for i, vector in enumerate(vectors):
            result = restorer.invert(vector, method, budget, side)
            # The cosine the service would see: the restored text through the service's embedder.
            cosine = float(inverter.embed([result.text], side)[0] @ vector) if result.text else 0.0
            rows.append({
                "bag_exact": method == "bag_of_tokens" and result.trace[0]["cosine"] > 1 - 1e-6,
                "target": targets[i], "text": result.text, "token_f1": token_f1(targets[i], result.text),
                "bleu": bleu(targets[i], result.text), "exact": exact_match(targets[i], result.text),
                "cosine": cosine, "seconds": result.seconds,
            })
            if progress:
                progress(method, i + 1)
        n = max(len(rows), 1)
        report[method] = {
            "token_f1": round(sum(r["token_f1"] for r in rows) / n, 4),
            "bleu": round(sum(r["bleu"] for r in rows) / n, 4),
            "exact": round(sum(r["exact"] for r in rows) / n, 4),
            "cosine": round(sum(r["cosine"] for r in rows) / n, 4),
            "seconds_per_sentence": round(sum(r["seconds"] for r in rows) / n, 3),
            **({"bag_exact": round(sum(r["bag_exact"] for r in rows) / n, 4)} if method == "bag_of_tokens" else {}),
            "sentences": len(rows),
            "budget": budget or DEFAULT_BUDGET[method],
            "examples": [{k: r[k] for k in ("target", "text", "token_f1", "cosine")} for r in rows[:3]],
        }
    return report
