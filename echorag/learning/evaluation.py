"""What the gate measures: several versions of the student on the evaluation pool, with
one model load, where no serving engine is at hand (the CLI, tests without Ray): through
``LocalGenerator`` (same chat template, same greedy decoding, same adapter routing). In
the cluster the serving deployment measures both instead, with the version loaded by
name (``runs.score_served``).

Per version: the mean loss per answer token (``LocalGenerator.label_loss``, as training
computes it) and the mean agreement of its greedy answer with the label, as Kiwi
content-morpheme token F1 (``echorag.evaluation.answer_metrics``, what ``echorag eval-answers``
reports).
"""

from __future__ import annotations

from pathlib import Path

from echorag.learning.gate import VersionScore, agreement
from echorag.learning.train_config import TrainConfig
from echorag.models.chat_tokens import Chat
from echorag.models.generation import LocalGenerator
from echorag.models.resolution import ResolvedModel


def evaluate_versions(
    base_path: str | Path,
    adapters: dict[str, Path | None],
    pool: list[Chat],
    config: TrainConfig,
    device: str | None = None,
) -> dict[str, VersionScore]:
    """``adapters``: name -> adapter directory (None: the base model)."""
    if not pool:
        raise ValueError("the evaluation pool is empty")
    path = Path(base_path)
    generator = LocalGenerator(ResolvedModel(str(path), "local", path.name), device=device or "auto", dtype=config.dtype)
    for name, adapter in adapters.items():
        if adapter is not None:
            generator.load_adapter(name, adapter)
    prompts = [chat[:-1] for chat in pool]
    labels = [chat[-1]["content"] for chat in pool]
    scores: dict[str, VersionScore] = {}
    for name, adapter in adapters.items():
        version = None if adapter is None else name
        loss = generator.label_loss(pool, version, config.max_length, config.batch_size)
        replies: list[str] = []
        for start in range(0, len(prompts), config.batch_size):
            batch = prompts[start : start + config.batch_size]
            rows = generator.generate(batch, [version] * len(batch), config.eval_max_new_tokens, temperature=0.0)
            replies.extend(row.text for row in rows)
        scores[name] = VersionScore(loss=loss, agreement=agreement(replies, labels), answers=tuple(replies))
    return scores
