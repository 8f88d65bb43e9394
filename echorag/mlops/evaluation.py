"""What the gate measures: several versions of the student on the evaluation pool, with
one model load. The losses always come from here; the answers too where no serving
engine is at hand (the CLI, tests without Ray): through ``LocalGenerator`` (same chat
template, same greedy decoding, same adapter routing). In the cluster the serving
deployment answers instead, with the version loaded by name (``runs.score_answers``).

Per version: the mean loss per label token (``training._mean_loss``, loss on the answer
only) and the mean agreement of its greedy answer with the label, as Kiwi
content-morpheme token F1 (``echorag.answer_metrics``, what ``echorag eval-answers``
reports).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from peft import PeftModel

from echorag.generation import LocalGenerator
from echorag.mlops.gate import VersionScore, agreement
from echorag.mlops.train_config import TrainConfig
from echorag.mlops.training import Chat, _encode_all, _mean_loss
from echorag.models import ResolvedModel


def evaluate_versions(
    base_path: str | Path,
    adapters: dict[str, Path | None],
    pool: list[Chat],
    config: TrainConfig,
    device: str | None = None,
    answers: bool = True,
) -> dict[str, VersionScore]:
    """``adapters``: name -> adapter directory (None: the base model). ``answers=False``:
    the losses only, where the serving engine gives the answers (``runs.score_answers``)."""
    if not pool:
        raise ValueError("the evaluation pool is empty")
    path = Path(base_path)
    generator = LocalGenerator(ResolvedModel(str(path), "local", path.name), device=device or "auto", dtype=config.dtype)
    encoded = _encode_all(generator.tokenizer, pool, config.max_length)
    if not encoded:
        raise ValueError("no pool turn has answer tokens within max_length")
    for name, adapter in adapters.items():
        if adapter is not None:
            generator.load_adapter(name, adapter)
    prompts = [chat[:-1] for chat in pool]
    labels = [chat[-1]["content"] for chat in pool]
    scores: dict[str, VersionScore] = {}
    for name, adapter in adapters.items():
        model = generator.model
        if adapter is None:
            context = model.disable_adapter() if isinstance(model, PeftModel) else nullcontext()
        else:
            model.set_adapter(name)
            context = nullcontext()
        with context:
            loss = _mean_loss(model, encoded, generator.tokenizer.pad_token_id, config.batch_size, generator.device)
        if not answers:
            scores[name] = VersionScore(loss=loss)
            continue
        replies: list[str] = []
        for start in range(0, len(prompts), config.batch_size):
            batch = prompts[start : start + config.batch_size]
            rows = generator.generate(batch, [None if adapter is None else name] * len(batch),
                                      config.eval_max_new_tokens, temperature=0.0)
            replies.extend(row.text for row in rows)
        scores[name] = VersionScore(loss=loss, agreement=agreement(replies, labels), answers=tuple(replies))
    return scores
