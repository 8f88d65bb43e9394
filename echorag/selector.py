"""The learned answer selector: which retrieved sentences answer a question, and when none does.

Every sentence of the document passages (``types.Unit``) becomes one row of
``FEATURES``: its e5 cosines with the question (the sentence's and its passage's), the
IDF-weighted share of the question's Kiwi morphemes it holds, the retriever's fused score
and rank of its passage, its position and its neighbours' coverage, what the question
asks for (a year, an amount, a name…) and whether the sentence states it, the verdict of
the hand-written evidence rule, and the same measures relative to the best sentence at
hand. A logistic regression (scikit-learn) turns a row into the probability that the
sentence answers the question. The answerer quotes the most probable sentences and
answers ``NO_ANSWER`` when the hand-written evidence rule finds no sentence strong enough
(``evidence_floor``) or the best is below the version's own ``threshold`` (see ``fit``:
kept only where, out of fold, it declines more than it wrongly refuses; the base's is 0).

A selector is a version like an adapter: a small JSON file (its features, scaler,
coefficients, threshold and what it was fitted on). The base version ships with the
package (``data/selector_base.json``, fitted by ``python bench/selector_fit.py`` on the
dev half of the bundled questions); the learning loop fits later versions from feedback.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from echorag.evidence import RULE_THRESHOLD, asks_for_something, unit_evidence
from echorag.types import Analysis, Selection

FEATURES = (
    "coverage", "cosine", "evidence", "states_asked", "asks_something", "states_what_is_asked",
    "rank_prior", "best_passage", "first_sentence", "log_chars", "coverage_gap", "cosine_gap",
    "best_coverage", "best_cosine", "neighbour_coverage", "log_question_terms", "passage_score",
    "passage_cosine", "terms_absent", "coverage_x_cosine", "evidence_gap", "best_evidence",
    "rule_answers", "rule_passes_sentence",
)
MAX_REFUSED = 0.05  # share of answerable questions a threshold may refuse
BASE = "base"
_EVIDENCE = FEATURES.index("evidence")


def _rule_declines(rows: np.ndarray, floor: float) -> bool:
    """The hand-written rule: no sentence's evidence reaches ``floor`` (or no sentence)."""
    return len(rows) == 0 or bool(np.asarray(rows)[:, _EVIDENCE].max() < floor)


def features(analysis: Analysis) -> np.ndarray:
    """One row of ``FEATURES`` per sentence of the analysis (shape ``(units, features)``)."""
    units = analysis.units
    if not units:
        return np.zeros((0, len(FEATURES)), np.float32)
    coverage = np.array([u.coverage for u in units])
    cosine = np.array([u.cosine or 0.0 for u in units])
    evidence = np.array([unit_evidence(u) for u in units])
    asks = float(asks_for_something(analysis.question))
    terms = analysis.terms
    absent = sum(1 for t in terms if not any(t in u.terms for u in units)) / len(terms) if terms else 0.0
    by_place = {(u.passage, u.index): u for u in units}
    rows = []
    for u, cov, cos, ev in zip(units, coverage, cosine, evidence):
        neighbours = [by_place.get((u.passage, u.index + d)) for d in (-1, 1)]
        rows.append([
            cov, cos, ev, float(u.amount_ok), asks, asks * float(u.amount_ok),
            1 / (1 + u.rank), float(u.rank == 0), float(u.index == 0), math.log(len(u.text) + 1),
            cov - coverage.max(), cos - cosine.max(), coverage.max(), cosine.max(),
            max((n.coverage for n in neighbours if n), default=0.0), math.log1p(len(terms)), u.passage_score,
            u.passage_cosine, absent, cov * cos, ev - evidence.max(), evidence.max(),
            float(evidence.max() >= RULE_THRESHOLD), float(ev >= RULE_THRESHOLD),
        ])
    return np.asarray(rows, np.float32)


