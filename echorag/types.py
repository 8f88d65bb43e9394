"""Small types shared across the Ray boundary: what the ingress, the generator and the
collector exchange, and the bodies the HTTP contract shares with the core (a search result,
the learning loop's state, an ingestion). Plain Python and pydantic only (no torch, no peft),
so the ingress process never loads a model library just to name an adapter or hold a turn."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

BASE = "base"  # the adapter version that means "no adapter": the bare base model


class SearchResult(BaseModel):
    """A passage found for a question, with its fused score: a document chunk or a remembered
    turn. What retrieval returns, the prompt numbers and ``/chat`` shows as a source."""

    id: str
    text: str
    score: float
    collection: Literal["documents", "memory"]
    metadata: dict[str, Any] = Field(default_factory=dict)


class MlopsInfo(BaseModel):
    """The learning loop as one answer saw it: whether its turn was kept, and what serves."""

    collected: bool = False
    total_collected: int = 0
    new_data_count: int = 0
    should_train: bool = False
    training_queued: bool = False
    current_version: str = "base"
    selector_version: str | None = Field(None, description="The answer selector version that chose the answer.")


class DocumentsResponse(BaseModel):
    """What adding documents did: their ids and the chunks indexed."""

    ids: list[str] = Field(..., description="Ids of the documents as stored.")
    chunks: int = Field(..., description="Number of chunks indexed.")
    total_documents: int = Field(..., description="Chunks in the documents collection after ingestion.")


@dataclass(frozen=True)
class EmbedderInfo:
    """What an embedder replica serves: the vector store is checked against it."""

    id: str
    dim: int


@dataclass(frozen=True)
class ProcessInfo:
    """Which process holds an actor, and since when (both change when Ray restarts it)."""

    pid: int
    started_at: float


@dataclass(frozen=True)
class ModelInfo:
    """What a generator (or student) replica serves, as ``/health`` reports it."""

    name: str
    kind: str  # kanana, small, tiny, local, openai, extractive
    demo: bool  # the tiny offline demo model
    device: str
    engine: str | None  # vllm or transformers for a local model, else None


@dataclass
class Generation:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Selection:
    """What the answer selector saw for one turn (echorag.answering.selector): kept with the turn, so
    feedback on it labels these very sentences and features (nothing is retrieved again)."""

    selector: str  # the version that scored them
    sentences: list[str]
    rows: list[list[float]]  # echorag.answering.selector.FEATURES of each sentence


@dataclass
class Unit:
    """One sentence of a document passage, scored against the question."""

    passage: int  # position of its passage in the list given
    index: int  # position of the sentence in its passage
    number: int  # the passage's [n] in the prompt
    rank: int  # rank of that passage among the document passages (0 = best)
    text: str
    terms: frozenset[str]
    amount_ok: bool  # states the kind of amount the question asks for (or none is asked)
    coverage: float = 0.0
    cosine: float | None = None  # calibrated to [0, 1]; None without vectors
    passage_score: float = 0.0  # the retriever's fused score of its passage
    passage_cosine: float = 0.0  # calibrated cosine of the question and the whole passage
    probability: float = 0.0  # that it answers the question (echorag.answering.selector)


@dataclass
class Analysis:
    """A question against its retrieved passages, sentence by sentence (echorag.answering.evidence):
    computed once, in the retriever, and what every answerer consumes (the extractive one
    quotes from it)."""

    question: str
    terms: tuple[str, ...]  # the question's content morphemes
    weights: dict[str, float]  # their IDF over the units
    units: list[Unit]
    abstain: bool = False  # no sentence answers it: NO_ANSWER (set by the selector)
    selection: Selection | None = None  # what the selector saw, kept with the turn

    def ranked(self) -> list[Unit]:
        """The sentences, most probable answer first (ties: the better-ranked passage)."""
        return sorted(self.units, key=lambda u: (-u.probability, u.rank, u.index))


@dataclass
class ChatContext:
    """What retrieval gives an answer: the passages and past turns found, and their
    analysis (every sentence scored by the answer selector; it says when none answers)."""

    results: list[SearchResult]
    analysis: Analysis


class MemoryTurn(BaseModel):
    """One earlier exchange of a session, as the prompt replays it (short-term memory)."""

    user: str
    assistant: str


class Turn(BaseModel):
    """One answered exchange, as handed to the collector and the memory index (the
    collector's ``StoredTurn`` extends it with what the database adds)."""

    id: str
    session_id: str
    user_id: str
    user: str
    assistant: str
    adapter_version: str
    model: str
    sources: list[str] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
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
