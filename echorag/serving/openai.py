"""OpenAI-compatible request and response shapes, and the mapping onto ``/chat``.

``/v1/chat/completions`` is retrieval-augmented exactly like ``/chat``: the last
user message is the query, earlier messages are the conversation so far (instead
of the server's session memory), and the turn is collected for training like any
other. ``model`` picks the version: ``echorag`` is the active adapter,
``echorag:v3`` pins one, ``echorag:base`` is the base model without an adapter.
Sampling (``max_new_tokens``, ``temperature``) is set server-side; per-request
sampling fields are accepted for client compatibility and ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from echorag.answering.prompts import question_of
from echorag.korean import normalize
from echorag.serving.schemas import ChatRequest, ChatResponse
from echorag.types import MemoryTurn

MODEL = "echorag"


class UnknownModel(ValueError):
    """The request names a model this service does not serve."""


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    # OpenAI allows a list of content parts; only text parts carry meaning here.
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, max_tokens…: accepted, ignored

    model: str = Field(MODEL, description="'echorag' (active version), 'echorag:v3' or 'echorag:base'.")
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user" or not normalize(messages[-1].text()).strip():
            raise ValueError("the last message must be a non-empty user message")
        return messages


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # encoding_format, dimensions: accepted, ignored

    model: str = MODEL
    input: str | list[str] = Field(..., description="A text or a list of texts (at most 256).")
    input_type: Literal["query", "passage"] = Field(
        "passage", description="EchoRAG extension: embed as search queries or as passages (e5 prefixes)."
    )
    user: str | None = Field(None, min_length=1, max_length=128)

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not 1 <= len(texts) <= 256:
            raise ValueError("input must hold 1 to 256 texts")
        if any(not t.strip() for t in texts):
            raise ValueError("input texts must not be empty")
        return [normalize(t) for t in texts]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Choice(BaseModel):
    index: int = 0
    message: dict[str, str]
    finish_reason: Literal["stop", "length"] = "stop"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    # Not in OpenAI's schema; clients ignore it, EchoRAG clients read the sources.
    echorag: dict[str, Any] = Field(default_factory=dict)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "echorag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


def model_id(version: str | None) -> str:
    return MODEL if version is None else f"{MODEL}:{version}"


def parse_model(model: str) -> str | None:
    """``echorag`` → None (the active version); ``echorag:v3`` → ``v3``."""
    name, _, version = model.partition(":")
    if name != MODEL or (version == "" and ":" in model):
        raise UnknownModel(f"model {model!r} does not exist; use {MODEL!r} or {MODEL}:<version> (GET /v1/models)")
    return version or None


def to_chat_request(request: ChatCompletionRequest, version: str | None) -> tuple[ChatRequest, list[dict]]:
    """The ``/chat`` request and the conversation so far ({"user", "assistant"} pairs).

    The service's own Korean system prompt frames every answer; callers' system
    messages are not added to it (they would also end up in the training data)."""
    *earlier, last = request.messages
    history, pending_user = [], None
    for message in earlier:
        if message.role == "user":
            pending_user = message.text()
        elif message.role == "assistant" and pending_user is not None:
            history.append(MemoryTurn(user=pending_user, assistant=message.text()))
            pending_user = None
    user = request.user or "openai"
    chat = ChatRequest(message=question_of(last.text()), user_id=user, session_id=f"openai:{user}",
                       adapter_version=version)
    return chat, history


def completion(response: ChatResponse, model: str, prompt_tokens: int, completion_tokens: int) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{response.turn_id or uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[Choice(message={"role": "assistant", "content": response.response})],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        echorag={
            "adapter_version": response.adapter_version,
            "turn_id": response.turn_id,
            "sources": [r.model_dump() for r in response.search_results],
            "timing": response.timing.model_dump(),
        },
    )


def chunk(completion_id: str, model: str, created: int, delta: dict[str, str], finish: str | None = None,
          usage: Usage | None = None, choices: bool = True) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream (OpenAI's shape)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
    }
    if usage is not None:
        body["usage"] = usage.model_dump()
    return body


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    """OpenAI's error shape, which the official client turns into its exceptions."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope} for status in (401, 404, 413, 422, 429, 500, 503)
}


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return ErrorEnvelope(error=ErrorDetail(message=message, type=kind, code=code)).model_dump()
