"""The HTTP contract: every request and response body as a pydantic model."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from echorag.inversion.results import InvertResponse, InvertStep, Method, Side  # noqa: F401  (part of the contract)
from echorag.korean import normalize
from echorag.types import DocumentsResponse, MemoryTurn, MlopsInfo, SearchResult  # noqa: F401  (part of the contract)


def _clean(text: str) -> str:
    text = normalize(text).strip()
    if not text:
        raise ValueError("must not be empty or whitespace")
    return text


class ChatRequest(BaseModel):
    message: str = Field(..., description="The user's message (Korean or any language).")
    user_id: str = Field(
        "anonymous", min_length=1, max_length=128,
        description="A label only: it never finds or grants access to data. With api_keys or "
        "trusted_header the key or the proxy decides the user and this is ignored.",
    )
    session_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="A session this server issued (a previous response's session_id, or POST /sessions); "
        "omit it to start a new private session. An id the server did not issue to you is a 404.",
    )
    adapter_version: str | None = Field(
        None, description="Pin an adapter version (e.g. 'v2' or 'base'); default: the active one."
    )

    _clean_message = field_validator("message")(_clean)


class Timing(BaseModel):
    """Seconds spent per stage of one request."""

    memory: float = 0.0
    embedding: float = 0.0
    retrieval: float = 0.0
    generation: float = 0.0
    collection: float = 0.0
    total: float = 0.0


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatResponse(BaseModel):
    response: str
    search_results: list[SearchResult]
    memory_content: list[MemoryTurn] = Field(
        default_factory=list, description="Short-term memory of this session used for the answer."
    )
    timing: Timing
    mlops_info: MlopsInfo
    model: str
    adapter_version: str
    session_id: str
    turn_id: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    abstained: bool = Field(
        False, description="True when the documents did not support an answer: the response is the "
        "fixed NO_ANSWER text and no model was called (the answer selector found no sentence that answers).",
    )


class StreamEvent(BaseModel):
    """One server-sent event of ``/chat/stream``: ``event`` names it, in the frame and in its data."""

    event: str

    def sse(self) -> str:
        # json.dumps, not model_dump_json: the bytes clients have always read
        # (", " and ": " separators, Python's float repr).
        return f"event: {self.event}\ndata: {json.dumps(self.model_dump(), ensure_ascii=False)}\n\n"


class SourcesEvent(StreamEvent):
    """First: what the answer draws on, before any token."""

    event: Literal["sources"] = "sources"
    search_results: list[SearchResult]
    adapter_version: str
    model: str


class TokenEvent(StreamEvent):
    event: Literal["token"] = "token"
    text: str


class DoneEvent(StreamEvent):
    """Last: the whole ``/chat`` response, once the turn is collected."""

    event: Literal["done"] = "done"
    response: ChatResponse


class ErrorEvent(StreamEvent):
    """Instead of ``done`` when answering failed: a message for the user."""

    event: Literal["error"] = "error"
    error: str


ChatEvent = SourcesEvent | TokenEvent | DoneEvent  # what ChatPipeline.chat_stream yields


class DocumentIn(BaseModel):
    id: str | None = Field(None, min_length=1, max_length=256)
    text: str
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)

    _clean_text = field_validator("text")(_clean)


class DocumentsRequest(BaseModel):
    documents: list[DocumentIn] = Field(..., min_length=1, max_length=10_000)


class MemoryResponse(BaseModel):
    session_id: str
    turns: list[MemoryTurn]
    max_turns: int


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    model: str
    model_kind: Literal["kanana", "tiny", "hub", "local", "extractive", "openai"]
    demo_model: bool = Field(..., description="True when the tiny offline demo model serves.")
    embedder: str
    device: str
    engine: Literal["vllm", "transformers"] | None = Field(
        None, description="What runs the local model (echorag.models.engine); None for extractive and openai.")
    documents: int
    memory: int
    adapter_version: str
    uptime_s: float
    detail: dict[str, Any] = Field(default_factory=dict)


class StatsResponse(BaseModel):
    requests: int
    errors: int
    avg_latency_s: float
    documents: int
    memory: int
    sessions: int
    uptime_s: float


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None


# --------------------------------------------------------------------------- POST /vectors/invert


MAX_BUDGET = 20_000


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
    side: Side = Field("passage", description="how the vector was embedded (documents: passage; remembered turns: query, their question)")

    @model_validator(mode="after")
    def _one_target(self) -> "InvertRequest":
        if (self.id is None) == (self.vector is None):
            raise ValueError("give exactly one of 'id' or 'vector'")
        if self.vector is not None and not self.vector:
            raise ValueError("'vector' is empty")
        return self
