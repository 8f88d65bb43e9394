"""What the collector's database keeps, as typed records: a stored turn, a training run,
the counts, the outcome of storing a turn."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from echorag.types import Selection, Turn

LabelOrigin = Literal["teacher", "self", "corrected"]
RunStatus = Literal["running", "succeeded", "failed"]
TrainOn = Literal["teacher", "rated", "corrected", "all"]  # which labels train: echorag.learning.dataset


class StoredTurn(Turn):
    """A turn as the collector's database keeps it: its place in the data (``seq``), its
    👍/👎, an admin's correction and whether it judges candidates."""

    seq: int
    created_at: float
    feedback: int = 0
    prompt: list[dict[str, str]] | None = Field(
        None, description="The messages the answerer was served (system prompt, memory, numbered passages, "
        "question), PII scrubbed; null for a turn stored before prompts were kept (closed-book).",
    )
    backend: str = Field("", description="What answered: extractive, openai, tiny, kanana, hub, local.")
    label: LabelOrigin = Field("self", description="Where the answer comes from as a training label.")
    corrected: str | None = Field(None, description="An admin's corrected answer; the original stays in `assistant`.")
    corrected_at: float | None = None
    pool: bool = Field(False, description="In the evaluation pool: judges candidates, never trained on.")
    latency_ms: float | None = Field(None, exclude=True)  # not kept
    selection: Selection | None = Field(  # internal: what the selector learns from, not shown to admins
        None, exclude=True, description="The retrieved sentences and features the answer selector saw.")

    @property
    def closed_book(self) -> bool:
        return self.prompt is None

    @property
    def label_origin(self) -> LabelOrigin:
        """Where the label the loop learns from comes from: a correction wins."""
        return "corrected" if self.corrected is not None else self.label

    @property
    def answer(self) -> str:
        """The label: the correction where there is one, else what was answered."""
        return self.corrected if self.corrected is not None else self.assistant

    def messages(self, answer: str | None = None) -> list[dict[str, str]]:
        """The turn as the answerer saw it, with its label (or ``answer``): the served
        messages, or for an old turn the question alone (chat-messages format, what the
        chat template takes)."""
        prompt = self.prompt if self.prompt is not None else [{"role": "user", "content": self.user}]
        return [*prompt, {"role": "assistant", "content": self.answer if answer is None else answer}]

    def export_line(self, answer: str | None = None) -> str:
        """The turn as a line of an exported training set (and what erasure looks for there)."""
        return json.dumps({"messages": self.messages(answer)}, ensure_ascii=False)


class Run(BaseModel):
    id: int
    status: RunStatus
    from_seq: int
    to_seq: int
    version: str | None = None
    started_at: float
    ended_at: float | None = None
    attempts: int = 1
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class Counts(BaseModel):
    total: int = Field(..., description="Stored turns.")
    liked: int
    disliked: int
    max_seq: int = Field(..., description="Highest seq ever assigned (survives clear()).")
    filtered: dict[str, int] = Field(default_factory=dict, description="Turns not stored, or scrubbed, by reason.")


@dataclass(frozen=True)
class AddResult:
    stored: bool
    reason: str | None = None  # "empty" | "too_short" | "duplicate" when not stored
    seq: int | None = None
    pii: list[str] = field(default_factory=list)
