"""How the learning loop teaches the answer selector (``echorag.answering.selector``) from a deployment.

Every collected turn keeps what the selector saw (``Selection``: the retrieved sentences
and their features). A turn becomes a training example when something says which of
those sentences answer its question:

- an admin's correction: the sentences that contain the corrected answer (or that the
  correction quotes) answer it, the others do not; a correction to ``NO_ANSWER`` teaches
  abstention: none answers (a correction no retrieved sentence holds says nothing of them:
  it may be the admin's own words);
- 👍: the sentences the answer drew on answer it (all of the others do not); 👍 on
  ``NO_ANSWER``: none answers;
- 👎: the sentences the answer drew on do not answer it (nothing is said of the others);
- a teacher's answer (another model answered, ``label == "teacher"``): as 👍.

A run fits a candidate on the base version's own data plus every example so far (replay;
the evaluation pool's turns never train), and the gate compares it with the active
version on the pool's examples: how often the most probable sentence answers (``hits``),
how often an unanswerable question is declined, how often an answerable one is. It is
promoted when it is at least as good on the first two, refuses at most ``tolerance`` more
answerable ones, and the pool has at least ``min_examples`` labelled questions.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from echorag.answering.prompts import NO_ANSWER
from echorag.answering.selector import AnswerSelector, Example, fit
from echorag.evaluation.answer_metrics import normalize_answer, quoted_pieces
from echorag.learning.events import Event, selector_judged, selector_rolled_back
from echorag.learning.jobs import NotFound
from echorag.learning.records import StoredTurn
from echorag.learning.selector_registry import SelectorRegistry

FEEDBACK_WEIGHT = 2.0  # a deployment's labels weigh more than the base's dev questions


def _declines(text: str) -> bool:
    return normalize_answer(NO_ANSWER) in normalize_answer(text)


def drawn_on(answer: str, sentence: str) -> bool:
    """Whether an answer quotes or states this sentence: one of its pieces between ``[n]``
    (a quote, the clauses it was trimmed to, a short answer such as "1444년") is inside the
    sentence, or the whole sentence is inside the answer (a longer answer that quotes it).
    Compared without spacing and punctuation; a paraphrase draws on nothing."""
    sentence = normalize_answer(sentence)
    if not sentence:
        return False
    pieces = [normalize_answer(p) for p in quoted_pieces(answer)]
    return sentence in normalize_answer(answer) or any(len(p) >= 2 and p in sentence for p in pieces)


# Turns whose sentences something labels: a correction, 👍/👎, or a teacher model's answer
# (the extractive answerer is the selector itself: its own choices teach it nothing).
_LABELLED = "selection IS NOT NULL AND (corrected IS NOT NULL OR feedback != 0 OR (label = 'teacher' AND backend != 'extractive'))"
MAX_TURNS = 20_000  # the newest labelled turns a fit reads


def labelled_turns(store) -> list[StoredTurn]:
    return store.select(_LABELLED, limit=MAX_TURNS, newest_first=True)


def example_of(turn: StoredTurn) -> Example | None:
    """The turn as a selector example, or None when nothing labels its sentences."""
    seen = turn.selection
    if seen is None or not seen.sentences:
        return None
    rows = np.asarray(seen.rows, np.float32)
    if turn.corrected is not None:
        if _declines(turn.corrected):
            return Example(rows, np.zeros(len(rows)), False, FEEDBACK_WEIGHT)
        labels = np.array([float(drawn_on(turn.corrected, s)) for s in seen.sentences])
        return Example(rows, labels, True, FEEDBACK_WEIGHT) if labels.any() else None
    if turn.feedback == 1 or (turn.label == "teacher" and turn.backend != "extractive" and turn.feedback == 0):
        weight = FEEDBACK_WEIGHT if turn.feedback == 1 else 1.0
        if _declines(turn.assistant):
            return Example(rows, np.zeros(len(rows)), False, weight)
        labels = np.array([float(drawn_on(turn.assistant, s)) for s in seen.sentences])
        return Example(rows, labels, True, weight) if labels.any() else None
    if turn.feedback == -1 and not _declines(turn.assistant):
        quoted = [i for i, s in enumerate(seen.sentences) if drawn_on(turn.assistant, s)]
        if quoted:  # only those are known not to answer
            return Example(rows[quoted], np.zeros(len(quoted)), None, FEEDBACK_WEIGHT)
    return None


def base_examples() -> list[Example]:
    """The examples the base version was fitted on (shipped beside it), for replay."""
    data = resources.files("echorag").joinpath("data/selector_base_examples.npz").read_bytes()
    with np.load(io.BytesIO(data)) as arrays:
        rows, labels, answerable, sizes = (arrays[k] for k in ("rows", "labels", "answerable", "sizes"))
    bounds = np.cumsum([0, *sizes])
    return [Example(rows[a:b], labels[a:b], bool(flag)) for a, b, flag in zip(bounds, bounds[1:], answerable)]


def save_examples(examples: list[Example], path) -> None:
    np.savez_compressed(path, rows=np.vstack([e.rows for e in examples]).astype(np.float32),
                        labels=np.concatenate([e.labels for e in examples]).astype(np.float32),
                        answerable=np.array([bool(e.answerable) for e in examples]),
                        sizes=np.array([len(e.rows) for e in examples]))


def _fingerprint(turns: list[StoredTurn]) -> str:
    """Which turns say what: a new version is fitted only when this changes."""
    digest = hashlib.sha256()
    for t in sorted(turns, key=lambda t: t.id):
        digest.update(f"{t.id}\x1f{t.feedback}\x1f{t.corrected}\x1f{t.pool}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SelectorScore:
    """A version on the pool's examples."""

    hits: float | None  # answerable questions whose most probable sentence answers
    declined: float | None  # unanswerable questions declined
    refused: float | None  # answerable questions declined
    questions: int

    def as_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "unanswerable_declined": self.declined, "answerable_refused": self.refused,
                "questions": self.questions}


