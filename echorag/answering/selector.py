"""The learned answer selector: which retrieved sentences answer a question, and when none does.

Every sentence of the document passages (``types.Unit``) becomes one row of
``FEATURES``: its e5 cosines with the question (the sentence's and its passage's), the
IDF-weighted share of the question's Kiwi morphemes it holds, the retriever's fused score
and rank of its passage, its position and its neighbours' coverage, what the question
asks for (a year, an amount, a name…) and whether the sentence states it, the verdict of
the hand-written evidence rule, and the same measures relative to the best sentence at
hand. A logistic regression (scikit-learn) turns a row into the probability that the
sentence answers the question; the answerer quotes the most probable sentences. A second
one, over ``QUESTION_FEATURES`` (the two best probabilities and what holds for the whole
question: its best coverage, cosine and evidence, whether it asks for an amount, a date or
a name, the share of its terms no sentence has), gives the probability that the question
is answerable from these passages at all. The answer is ``NO_ANSWER`` when the
hand-written evidence rule finds no sentence strong enough (``evidence_floor``) or that
probability is below the version's ``threshold`` (chosen out of fold, see ``fit``).

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

from echorag.answering.evidence import RULE_THRESHOLD, asks_for_something, unit_evidence
from echorag.types import Analysis, Selection

FEATURES = (
    "coverage", "cosine", "evidence", "states_asked", "asks_something", "states_what_is_asked",
    "rank_prior", "best_passage", "first_sentence", "log_chars", "coverage_gap", "cosine_gap",
    "best_coverage", "best_cosine", "neighbour_coverage", "log_question_terms", "passage_score",
    "passage_cosine", "terms_absent", "coverage_x_cosine", "evidence_gap", "best_evidence",
    "rule_answers", "rule_passes_sentence",
)
# The question's answerability, read from its sentences' rows and their probabilities.
QUESTION_FEATURES = (
    "best_probability", "second_probability", "best_coverage", "best_cosine", "best_evidence",
    "asks_something", "rule_answers", "terms_absent",
)
MAX_REFUSED = 0.05  # share of answerable questions a threshold may refuse
BASE = "base"
_EVIDENCE = FEATURES.index("evidence")
_QUESTION_COLUMNS = [FEATURES.index(name) for name in QUESTION_FEATURES[2:]]


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


def question_row(rows: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """``QUESTION_FEATURES`` of one question: its two most probable sentences and what
    holds for the question as a whole (the same in every row)."""
    top = np.sort(probabilities)[::-1]
    whole = np.asarray(rows)[:, _QUESTION_COLUMNS].max(0)
    return np.concatenate([[top[0], top[1] if len(top) > 1 else 0.0], whole])


@dataclass(frozen=True)
class Logistic:
    """A fitted logistic regression: standardise, then a linear score through the sigmoid."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.float64)
        if len(rows) == 0:
            return np.zeros(0)
        z = (rows - self.mean) / self.scale @ np.asarray(self.coef) + self.intercept
        return 1 / (1 + np.exp(-z))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, c: float = 1.0) -> "Logistic":
        from sklearn.linear_model import LogisticRegression  # training only: serving reads JSON

        x = np.asarray(x, np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y, sample_weight=weights)
        return cls(tuple(mean), tuple(scale), tuple(model.coef_[0]), float(model.intercept_[0]))

    @classmethod
    def from_dict(cls, raw: dict) -> "Logistic":
        return cls(tuple(raw["mean"]), tuple(raw["scale"]), tuple(raw["coef"]), float(raw["intercept"]))


@dataclass(frozen=True)
class AnswerSelector:
    """A fitted selector version: which sentence answers (``sentence``), and whether any
    does (``question``: the probability that the question is answerable here)."""

    version: str
    sentence: Logistic  # over FEATURES: this sentence answers the question
    question: Logistic | None  # over QUESTION_FEATURES; None: the evidence floor alone decides
    threshold: float  # answerability below which the answer is NO_ANSWER
    evidence_floor: float = RULE_THRESHOLD  # and the best evidence (echorag.answering.evidence) below which
    features: tuple[str, ...] = FEATURES
    question_features: tuple[str, ...] = QUESTION_FEATURES
    parent: str | None = None
    fitted_on: dict = field(default_factory=dict)  # what it learnt from: counts, sources

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.sentence(rows)

    def answerability(self, rows: np.ndarray, probabilities: np.ndarray) -> float:
        """The probability that some sentence here answers the question (1 without a model)."""
        if self.question is None or len(rows) == 0:
            return 1.0
        return float(self.question(question_row(rows, probabilities)[None])[0])

    def verdict(self, rows: np.ndarray) -> tuple[np.ndarray, bool]:
        """Each sentence's probability of answering, and whether to abstain (none has the
        evidence the rule asks for, or the question's answerability is below the threshold)."""
        p = self.probabilities(rows)
        if _rule_declines(rows, self.evidence_floor):
            return p, True
        return p, self.answerability(rows, p) < self.threshold

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
        if tuple(raw.get("features", ())) != FEATURES or tuple(raw.get("question_features", ())) != QUESTION_FEATURES:
            raise ValueError(f"selector {raw.get('version')} was fitted on other features: {raw.get('features')}")
        raw["sentence"] = Logistic.from_dict(raw["sentence"])
        raw["question"] = Logistic.from_dict(raw["question"]) if raw.get("question") else None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

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