@dataclass(frozen=True)
class AnswerSelector:
    """A fitted selector version: standardise, then a logistic regression."""

    version: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float  # the best sentence's probability below which the answer is NO_ANSWER
    evidence_floor: float = RULE_THRESHOLD  # and the best evidence (echorag.evidence) below which
    features: tuple[str, ...] = FEATURES
    parent: str | None = None
    fitted_on: dict = field(default_factory=dict)  # what it learnt from: counts, sources

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0)
        z = (np.asarray(rows, np.float64) - self.mean) / self.scale @ np.asarray(self.coef) + self.intercept
        return 1 / (1 + np.exp(-z))

    def verdict(self, rows: np.ndarray) -> tuple[np.ndarray, bool]:
        """Each sentence's probability of answering, and whether to abstain (no sentence
        reaches the threshold, or none has the evidence the rule asks for)."""
        p = self.probabilities(rows)
        return p, _rule_declines(rows, self.evidence_floor) or bool(p.max() < self.threshold)

    def decide(self, analysis: Analysis) -> Analysis:
        """Score the analysis's sentences in place and say whether it abstains."""
        rows = features(analysis)
        probabilities, analysis.abstain = self.verdict(rows)
        for unit, p in zip(analysis.units, probabilities):
            unit.probability = float(p)
        analysis.selection = Selection(self.version, [u.text for u in analysis.units], rows.round(5).tolist())
        return analysis

    # -- versions as files ------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "AnswerSelector":
        raw = json.loads(text)
        selector = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        if selector.features != FEATURES:
            raise ValueError(f"selector {selector.version} was fitted on other features: {selector.features}")
        return selector

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "AnswerSelector":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def base(cls) -> "AnswerSelector":
        """The version that ships with EchoRAG."""
        return cls.from_json(resources.files("echorag").joinpath("data/selector_base.json").read_text("utf-8"))


@dataclass
class Example:
    """One question's sentences as the selector saw them, and which of them answer it.
    Every row negative on an unanswerable question teaches abstention."""

    rows: np.ndarray
    labels: np.ndarray  # 1: this sentence answers the question
    answerable: bool | None  # None: not known (a 👎 says only that its quotes are wrong)
    weight: float = 1.0


def fit(examples: list[Example], version: str, parent: str | None = None, c: float = 1.0,
        folds: int = 5, fitted_on: dict | None = None) -> AnswerSelector:
    """Fit a selector and choose its threshold on out-of-fold probabilities (questions
    grouped, so a question's sentences never train the model that scores them): the highest
    that refuses at most ``MAX_REFUSED`` of the answerable questions, kept only where, out
    of fold, it declines more unanswerable questions beyond the evidence floor than it
    refuses answerable ones (else 0: the floor alone decides)."""
    from sklearn.linear_model import LogisticRegression  # training only: serving reads JSON

    def train(chosen: list[Example]):
        x = np.vstack([e.rows for e in chosen if len(e.rows)]).astype(np.float64)
        y = np.concatenate([e.labels for e in chosen if len(e.rows)])
        w = np.concatenate([np.full(len(e.rows), e.weight) for e in chosen if len(e.rows)])
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y, sample_weight=w)
        return AnswerSelector(version, tuple(mean), tuple(scale), tuple(model.coef_[0]), float(model.intercept_[0]),
                              0.5, parent=parent)

    best: list[float] = [0.0] * len(examples)
    order = np.arange(len(examples))
    for fold in range(folds):
        held = order[order % folds == fold]
        kept = [examples[i] for i in order if i % folds != fold]
        if not any(e.labels.any() for e in kept):
            continue
        model = train(kept)
        for i in held:
            probabilities = model.probabilities(examples[i].rows)
            best[i] = float(probabilities.max()) if len(probabilities) else 0.0
    answerable = sorted(b for b, e in zip(best, examples) if e.answerable)
    threshold = answerable[int(math.floor(MAX_REFUSED * len(answerable)))] - 1e-6 if answerable else 0.0
    # What the threshold adds to the floor, out of fold: unanswerable declined, answerable refused.
    floor = [_rule_declines(e.rows, RULE_THRESHOLD) for e in examples]
    added = [b < threshold and not f for b, f in zip(best, floor)]
    gain = sum(a for a, e in zip(added, examples) if e.answerable is False)
    cost = sum(a for a, e in zip(added, examples) if e.answerable is True)
    threshold_kept = gain > cost
    final = train(examples)
    counts = {"questions": len(examples), "answerable": sum(e.answerable is True for e in examples),
              "sentences": int(sum(len(e.rows) for e in examples)),
              "positive_sentences": int(sum(e.labels.sum() for e in examples)),
              "threshold_out_of_fold": {"threshold": round(threshold, 6), "unanswerable_declined": gain,
                                        "answerable_refused": cost, "kept": threshold_kept}}
    return AnswerSelector(version, final.mean, final.scale, final.coef, final.intercept,
                          round(threshold, 6) if threshold_kept else 0.0, parent=parent,
                          fitted_on={**counts, **(fitted_on or {})})
