"""Small types shared across the Ray boundary: what the ingress, the generator and the
collector exchange. Plain Python only (no torch, no peft), so the ingress process never
loads a model library just to name an adapter or hold a turn."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from echorag.evidence import Analysis
    from echorag.schemas import SearchResult

BASE = "base"  # the adapter version that means "no adapter": the bare base model


@dataclass
class Generation:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ChatContext:
    """What retrieval gives an answer: the passages and past turns found, and their
    analysis (every sentence scored by the answer selector; it says when none answers)."""

    results: list[SearchResult]
    analysis: Analysis

    @property
    def abstain(self) -> bool:
        return self.analysis.abstain


@dataclass
class Selection:
    """What the answer selector saw for one turn (echorag.selector): kept with the turn, so
    feedback on it labels these very sentences and features (nothing is retrieved again)."""

    selector: str  # the version that scored them
    sentences: list[str]
    rows: list[list[float]]  # echorag.selector.FEATURES of each sentence


@dataclass
class Turn:
    """One answered exchange, as handed to the collector and the memory index."""

    id: str
    session_id: str
    user_id: str
    user: str
    assistant: str
    adapter_version: str
    model: str
    sources: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    # The exact messages the answerer received (None: not known, e.g. an imported turn),
    # what answered (extractive, openai, tiny, kanana, ...) and the answer's origin as a
    # training label: "teacher" when another model than the student answered, else "self".
    prompt: list[dict[str, str]] | None = None
    backend: str = ""
    label: str = "self"
    latency_ms: float | None = None  # from the request to the answer, before collection
    selection: Selection | None = None  # None: no documents were analysed (small talk, old turns)

    def memory_text(self) -> str:
        """What the ``memory`` collection keeps of the turn (its vector is the question's)."""
        return f"질문: {self.user}\n답변: {self.assistant}"

    def memory_metadata(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "user_id": self.user_id, "created_at": self.created_at}
