"""Feedback and the learning loop's routes: each one a typed call on the collector actor
(``deployments/mlops.py``), whose errors (409 conflict, 404…) keep their status codes."""

from fastapi import Path, Query, Security

from deployments.auth import UnknownSession, owner, require_caller
from deployments.http_app import Admin, app
from echorag.identity.access import Caller
from echorag.learning import api as mlops_api
from echorag.learning.records import StoredTurn
from echorag.learning.runtime_settings import RuntimeSettings, SettingsUpdate
from echorag.serving.schemas import ErrorResponse

TURN_ID = Path(..., min_length=1, max_length=128, description="The ``turn_id`` of a /chat response.")


class MlopsRoutes:
    @app.post("/feedback", response_model=mlops_api.FeedbackResponse,
              responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def feedback(self, request: mlops_api.FeedbackRequest, caller: Caller = Security(require_caller)):
        """👍/👎 on one of the caller's own turns: a user's (api_keys, trusted_header), or
        one of the session ``session_id`` (open); any other turn is as unknown as none."""
        if caller.user_id is None and request.session_id is None:
            raise UnknownSession()
        session_id = None if caller.user_id else await self.sessions.hold(caller, request.session_id)
        return await self.collector.feedback.remote(request.turn_id, request.rating, owner(caller, session_id))

    @app.get("/mlops/status", response_model=mlops_api.StatusResponse)
    async def mlops_status(self):
        return await self.collector.status.remote()

    @app.get("/mlops/training-progress", response_model=mlops_api.TrainingProgress)
    async def training_progress(self):
        return await self.collector.training_progress.remote()

    @app.get("/mlops/training-history", response_model=mlops_api.TrainingHistory)
    async def training_history(self, limit: int = Query(50, ge=1, le=1000)):
        return await self.collector.training_history.remote(limit)

    @app.get("/mlops/models", response_model=mlops_api.ModelsResponse)
    async def models(self):
        return await self.collector.models.remote()

    @app.get("/mlops/performance", response_model=mlops_api.PerformanceMetrics)
    async def performance(self):
        return await self.collector.performance.remote()

    @app.get("/mlops/events", response_model=mlops_api.EventsResponse, dependencies=[Admin])
    async def events(
        self, event_type: str | None = None, limit: int = Query(100, ge=1, le=mlops_api.EVENTS_LIMIT_MAX),
    ):
        return await self.collector.events.remote(event_type, limit)

    @app.get("/mlops/conversations", response_model=mlops_api.ConversationsResponse, dependencies=[Admin])
    async def conversations(
        self, limit: int = Query(50, ge=1, le=mlops_api.CONVERSATIONS_LIMIT_MAX), offset: int = Query(0, ge=0, le=2**62),
    ):
        return await self.collector.conversations.remote(limit, offset)

    @app.put("/mlops/conversations/{turn_id}", response_model=StoredTurn, dependencies=[Admin],
             responses={404: {"model": ErrorResponse}})
    async def correct_conversation(self, request: mlops_api.CorrectionRequest, turn_id: str = TURN_ID):
        """Correct a stored answer: the correction is kept beside the original and trains
        the student (with more weight) in the next run."""
        return await self.collector.correct.remote(turn_id, request.answer)

    @app.delete("/mlops/conversations", response_model=mlops_api.ClearConversationsResponse, dependencies=[Admin])
    async def clear_conversations(self, backup: bool = False):
        return await self.collector.clear_conversations.remote(backup)

    @app.post("/mlops/finetune", response_model=mlops_api.FinetuneResponse, dependencies=[Admin])
    async def finetune(self, request: mlops_api.FinetuneRequest | None = None):
        request = request or mlops_api.FinetuneRequest()
        return await self.collector.finetune.remote(request.force, request.backup_existing)

    @app.post("/mlops/settings", response_model=RuntimeSettings, dependencies=[Admin])
    async def update_settings(self, update: SettingsUpdate):
        return await self.collector.update_settings.remote(update)

    @app.post("/mlops/rollback", response_model=mlops_api.AdapterChange, dependencies=[Admin])
    async def rollback(self, request: mlops_api.RollbackRequest):
        change = await self.collector.rollback.remote(request.version)
        self.services.traffic_feed.forget()  # this replica's next chat serves it already
        return change

    @app.post("/mlops/promote", response_model=mlops_api.AdapterChange, dependencies=[Admin])
    async def promote(self, request: mlops_api.PromoteRequest | None = None):
        request = request or mlops_api.PromoteRequest()
        change = await self.collector.promote.remote(request.version, request.student_share)
        self.services.traffic_feed.forget()  # this replica's next chat serves it already
        return change

    @app.post("/mlops/selector/rollback", response_model=mlops_api.SelectorChange, dependencies=[Admin],
              responses={404: {"model": ErrorResponse}})
    async def rollback_selector(self, request: mlops_api.SelectorRequest | None = None):
        """Serve the answer selector that served before (or ``version``); retrievers follow within seconds."""
        request = request or mlops_api.SelectorRequest()
        return mlops_api.SelectorChange(selector=await self.collector.rollback_selector.remote(request.version))

    @app.post("/mlops/selector/promote", response_model=mlops_api.SelectorChange, dependencies=[Admin],
              responses={404: {"model": ErrorResponse}})
    async def promote_selector(self, request: mlops_api.SelectorPromoteRequest):
        """Serve answer selector ``version`` (one the gate held back too)."""
        return mlops_api.SelectorChange(selector=await self.collector.promote_selector.remote(request.version))

    @app.post("/mlops/export", response_model=mlops_api.ExportResponse, dependencies=[Admin])
    async def export(self, request: mlops_api.ExportRequest | None = None):
        request = request or mlops_api.ExportRequest()
        return await self.collector.export.remote(None, request.inline)

    @app.post("/mlops/cleanup", response_model=mlops_api.CleanupResponse, dependencies=[Admin])
    async def cleanup(self, request: mlops_api.CleanupRequest):
        return await self.collector.cleanup.remote(request.keep_days)

    @app.get("/mlops/backups", response_model=mlops_api.BackupsResponse, dependencies=[Admin])
    async def backups(self):
        return await self.collector.backups.remote()

    @app.post("/mlops/restore", response_model=mlops_api.RestoreResponse, dependencies=[Admin])
    async def restore(self, request: mlops_api.RestoreRequest):
        return await self.collector.restore.remote(request.backup)
