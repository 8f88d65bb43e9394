"""Which stored turns train a run, and which judge it.

- ``train_on`` says which labels are worth learning. A teacher's answer (``extractive``,
  ``openai``: any answerer that is not the student) is a label the student does not
  know yet; the student's own unrated answers are not, so by default they train only
  once a user rated them 👍 or an admin corrected them:

  ============  ==========================================================
  ``teacher``   teacher answers, 👍 answers and corrections (the default)
  ``rated``     👍 answers and corrections
  ``corrected`` corrections only
  ``all``       every answer (the student's own too: opt-in)
  ============  ==========================================================

  👎 answers never train, unless an admin corrected them (the correction trains).
- The evaluation pool: each run's new turns are ranked by a hash of their id and the
  first ``holdout_fraction`` of them join the pool for good. Pool turns never train (not
  in their run, not replayed later); the gate judges every candidate on the newest
  ``pool_size`` of them, so the pool grows with every batch.
- A corrected turn trains on the correction, ``correction_weight`` times, and a turn
  corrected after it was trained on trains again in the next run.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from echorag.learning.database import ConversationStore
from echorag.learning.gate import split_holdout
from echorag.learning.jobs import Chat
from echorag.learning.records import StoredTurn, TrainOn
from echorag.learning.train_config import TrainConfig

TRAIN_ON: tuple[TrainOn, ...] = get_args(TrainOn)

_ACCEPTED = "(feedback >= 0 OR corrected IS NOT NULL)"
_LABELS: dict[str, str] = {
    "teacher": "(label = 'teacher' OR feedback = 1 OR corrected IS NOT NULL)",
    "rated": "(feedback = 1 OR corrected IS NOT NULL)",
    "corrected": "corrected IS NOT NULL",
    "all": "1 = 1",
}


_RECORRECTED = (
    "corrected IS NOT NULL AND corrected_at > (SELECT COALESCE(MAX(started_at), 0) FROM runs WHERE status = 'succeeded')"
)


def labelled(train_on: str) -> str:
    """The SQL condition of turns whose label ``train_on`` learns from."""
    if train_on not in _LABELS:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    return f"{_ACCEPTED} AND {_LABELS[train_on]}"


@dataclass
class RunData:
    """What one run trains on and is judged on."""

    train: list[Chat]  # new turns outside the pool (corrections repeated) plus the replay sample
    pool: list[Chat]  # the newest pool turns up to the run's slice: what the gate judges on
    new_turns: int  # new turns whose label this run may learn from (pool ones included)
    replay_turns: int
    pool_turns: int
    corrected_turns: int


def _chats(turns: list[StoredTurn], correction_weight: int) -> list[Chat]:
    chats: list[Chat] = []
    for turn in turns:
        chats.extend([turn.messages()] * (correction_weight if turn.corrected is not None else 1))
    return chats


def run_data(store: ConversationStore, from_seq: int, to_seq: int, config: TrainConfig) -> RunData:
    """The data of a run on ``(from_seq, to_seq]``: its new turns join the pool by hash,
    the rest train, with a replay sample of earlier non-pool turns."""
    where = labelled(config.train_on)
    new = store.select(f"seq > ? AND seq <= ? AND {where}", (from_seq, to_seq))
    _, held = split_holdout(new, config.holdout_fraction, seed=config.seed)
    # A turn already in the pool (an earlier attempt of this run) stays there.
    held_ids = {t.id for t in held} | {t.id for t in new if t.pool}
    if held_ids:
        store.add_to_pool(held_ids)
    train = [t for t in new if t.id not in held_ids]
    # Turns corrected since the last run that trained, though trained on before, train again.
    new_ids = {t.id for t in new}
    train += [t for t in store.select(f"seq <= ? AND pool = 0 AND {_RECORRECTED} AND {where}", (from_seq,))
              if t.id not in new_ids]
    training_ids = {t.id for t in train}
    replay = [t for t in store.sample(f"seq <= ? AND pool = 0 AND {where}", (from_seq,), config.replay_size(len(train)),
                                      config.seed) if t.id not in training_ids]
    pool = store.select(f"seq <= ? AND pool = 1 AND {where}", (to_seq,), limit=config.pool_size, newest_first=True)
    return RunData(
        train=_chats(train + replay, config.correction_weight),
        pool=[t.messages() for t in pool],
        new_turns=len(new),
        replay_turns=len(replay),
        pool_turns=len(pool),
        corrected_turns=sum(t.corrected is not None for t in train + replay),
    )


def training_turns(store: ConversationStore, train_on: str) -> list[StoredTurn]:
    """Every stored turn a run may learn from (pool turns apart): the training dataset."""
    return store.select(f"pool = 0 AND {labelled(train_on)}")


def export_jsonl(store: ConversationStore, path: str | Path, train_on: str) -> int:
    """Write the training dataset (chat-messages format) atomically; returns the line count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    turns = training_turns(store, train_on)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for turn in turns:
            f.write(turn.export_line() + "\n")
    os.replace(tmp, path)
    return len(turns)
