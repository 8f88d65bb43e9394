"""The hyperparameters of one LoRA training run, as plain data.

Kept apart from ``echorag.learning.training`` (torch, peft) so that whoever only builds or
passes a run's config (the learning loop, the Ray collector) never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from echorag.config import default_of


def _setting(name: str, default: Any = None) -> Any:
    """A field that ``from_settings`` reads from ``Settings.<name>``; its default is that
    setting's (each default is written once, in ``echorag.config``) unless given here."""
    value = default_of(name) if default is None else default
    return field(default=value, metadata={"setting": name})


@dataclass
class TrainConfig:
    epochs: int = _setting("finetune_epochs")
    learning_rate: float = _setting("finetune_learning_rate")
    lora_r: int = _setting("finetune_lora_r")
    lora_alpha: int = _setting("finetune_lora_alpha")
    lora_dropout: float = _setting("finetune_lora_dropout")
    target_modules: tuple[str, ...] = _setting("finetune_target_modules")
    max_length: int = _setting("finetune_max_length")  # tokens per chat (a served RAG prompt is ~1,000-2,000); longer ones are cut at the end
    batch_size: int = _setting("finetune_train_batch_size")  # chats per micro-batch (per worker); not finetune_batch_size, the trigger size
    grad_accum: int = _setting("finetune_grad_accum")  # micro-batches per optimizer step
    seed: int = _setting("finetune_seed")
    replay_fraction: float = _setting("finetune_replay_fraction")  # earlier turns mixed in, as a share of the new turns
    holdout_fraction: float = _setting("finetune_holdout_fraction")  # share of each run's new turns that joins the evaluation pool
    train_on: str = _setting("finetune_train_on")  # which labels train (echorag.learning.dataset): teacher, rated, corrected, all
    correction_weight: int = _setting("finetune_correction_weight")  # a corrected turn trains this many times
    pool_size: int = _setting("finetune_gate_pool_size")  # the gate judges on the newest this many pool turns
    # Length of the greedy answers the gate compares with the labels: the service's answer
    # length (max_new_tokens) there, 64 where a config is built alone (tests, benches).
    eval_max_new_tokens: int = _setting("max_new_tokens", 64)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    dtype: str = "auto"  # "auto": bfloat16 on a GPU that supports it, else float32

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
        """The fields ``echorag.config.Settings`` gives (see ``_setting``); ``overrides`` win
        (e.g. the runtime settings from the collector)."""
        values = {f.name: getattr(settings, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata}
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