def _out_of_fold(count: int, folds: int, train, predict) -> list:
    """``predict(model, i)`` for every item ``i`` by a model ``train(kept indices)`` fitted
    without it (items interleaved into folds); None where a fold cannot be fitted."""
    out: list = [None] * count
    order = np.arange(count)
    for fold in range(folds):
        model = train([i for i in order if i % folds != fold])
        if model is not None:
            for i in order[order % folds == fold]:
                out[i] = predict(model, i)
    return out


def _sentence_model(examples: list[Example], c: float) -> Logistic | None:
    chosen = [e for e in examples if len(e.rows)]
    if not any(e.labels.any() for e in chosen) or all(e.labels.all() for e in chosen):
        return None
    return Logistic.fit(np.vstack([e.rows for e in chosen]), np.concatenate([e.labels for e in chosen]),
                        np.concatenate([np.full(len(e.rows), e.weight) for e in chosen]), c)


def _question_model(rows: np.ndarray, answerable: np.ndarray, c: float) -> Logistic | None:
    return Logistic.fit(rows, answerable, c=c) if 0 < answerable.sum() < len(answerable) else None


def fit(examples: list[Example], version: str, parent: str | None = None, c: float = 1.0,
        folds: int = 5, fitted_on: dict | None = None) -> AnswerSelector:
    """Fit a selector in two stages, each judged out of fold (questions grouped, so a
    question's sentences never train the model that scores them):

    1. the sentence model, on every labelled sentence;
    2. the question model, on the questions known to be answerable or not, from their
       out-of-fold sentence probabilities (what a new question's will look like). Its
       threshold is the highest that refuses at most ``MAX_REFUSED`` of the answerable
       questions out of fold, kept only where it declines more unanswerable questions
       beyond the evidence floor than it refuses answerable ones (else 0: the floor decides).
    """
    sentence = _sentence_model(examples, c)
    if sentence is None:
        raise ValueError("a selector needs sentences that answer and sentences that do not")
    oof = _out_of_fold(len(examples), folds, lambda kept: _sentence_model([examples[i] for i in kept], c),
                       lambda model, i: model(examples[i].rows))
    known = [i for i, e in enumerate(examples) if e.answerable is not None and len(e.rows) and oof[i] is not None]
    rows = np.array([question_row(examples[i].rows, oof[i]) for i in known]).reshape(len(known), len(QUESTION_FEATURES))
    answerable = np.array([bool(examples[i].answerable) for i in known])
    question = _question_model(rows, answerable, c)
    answerability = _out_of_fold(len(known), folds, lambda kept: _question_model(rows[kept], answerable[kept], c),
                                 lambda model, j: float(model(rows[j:j + 1])[0]))
    scored = [(p, answerable[j], _rule_declines(examples[known[j]].rows, RULE_THRESHOLD))
              for j, p in enumerate(answerability) if p is not None]
    ranked = sorted(p for p, is_answerable, _ in scored if is_answerable)
    threshold = ranked[int(math.floor(MAX_REFUSED * len(ranked)))] - 1e-6 if ranked else 0.0
    # What the threshold adds to the floor, out of fold: unanswerable declined, answerable refused.
    added = [(p < threshold and not floor, is_answerable) for p, is_answerable, floor in scored]
    gain = sum(a for a, is_answerable in added if not is_answerable)
    cost = sum(a for a, is_answerable in added if is_answerable)
    kept = question is not None and gain > cost
    counts = {"questions": len(examples), "answerable": sum(e.answerable is True for e in examples),
              "unanswerable": sum(e.answerable is False for e in examples),
              "sentences": int(sum(len(e.rows) for e in examples)),
              "positive_sentences": int(sum(e.labels.sum() for e in examples)),
              "threshold_out_of_fold": {"threshold": round(threshold, 6), "unanswerable_declined": gain,
                                        "answerable_refused": cost, "kept": kept}}
    return AnswerSelector(version, sentence, question if kept else None, round(threshold, 6) if kept else 0.0,
                          parent=parent, fitted_on={**counts, **(fitted_on or {})})
