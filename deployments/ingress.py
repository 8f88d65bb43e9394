"""HTTP ingress: the replica that holds the FastAPI app and the handles to the rest.

(No ``from __future__ import annotations`` here: FastAPI reads the route annotations
at runtime, and Serve's class-based ingress cannot resolve postponed ones.)

Follow ``POST /chat``: ``ChatRoutes.chat`` (deployments/routes/chat.py) →
``ChatPipeline.chat`` (echorag/serving/pipeline.py) → ``ServeServices``
(deployments/serve_services.py) → the Embedder, Retriever and Generator deployments,
and the collector actor (deployments/mlops.py); keys and sessions: the identity actor
(deployments/auth.py).

This process imports no model library (torch, transformers, peft): it only routes.
"""

import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from ray import cloudpickle, serve
from ray.serve.handle import DeploymentHandle

from deployments import metrics
from deployments.auth import Sessions, UserAuth, owner
from deployments.guard import RequestGuard
from deployments.http_app import RATE_LIMITED, app
from deployments.mlops import get_collector, get_identities

# Routes register on import; this order is the order of /openapi.json's paths.
from deployments.routes.chat import ChatRoutes  # isort: skip
from deployments.routes.openai import OpenAIRoutes  # isort: skip
from deployments.routes.vectors import VectorRoutes  # isort: skip
from deployments.routes.mlops import MlopsRoutes  # isort: skip
from deployments.routes.users import UserRoutes  # isort: skip
from deployments.serve_services import ServeServices
from echorag.config import Settings
from echorag.identity.access import Caller
from echorag.identity.admin_token import ensure_admin_token
from echorag.learning.adapter_storage import InvalidAdapterError
from echorag.learning.registry import AdapterRegistry
from echorag.serving.memory import SessionMemory
from echorag.serving.pipeline import ChatPipeline
from echorag.serving.ratelimit import RateLimiter
from echorag.serving.routing import Answerer
from echorag.serving.schemas import ChatRequest, ChatResponse
from echorag.types import BASE, EmbedderInfo, ModelInfo

# The route groups travel to the replica by value: Serve rewrites each route method's
# signature (``self`` becomes the replica) on the function object, and a function
# pickled by reference would arrive without it.
for _routes in (ChatRoutes, OpenAIRoutes, VectorRoutes, MlopsRoutes, UserRoutes):
    cloudpickle.register_pickle_by_value(sys.modules[_routes.__module__])

@dataclass
class ChatCounters:
    """What ``/stats`` reports of this replica's chat routes (``/chat``, ``/chat/stream``,
    ``/v1/chat/completions``, streamed or not), counted in one place, which also hands
    each answer's timings to the Prometheus metrics."""

    requests: int = 0
    errors: int = 0
    latency_total: float = 0.0  # seconds, over the answered requests, to their last token

    def start(self) -> float:
        self.requests += 1
        return time.perf_counter()

    def answered(self, started: float, response: ChatResponse) -> None:
        self.latency_total += time.perf_counter() - started
        metrics.record_chat(response.timing, response.search_results)

    async def answer(self, call: Awaitable[ChatResponse]) -> ChatResponse:
        """A request answered in one piece (not streamed), counted."""
        started = self.start()
        try:
            response = await call
        except Exception:
            self.failed()
            raise
        self.answered(started, response)
        return response

    def failed(self) -> None:
        self.errors += 1

    @property
    def mean_latency_s(self) -> float:
        answered = self.requests - self.errors
        return self.latency_total / answered if answered > 0 else 0.0


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(app)
class EchoRAGIngress(ChatRoutes, OpenAIRoutes, VectorRoutes, MlopsRoutes, UserRoutes):
    def __init__(
        self,
        settings: Settings,
        embedder: DeploymentHandle,
        retriever: DeploymentHandle,
        generator: DeploymentHandle,
        student: DeploymentHandle | None = None,
    ) -> None:
        self.settings = settings
        self.retriever, self.generator, self.embedder, self.student = retriever, generator, embedder, student
        self.registry = AdapterRegistry(settings.adapters_root)
        metrics.set_enabled(settings.monitoring_export_metrics)
        app_name = serve.get_replica_context().app_name
        self.collector = get_collector(settings, app_name)
        self.identities = get_identities(settings, app_name)
        self.admin_token = ensure_admin_token(settings.data_dir, settings.admin_token)
        self.services = ServeServices(embedder, retriever, generator, self.collector, self.registry, settings, student)
        self.memory = SessionMemory(settings.memory_turns)
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        RequestGuard.configure(settings.max_body_bytes, settings.cors_origins, self.admin_token)
        UserAuth.configure(settings, self.identities, self.admin_token)
        self.sessions = Sessions(self.identities, settings.session_secret)
        self.started = time.time()
        self.counters = ChatCounters()
        self._pipeline: ChatPipeline | None = None
        self._model_info: ModelInfo | None = None
        self._embedder_info: EmbedderInfo | None = None

    async def _ready(self) -> ChatPipeline:
        if self._pipeline is None:
            self._model_info = info = await self.generator.info.remote()
            student = None
            if self.student is not None:
                student_info = await self.student.info.remote()
                student = Answerer(student_info.name, student_info.kind)
            self._pipeline = ChatPipeline(self.services, self.memory, Answerer(info.name, info.kind), student)
        return self._pipeline

    async def _embedder(self) -> EmbedderInfo:
        """The embedder's id and dimension: fixed for the application's life, asked once."""
        if self._embedder_info is None:
            self._embedder_info = await self.embedder.info.remote()
        return self._embedder_info

    # -- admission: every chat route (/chat, /chat/stream, /v1/chat/completions) ------------

    async def scoped(self, caller: Caller, request: ChatRequest) -> tuple[ChatRequest, str | None]:
        """The request as the pipeline sees it: a session the caller holds (404 for any
        other) or a new one, and the owner of its data as ``user_id`` (the body's is only a
        label); with the rate-limit key of the established identity (None: the address)."""
        session_id, new = await self.sessions.open(caller, request.session_id)
        scoped = request.model_copy(update={"session_id": session_id, "user_id": owner(caller, session_id)})
        if caller.user_id:
            return scoped, f"user:{caller.user_id}"
        return scoped, None if new else f"session:{session_id}"

    def admit(self, http: Request, request: ChatRequest, limit_key: str | None) -> None:
        """Refuse a chat request before any work: over the rate limit (429), too long
        (413), or pinned to an adapter version that cannot serve (404)."""
        self.rate_limit(http, limit_key)
        limit = self.settings.max_message_chars
        if len(request.message) > limit:
            raise HTTPException(413, f"message is {len(request.message)} characters; the limit is {limit}")
        version = request.adapter_version
        if version and version != BASE:
            try:  # its metadata, not its weights: the generator replica that loads it checks those
                self.registry.info(version)
            except InvalidAdapterError as exc:  # also an unknown or malformed name
                raise HTTPException(404, f"adapter version {version!r} is not available: {exc}") from None

    def rate_limit(self, http: Request, key: str | None) -> None:
        # One bucket per established identity: a user (api_keys, trusted_header) or a held
        # session (open), so people behind one address are not throttled together. Until a
        # session is established (and for the OpenAI API in open mode) the address decides:
        # a label in the body never picks a bucket.
        key = key or f"addr:{http.client.host if http.client else '?'}"
        if wait := self.limiter.acquire(key):
            seconds = RateLimiter.retry_after(wait)
            raise HTTPException(429, RATE_LIMITED.format(seconds=seconds), headers={"Retry-After": seconds})