def _mean(values: list[bool]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def score(selector: AnswerSelector, examples: list[Example]) -> SelectorScore:
    hits, declined, refused = [], [], []
    for e in examples:
        if e.answerable is None or not len(e.rows):
            continue
        p, abstains = selector.verdict(e.rows)
        if e.answerable:
            refused.append(bool(abstains))
            hits.append(not abstains and bool(e.labels[int(np.argmax(p))]))
        else:
            declined.append(bool(abstains))
    return SelectorScore(_mean(hits), _mean(declined), _mean(refused), len(hits) + len(declined))


@dataclass(frozen=True)
class SelectorOutcome:
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _at_least(candidate: float | None, active: float | None, tolerance: float = 0.0) -> bool:
    return candidate is None or active is None or candidate >= active - tolerance


def learn(turns: list[StoredTurn], registry: SelectorRegistry, min_examples: int = 20,
          tolerance: float = 0.05) -> SelectorOutcome | None:
    """Fit, judge and register a candidate from every labelled turn; None when no turn
    outside the pool is labelled (nothing new to learn)."""
    train = [e for t in turns if not t.pool and (e := example_of(t)) is not None]
    pool = [e for t in turns if t.pool and (e := example_of(t)) is not None]
    labels = _fingerprint(turns)
    latest = registry.history()[-1]
    if not train or latest.get("fitted_on", {}).get("labels") == labels:
        return None  # nothing to learn, or nothing new since the last version (a retried run)
    active = registry.load_active()
    version = registry.next_version()
    candidate = fit(base_examples() + train, version, parent=active.version,
                    fitted_on={"feedback_questions": len(train), "pool_questions": len(pool), "labels": labels,
                               "base_questions": "dev half of the bundled questions"})
    mine, theirs = score(candidate, pool), score(active, pool)
    metrics = {"pool": mine.questions, "min_examples": min_examples, "candidate": mine.as_dict(),
               "active": theirs.as_dict(), "active_version": active.version, "trained_on": len(train)}
    if mine.questions < min_examples:
        promoted, reason = False, f"the pool holds {mine.questions} labelled questions, fewer than {min_examples}"
    elif not _at_least(mine.hits, theirs.hits) or not _at_least(mine.declined, theirs.declined):
        promoted, reason = False, (f"worse than {active.version} on the pool: answers {mine.hits} vs {theirs.hits}, "
                                   f"unanswerable declined {mine.declined} vs {theirs.declined}")
    elif not _at_least(-(mine.refused or 0), -(theirs.refused or 0), tolerance):
        promoted, reason = False, f"refuses answerable questions {mine.refused} vs {theirs.refused}"
    else:
        promoted, reason = True, (f"answers {mine.hits} vs {theirs.hits}, unanswerable declined {mine.declined} vs "
                                  f"{theirs.declined} on {mine.questions} pool questions")
    registry.add(candidate, "promoted" if promoted else "rejected", metrics | {"reason": reason})
    return SelectorOutcome(version, promoted, reason, metrics)


def learn_in_run(store, selectors: SelectorRegistry, min_examples: int,
                 record: Callable[[Event], Event]) -> dict[str, Any] | None:
    """A run's first step: fit, judge and register a version from every labelled turn, and
    tell it; its outcome, for the run's metrics (None: no label is new since the last one)."""
    parent = selectors.active()
    outcome = learn(labelled_turns(store), selectors, min_examples)
    if outcome is None:
        return None
    record(selector_judged(outcome.version, outcome.promoted, outcome.reason, parent, outcome.metrics["trained_on"]))
    return {"version": outcome.version, "promoted": outcome.promoted, "reason": outcome.reason, **outcome.metrics}


def rollback(selectors: SelectorRegistry, version: str | None, record: Callable[[Event], Event]) -> str:
    """Serve ``version`` (default: the previous one), and tell it."""
    before = selectors.active()
    try:
        after = selectors.rollback(version)
    except KeyError as exc:
        raise NotFound(str(exc.args[0]), {"version": version}) from None
    record(selector_rolled_back(before, after))
    return after


def promote(selectors: SelectorRegistry, version: str) -> str:
    """Serve ``version``, one the gate held back too."""
    try:
        return selectors.promote(version)
    except KeyError as exc:
        raise NotFound(str(exc.args[0]), {"version": version}) from None
