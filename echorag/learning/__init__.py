"""The learning loop's plain-Python core: collection, filtering, the training policy,
the evaluation gate, the adapter registry, events and webhooks. Ray actors and Train
jobs in ``deployments/`` wrap these; nothing here imports Ray."""

from echorag.learning.adapter_storage import InvalidAdapterError, VersionExistsError, validate_adapter_dir
from echorag.learning.api import TrainingProgress
from echorag.learning.database import ConversationStore
from echorag.learning.events import Event
from echorag.learning.filters import Screened, TurnFilter, scrub_pii
from echorag.learning.gate import EvaluationGate, GateDecision, VersionScore, split_holdout
from echorag.learning.jobs import (
    Conflict,
    MlopsError,
    NotFound,
    TrainingInProgress,
    TrainingJob,
    TrainingOutcome,
    local_train_fn,
)
from echorag.learning.loop import LearningLoop
from echorag.learning.notify import payload_for, send_webhook
from echorag.learning.policy import Decision, MarkPending, Nothing, PolicyConfig, RetryLater, StartRun, TrainingPolicy
from echorag.learning.records import AddResult, Counts, Run, StoredTurn
from echorag.learning.registry import BASE, AdapterInfo, AdapterRegistry
from echorag.learning.runtime_settings import RuntimeSettings, SettingsUpdate

__all__ = [
    "BASE",
    "AdapterInfo",
    "Conflict",
    "LearningLoop",
    "MlopsError",
    "NotFound",
    "RuntimeSettings",
    "SettingsUpdate",
    "TrainingInProgress",
    "TrainingJob",
    "TrainingOutcome",
    "TrainingProgress",
    "local_train_fn",
    "AdapterRegistry",
    "AddResult",
    "ConversationStore",
    "Counts",
    "Decision",
    "EvaluationGate",
    "Event",
    "GateDecision",
    "VersionScore",
    "InvalidAdapterError",
    "MarkPending",
    "Nothing",
    "PolicyConfig",
    "RetryLater",
    "Run",
    "Screened",
    "StartRun",
    "StoredTurn",
    "TrainingPolicy",
    "TurnFilter",
    "VersionExistsError",
    "payload_for",
    "scrub_pii",
    "send_webhook",
    "split_holdout",
    "validate_adapter_dir",
]
