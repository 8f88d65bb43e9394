"""LoRA fine-tuning of the generator on collected conversations: plain torch + peft.

The loop is deliberately small (nanoGPT-like): encode chats with the tokenizer's chat
template (loss on assistant tokens only), shuffle with a seed, pad, AdamW on the LoRA
parameters, gradient accumulation, one ``on_step`` callback per optimizer step.
Nothing here imports Ray: ``deployments/training.py`` runs the same loop inside a
``TorchTrainer`` worker, passing ``ray.train.torch.prepare_model`` as ``model_wrapper``
and reporting ``on_step`` / ``on_epoch_end`` to Ray.

Typical use by the coordinator::

    data = dataset.run_data(store, from_seq, to_seq, config)     # echorag.learning.dataset
    result = train_lora(base, data.train, config, init_adapter=active_dir)
    save_adapter(result.model, out_dir)
    scores = evaluate_versions(base, {"candidate": out_dir, "active": active_dir}, data.pool, config)
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorag.learning.progress import StepInfo
from echorag.learning.train_config import TrainConfig
from echorag.models.chat_tokens import Chat, collate, encode_all
from echorag.models.devices import pick_dtype, torch_device

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A training run failed; its data stays pending (the caller decides about retries)."""


# --------------------------------------------------------------------------- data


def read_chats_jsonl(path: str | Path) -> list[Chat]:
    """Chats from a JSONL file of ``{"messages": [...]}`` lines (``dataset.export_jsonl``)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def _shard(n: int, rng: random.Random, rank: int, world_size: int) -> list[int]:
    """This worker's share of a shuffled epoch. As torch's DistributedSampler: the order is
    the same on every worker (same seed) and padded by wrapping, so all shards are equally
    long and every worker takes the same number of steps (DDP would hang otherwise)."""
    order = rng.sample(range(n), n)
    total = math.ceil(n / world_size) * world_size
    order += (order * math.ceil(total / n))[: total - n]
    return order[rank:total:world_size]


# --------------------------------------------------------------------------- model


def load_tokenizer(base_path: str | Path):
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(
    base_path: str | Path, init_adapter: Path | None, config: TrainConfig, device: str | torch.device | None = None
) -> PeftModel:
    """The base model with a trainable LoRA: a fresh one, or the active adapter to continue
    (which keeps its own rank and target modules; ``config``'s LoRA shape is for fresh ones)."""
    device = torch_device(device)
    torch.manual_seed(config.seed)  # a fresh LoRA's A matrices are random
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=pick_dtype(config.dtype, device))
    if init_adapter is not None:
        model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    else:
        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
        )
        model = get_peft_model(base, lora)
    return model.to(device)


def unwrap(model: torch.nn.Module) -> PeftModel:
    """The peft model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def save_adapter(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Write the LoRA weights and config (peft ``save_pretrained``) to ``out_dir``."""
    out_dir = Path(out_dir)
    unwrap(model).save_pretrained(str(out_dir))
    return out_dir


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class EpochInfo:
    epoch: int  # from 0
    epochs: int
    step: int  # optimizer steps done so far
    total_steps: int
    loss: float  # mean step loss over the epoch
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: PeftModel  # unwrapped, in eval mode
    losses: list[float]  # one per optimizer step
    epoch_losses: list[float]
    steps: int
    examples: int  # chats trained on (after dropping ones with nothing to learn)
    timings: dict[str, float] = field(default_factory=dict)  # load_s, train_s, total_s


def _identity(model: torch.nn.Module) -> torch.nn.Module:
    return model


def train_lora(
    base_path: str | Path,
    train_examples: list[Chat],
    config: TrainConfig,
    init_adapter: Path | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    model_wrapper: Callable[[torch.nn.Module], torch.nn.Module] = _identity,
    *,
    on_epoch_end: Callable[[EpochInfo], None] | None = None,
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> TrainResult:
    """Fine-tune a LoRA on ``train_examples`` (chats), loss on assistant tokens only.

    ``model_wrapper`` wraps the model before training (the Ray layer passes
    ``ray.train.torch.prepare_model``, which moves it to the worker's device and adds
    DDP when there are several workers); ``rank`` / ``world_size`` pick this worker's
    share of every epoch.
    """
    started = time.perf_counter()
    device = torch_device(device)
    tokenizer = load_tokenizer(base_path)
    examples = encode_all(tokenizer, train_examples, config.max_length)
    if not examples:
        raise TrainingError("no training example has assistant tokens to learn from")
    model = model_wrapper(build_model(base_path, init_adapter, config, device))
    device = next(model.parameters()).device  # where the wrapper put it
    load_s = time.perf_counter() - started

    params = [p for p in model.parameters() if p.requires_grad]  # the LoRA matrices only
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    micro_per_epoch = math.ceil(math.ceil(len(examples) / world_size) / config.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs

    logger.info("LoRA training: %d chats, %d epochs, %d steps (batch %d x accum %d x %d workers) on %s",
                len(examples), config.epochs, total_steps, config.batch_size, config.grad_accum, world_size, device)
    losses: list[float] = []
    epoch_losses: list[float] = []
    step = 0
    train_started = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        order = _shard(len(examples), rng, rank, world_size)
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        epoch_first_step = len(losses)
        for first in range(0, len(batches), config.grad_accum):
            group = batches[first : first + config.grad_accum]
            step_loss = 0.0
            for indices in group:
                batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], tokenizer.pad_token_id).items()}
                # The model shifts labels itself and averages over the non-ignored tokens.
                loss = model(**batch).loss / len(group)
                loss.backward()
                step_loss += loss.item()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            step += 1
            losses.append(step_loss)
            elapsed = time.perf_counter() - train_started
            if on_step is not None:
                eta = elapsed / step * (total_steps - step)
                on_step(StepInfo(step, total_steps, epoch, step_loss, elapsed, eta, config.learning_rate))
        epoch_losses.append(sum(losses[epoch_first_step:]) / max(1, len(losses) - epoch_first_step))
        logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, config.epochs, epoch_losses[-1])
        if on_epoch_end is not None:
            on_epoch_end(EpochInfo(epoch, config.epochs, step, total_steps, epoch_losses[-1],
                                   time.perf_counter() - train_started))

    peft_model = unwrap(model).eval()
    train_s = time.perf_counter() - train_started
    return TrainResult(
        model=peft_model,
        losses=losses,
        epoch_losses=epoch_losses,
        steps=step,
        examples=len(examples),
        timings={"load_s": load_s, "train_s": train_s, "total_s": time.perf_counter() - started},
    )
