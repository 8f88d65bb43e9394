"""The learning loop's settings as they apply now, and the change an admin asks for.

``Settings`` (``echorag.config``) declares each one once: type, bounds, meaning, default.
``RuntimeSettings`` is derived from those fields (``POST /mlops/settings`` stores overrides
in SQLite, so restarts keep them); ``SettingsUpdate`` from it (every field optional).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from echorag.config import Settings
from echorag.learning.gate import EvaluationGate
from echorag.learning.policy import PolicyConfig

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


class _Runtime(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

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


def _bounded(field: FieldInfo) -> Any:
    """A field's type with its bounds (``ge``, ``lt``, ...) attached."""
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


def _setting(name: str) -> tuple[Any, Any]:
    """``Settings.<SETTING_KEYS[name]>``'s type, bounds and meaning; no default (it is the setting's)."""
    field = Settings.model_fields[SETTING_KEYS[name]]
    return _bounded(field), Field(description=field.description)


RuntimeSettings = create_model(
    "RuntimeSettings", __base__=_Runtime,
    __doc__="The learning loop's settings as they apply now: ``Settings`` gives each one's type, bounds, "
    "meaning and default, overridden by what ``POST /mlops/settings`` stored (persisted in SQLite).",
    **{name: _setting(name) for name in SETTING_KEYS},
)


class _Update(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _optional(name: str) -> tuple[Any, Any]:
    """``RuntimeSettings.<name>`` made optional, with its bounds; accepted under the short
    name or the Settings / environment-style name (``finetune_batch_size``)."""
    field = RuntimeSettings.model_fields[name]
    names = ("finetune_enabled", "enabled") if name == "finetune_enabled" else (name, SETTING_KEYS[name])
    return _bounded(field) | None, Field(
        None, description=field.description, validation_alias=AliasChoices(*names)
    )


SettingsUpdate = create_model(
    "SettingsUpdate", __base__=_Update,
    __doc__="``POST /mlops/settings``: only the fields given change.",
    **{name: _optional(name) for name in RuntimeSettings.model_fields},
)
