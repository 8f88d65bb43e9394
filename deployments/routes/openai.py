"""The OpenAI-compatible API (``echorag/serving/openai.py``): models, chat completions, embeddings."""

import asyncio
import json
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import HTTPException, Request, Security
from fastapi.responses import StreamingResponse

from deployments.auth import require_caller
from deployments.http_app import app, user_message
from deployments.serve_services import retrying
from echorag.identity.access import Caller
from echorag.serving import openai as oai
from echorag.serving.schemas import DoneEvent, TokenEvent
from echorag.types import BASE


class OpenAIRoutes:
    @app.get("/v1/models", response_model=oai.ModelList, responses=oai.ERROR_RESPONSES)
    async def openai_models(self, caller: Caller = Security(require_caller)) -> oai.ModelList:
        cards = [oai.ModelCard(id=oai.MODEL, created=int(self.started)),
                 oai.ModelCard(id=oai.model_id(BASE), created=int(self.started))]
        for info in self.registry.history():
            cards.append(oai.ModelCard(id=oai.model_id(info.version), created=int(info.created_at)))
        return oai.ModelList(data=cards)

    async def _openai_request(self, request: oai.ChatCompletionRequest, http: Request, caller: Caller):
        try:
            version = oai.parse_model(request.model)
        except oai.UnknownModel as exc:
            raise HTTPException(404, str(exc)) from None
        chat, history = oai.to_chat_request(request, version)
        # The caller keeps the conversation: each completion is a new session of its owner
        # (recall across them for a user; nothing of anyone else's in open mode).
        chat, limit_key = await self.scoped(caller, chat.model_copy(update={"session_id": None}))
        self.admit(http, chat, limit_key if caller.user_id else None)
        return chat, history

    @app.post("/v1/chat/completions", response_model=oai.ChatCompletion,
              responses={**oai.ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}})
    async def openai_chat(self, request: oai.ChatCompletionRequest, http: Request, caller: Caller = Security(require_caller)):
        """Retrieval-augmented like ``/chat``; ``stream: true`` answers in OpenAI's chunk format."""
        chat, history = await self._openai_request(request, http, caller)
        pipeline = await self._ready()
        if not request.stream:
            response = await self.counters.answer(pipeline.chat(chat, history))
            usage = response.usage
            return oai.completion(response, request.model, usage.prompt_tokens, usage.completion_tokens)

        started = self.counters.start()
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        async def chunks() -> AsyncIterator[str]:
            completion_id, created = f"chatcmpl-{time.time_ns():x}", int(time.time())

            def sse(body: dict) -> str:
                return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

            yield sse(oai.chunk(completion_id, request.model, created, {"role": "assistant", "content": ""}))
            try:
                async for event in pipeline.chat_stream(chat, history):
                    if isinstance(event, TokenEvent):
                        yield sse(oai.chunk(completion_id, request.model, created, {"content": event.text}))
                    elif isinstance(event, DoneEvent):
                        response = event.response
                        self.counters.answered(started, response)
                        yield sse(oai.chunk(completion_id, request.model, created, {}, finish="stop"))
                        if include_usage:
                            usage = response.usage
                            totals = oai.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                                               total_tokens=usage.prompt_tokens + usage.completion_tokens)
                            yield sse(oai.chunk(completion_id, request.model, created, {}, usage=totals, choices=False))
            except Exception as exc:
                self.counters.failed()
                yield sse(oai.error_body(user_message(exc), "server_error"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/v1/embeddings", response_model=oai.EmbeddingList, responses=oai.ERROR_RESPONSES)
    async def openai_embeddings(
        self, request: oai.EmbeddingRequest, http: Request, caller: Caller = Security(require_caller)
    ) -> oai.EmbeddingList:
        """The service's own embedder (L2-normalised); ``input_type`` picks query or passage prefixes."""
        if request.model not in (oai.MODEL, (await self._embedder()).id):
            raise HTTPException(404, f"model {request.model!r} does not exist; use {oai.MODEL!r}")
        try:
            texts = request.texts()
        except ValueError as exc:
            raise HTTPException(422, f"invalid request: input: {exc}") from None
        self.rate_limit(http, f"user:{caller.user_id}" if caller.user_id else None)
        if request.input_type == "query":
            vectors = await asyncio.gather(*(retrying(self.embedder.embed_query.remote, t) for t in texts))
        else:
            vectors = await retrying(self.embedder.embed_passages.remote, texts)
        items = [oai.EmbeddingItem(index=i, embedding=np.asarray(v, dtype=float).tolist()) for i, v in enumerate(vectors)]
        tokens = sum(len(t) for t in texts)  # characters: the embedder's tokenizer is internal to it
        return oai.EmbeddingList(data=items, model=request.model, usage=oai.Usage(prompt_tokens=tokens, total_tokens=tokens))
