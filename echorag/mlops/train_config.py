"""The hyperparameters of one LoRA training run, as plain data.

Kept apart from ``echorag.mlops.training`` (torch, peft) so that whoever only builds or
passes a run's config (the learning loop, the Ray collector) never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar


@dataclass
class TrainConfig:
    epochs: int = 2
    learning_rate: float = 1e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_length: int = 2048  # tokens per chat (a served RAG prompt is ~1,000-2,000); longer ones are cut at the end
    batch_size: int = 4  # chats per micro-batch (per worker)
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 0
    replay_fraction: float = 0.25  # earlier turns mixed in, as a share of the new turns
    holdout_fraction: float = 0.2  # share of each run's new turns that joins the evaluation pool
    train_on: str = "teacher"  # which labels train (echorag.mlops.dataset): teacher, rated, corrected, all
    correction_weight: int = 3  # a corrected turn trains this many times
    pool_size: int = 64  # the gate judges on the newest this many pool turns
    eval_max_new_tokens: int = 64  # length of the greedy answers the gate compares with the labels
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    dtype: str = "auto"  # "auto": bfloat16 on a GPU that supports it, else float32

    # TrainConfig field -> Settings field; Settings fields that do not exist keep the default.
    _SETTINGS: ClassVar[dict[str, str]] = {
        "epochs": "finetune_epochs",
        "learning_rate": "finetune_learning_rate",
        "lora_r": "finetune_lora_r",
        "lora_alpha": "finetune_lora_alpha",
        "lora_dropout": "finetune_lora_dropout",
        "target_modules": "finetune_target_modules",
        "max_length": "finetune_max_length",
        "batch_size": "finetune_train_batch_size",  # not finetune_batch_size: that is the trigger size
        "grad_accum": "finetune_grad_accum",
        "seed": "finetune_seed",
        "replay_fraction": "finetune_replay_fraction",
        "holdout_fraction": "finetune_holdout_fraction",
        "train_on": "finetune_train_on",
        "correction_weight": "finetune_correction_weight",
        "pool_size": "finetune_gate_pool_size",
        "eval_max_new_tokens": "max_new_tokens",
    }

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 2:
            raise ValueError("epochs, batch_size and grad_accum must be >= 1 and max_length >= 2")
        if not 0 <= self.holdout_fraction < 1 or self.replay_fraction < 0:
            raise ValueError("holdout_fraction must be in [0, 1) and replay_fraction >= 0")
        if self.correction_weight < 1 or self.pool_size < 1 or self.eval_max_new_tokens < 1:
            raise ValueError("correction_weight, pool_size and eval_max_new_tokens must be >= 1")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> TrainConfig:
        """Read what ``echorag.config.Settings`` has (today ``finetune_epochs``); defaults
        for the rest. ``overrides`` win (e.g. runtime settings from the collector)."""
        values = {}
        for name, setting in cls._SETTINGS.items():
            value = getattr(settings, setting, None)
            if value is not None:
                values[name] = value
        return cls(**values | overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replay_size(self, new_turns: int) -> int:
        """How many earlier turns to mix into a run on ``new_turns`` new ones."""
        return round(new_turns * self.replay_fraction)
