"""The learning loop's settings as they apply now, and the change an admin asks for.

``Settings`` (``echorag.config``) gives every default; ``POST /mlops/settings`` stores
overrides in SQLite, so restarts keep them. ``RuntimeSettings`` declares each setting's
bounds once; ``SettingsUpdate`` is derived from it (every field optional, same bounds).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model

from echorag.learning.gate import EvaluationGate
from echorag.learning.policy import PolicyConfig
from echorag.learning.records import TrainOn

log = logging.getLogger(__name__)

# Runtime setting (API field name) -> key in the store's settings table, which is also the
# ``echorag.config.Settings`` field that gives its default.
SETTING_KEYS: dict[str, str] = {
    "batch_size": "finetune_batch_size",
    "auto_trigger": "finetune_auto_trigger",
    "finetune_enabled": "finetune_enabled",
    "collection_enabled": "conversation_collection_enabled",
    "epochs": "finetune_epochs",
    "learning_rate": "finetune_learning_rate",
    "gate_tolerance": "finetune_gate_tolerance",
    "max_attempts": "finetune_max_attempts",
    "retry_backoff_s": "finetune_retry_backoff_s",
    "replay_fraction": "finetune_replay_fraction",
    "holdout_fraction": "finetune_holdout_fraction",
    "seed": "finetune_seed",
    "train_on": "finetune_train_on",
    "gate_min_examples": "finetune_gate_min_examples",
    "gate_agreement_tolerance": "finetune_gate_agreement_tolerance",
}


class RuntimeSettings(BaseModel):
    """The learning loop's settings as they apply now: ``Settings`` gives every default (each
    written once, there), overridden by what ``POST /mlops/settings`` stored (persisted in
    SQLite, so restarts keep them). Here: only their bounds and what they mean."""

    model_config = ConfigDict(validate_assignment=True)

    batch_size: int = Field(ge=1, le=1_000_000, description="New turns that trigger a run.")
    auto_trigger: bool = Field(description="Start a run by itself when a batch has accumulated.")
    finetune_enabled: bool = Field(description="Master switch of fine-tuning (manual runs too).")
    collection_enabled: bool = Field(description="Store conversations at all.")
    epochs: int = Field(ge=1, le=100)
    learning_rate: float = Field(gt=0, le=1)
    gate_tolerance: float = Field(
        gt=-1, le=10, description="Relative: 0.02 promotes a candidate up to 2 % worse on held-out turns."
    )
    max_attempts: int = Field(ge=1, le=20, description="Tries per slice of data, the first included.")
    retry_backoff_s: float = Field(ge=0, le=86_400, description="Delay before the first retry (doubles).")
    replay_fraction: float = Field(ge=0, le=10, description="Earlier turns mixed in, per new turn.")
    holdout_fraction: float = Field(ge=0, lt=1, description="New turns kept out of training for the gate (0: no gate).")
    seed: int = Field(ge=0)
    train_on: TrainOn = Field(
        description="Which labels train: teacher (a teacher's answers, 👍, corrections), rated, corrected, all."
    )
    gate_min_examples: int = Field(ge=1, le=1_000_000, description="No promotion with fewer evaluation-pool turns.")
    gate_agreement_tolerance: float = Field(
        ge=0, le=1, description="Absolute: a candidate may agree with the labels this much less than the active version."
    )

    @classmethod
    def resolve(cls, settings: Any, persisted: dict[str, Any] | None = None) -> RuntimeSettings:
        """Defaults from ``settings`` (``echorag.config.Settings``), then the persisted values.
        A persisted value that no longer validates is logged and ignored."""
        resolved = cls(**{name: getattr(settings, key) for name, key in SETTING_KEYS.items()})
        for name, key in SETTING_KEYS.items():
            if persisted and key in persisted:
                try:
                    setattr(resolved, name, persisted[key])
                except ValidationError as exc:
                    log.warning("ignoring the stored setting %s=%r: %s", key, persisted[key], exc.errors()[0]["msg"])
        return resolved

    def policy_config(self) -> PolicyConfig:
        """When runs start and how failures are retried (``echorag.learning.policy``)."""
        return PolicyConfig(batch_size=self.batch_size, auto_trigger=self.auto_trigger, enabled=self.finetune_enabled,
                            max_attempts=self.max_attempts, retry_backoff_s=self.retry_backoff_s)

    def gate(self) -> EvaluationGate:
        """What a candidate must show to serve (``echorag.learning.gate``)."""
        return EvaluationGate(self.gate_tolerance, self.gate_agreement_tolerance, self.gate_min_examples)

    def train_config(self) -> dict[str, Any]:
        """The overrides a training run takes (``echorag.learning.train_config.TrainConfig`` names)."""
        return {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "replay_fraction": self.replay_fraction,
            "holdout_fraction": self.holdout_fraction,
            "train_on": self.train_on,
        }


class _Update(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _optional(name: str) -> tuple[Any, Any]:
    """``RuntimeSettings.<name>`` made optional, with its bounds; accepted under the short
    name or the Settings / environment-style name (``finetune_batch_size``)."""
    field = RuntimeSettings.model_fields[name]
    names = ("finetune_enabled", "enabled") if name == "finetune_enabled" else (name, SETTING_KEYS[name])
    value = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return value | None, Field(
        None, description=field.description, validation_alias=AliasChoices(*names)
    )


SettingsUpdate = create_model(
    "SettingsUpdate", __base__=_Update,
    __doc__="``POST /mlops/settings``: only the fields given change.",
    **{name: _optional(name) for name in RuntimeSettings.model_fields},
)
