"""Who answers a session: the teacher, or the fine-tuned student on a share of sessions.

Where a teacher answers (the extractive answerer, an OpenAI-compatible model) the loop
fine-tunes a separate student (the local model). Once the student has a promoted
version, ``student_share`` of the sessions (a canary; ``Settings.canary_fraction``, then
``POST /mlops/promote``) are answered by it. The choice hashes the session id, so a
session keeps its answerer across turns and replicas without shared state. Where the
answerer is the student itself there is one answerer, and its active version serves all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from echorag.types import BASE

# Backends that are a local language model: the student the learning loop fine-tunes,
# so what they answer is its own output ("self"); any other answerer is a teacher.
STUDENT_KINDS = frozenset({"tiny", "kanana", "hub", "local"})


@dataclass(frozen=True)
class Answerer:
    """A generator deployment as the pipeline names it: ``Generator.info()``'s name and kind."""

    name: str
    kind: str

    @property
    def is_student(self) -> bool:
        return self.kind in STUDENT_KINDS


@dataclass(frozen=True)
class Traffic:
    """The registry's routing state: the student's active version and its share of sessions."""

    version: str
    student_share: float


@dataclass(frozen=True)
class Route:
    answerer: Answerer
    adapter: str  # the adapter version it answers with (BASE: none, or a teacher)
    student: bool  # sent to the separate student deployment

    @property
    def label(self) -> str:
        """The answer's origin as a training label: the student's own, or a teacher's."""
        return "self" if self.answerer.is_student else "teacher"


def session_bucket(session_id: str) -> float:
    """A session's fixed place in [0, 1): the same on every replica and after restarts."""
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Router:
    def __init__(self, answerer: Answerer, student: Answerer | None = None) -> None:
        """``answerer``: the main generator; ``student``: the separate student deployment,
        None where the answerer is the student itself."""
        self.answerer, self.student = answerer, student

    def route(self, session_id: str, traffic: Traffic, pinned: str | None = None) -> Route:
        """``pinned``: an adapter version the request asked for. A version ``vN`` is the
        student's, so it goes to the student wherever there is one; ``base`` is the
        answerer as deployed, without fine-tuning."""
        if self.student is None:
            return Route(self.answerer, pinned or traffic.version, student=False)
        if pinned == BASE:
            return Route(self.answerer, BASE, student=False)
        if pinned:
            return Route(self.student, pinned, student=True)
        if traffic.version != BASE and session_bucket(session_id) < traffic.student_share:
            return Route(self.student, traffic.version, student=True)
        return Route(self.answerer, BASE, student=False)
