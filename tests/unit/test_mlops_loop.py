"""The learning loop end to end, without Ray: real LoRA runs on the tiny model
(``local_train_fn``: ``train_lora`` + ``heldout_losses``), runs on threads that
``wait_idle`` joins, webhooks to a receiver on 127.0.0.1, restarts on the same data dir."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from echorag.config import Settings
from echorag.mlops import (
    BASE,
    Conflict,
    ConversationStore,
    LearningLoop,
    NotFound,
    TrainingJob,
    TrainingOutcome,
    local_train_fn,
    validate_adapter_dir,
)
from echorag.pipeline import Turn
from tests.korean_qa import QA
from tests.webhook_receiver import Receiver

WAIT = 120  # seconds: generous upper bound for a run on the tiny model


def turn(i: int) -> Turn:
    q, a = QA[i % len(QA)]
    if i >= len(QA):  # identical turns would be dropped as duplicates
        q, a = f"{q} ({i})", f"{a} ({i})"
    return Turn(id=f"turn-{i}", session_id="s1", user_id="u1", user=q, assistant=a,
                adapter_version="base", model="tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Trainer:
    """A real ``train_fn`` (LoRA on the tiny model) that can block until released and fail
    on purpose; it records every job it was given."""

    def __init__(self, base: Path, *, fail: int = 0, block: bool = False) -> None:
        self.inner = local_train_fn(base, batch_size=4, max_length=96, learning_rate=1e-3)
        self.fail = fail
        self.jobs: list[TrainingJob] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, job: TrainingJob, on_progress) -> TrainingOutcome:
        self.jobs.append(job)
        self.started.set()
        assert self.release.wait(WAIT), "the test never released the run"
        if self.fail:
            self.fail -= 1
            raise RuntimeError("injected failure: CUDA out of memory")
        return self.inner(job, on_progress)


@pytest.fixture
def receiver():
    r = Receiver([])
    yield r
    r.close()


@pytest.fixture
def make(tmp_path):
    """``make(trainer, **settings)``: a LearningLoop on ``tmp_path/data``, closed afterwards."""
    loops: list[LearningLoop] = []

    def build(trainer, *, activated: list | None = None, loop_kwargs: dict | None = None, **settings):
        values = {"data_dir": tmp_path / "data", "finetune_batch_size": 3, "finetune_epochs": 2} | settings
        loop = LearningLoop(
            Settings(**values), trainer,
            warm_up=None if activated is None else activated.append,
            **(loop_kwargs or {}),
        )
        loops.append(loop)
        return loop

    yield build
    for loop in loops:
        loop.close(timeout=WAIT)


def types(loop: LearningLoop) -> list[str]:
    """Event types, oldest first."""
    return [e.type for e in reversed(loop.events(limit=1000).events)]


def test_a_batch_starts_a_run_and_the_gate_promotes_v1(make, tiny_model_path, tmp_path):
    activated: list[str] = []
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, activated=activated)

    infos = [loop.record(turn(i)) for i in range(3)]
    assert [i.collected for i in infos] == [True, True, True]
    assert [i.total_collected for i in infos] == [1, 2, 3]
    assert [i.new_data_count for i in infos] == [1, 2, 3]
    assert [i.should_train for i in infos] == [False, False, True]
    assert infos[2].training_queued and infos[2].current_version == BASE
    assert loop.wait_idle(WAIT)

    assert loop.active_version() == "v1" and activated == ["v1"]
    (job,) = trainer.jobs
    assert (job.from_seq, job.to_seq, job.init_adapter, job.init_version) == (0, 3, None, BASE)
    assert (job.new_turns, len(job.holdout), len(job.train), job.replay_turns) == (3, 1, 2, 0)
    assert job.config["epochs"] == 2  # runtime settings reach the trainer
    info = loop.registry.info("v1")
    assert (info.status, info.parent, info.data_watermark, info.samples) == ("active", BASE, 3, 2)
    assert info.metrics["promoted"] is True
    assert info.metrics["candidate_loss"] <= info.metrics["active_loss"]
    assert info.timings["train_s"] > 0 and info.timings["run_s"] > 0
    validate_adapter_dir(loop.registry.path("v1"))

    assert types(loop) == ["training_started", "adapter_promoted", "training_succeeded"]
    progress = loop.training_progress()
    assert progress.status == "succeeded" and progress.version == "v1" and progress.run_id == 1
    assert progress.step == progress.total_steps == 2 and len(progress.losses) == 2
    assert progress.ended_at >= progress.started_at

    nxt = loop.record(turn(3))
    assert (nxt.new_data_count, nxt.should_train, nxt.training_queued, nxt.current_version) == (1, False, False, "v1")

    (run,) = loop.training_history().runs
    assert (run.outcome, run.version, run.from_seq, run.to_seq, run.attempt) == ("promoted", "v1", 0, 3, 1)
    models = loop.models()
    assert models.active == "v1"
    assert [(m.version, m.status, m.active) for m in models.versions] == [
        (BASE, "base", False), ("v1", "active", True)
    ]

    status = loop.status().model_dump()
    assert set(status) >= {"collector_stats", "training_status", "models_info", "events_summary",
                           "performance_metrics"}
    assert status["collector_stats"]["total_collected"] == 4
    assert status["collector_stats"]["trained_watermark"] == 3
    assert status["training_status"]["is_training"] is False
    assert status["models_info"]["current_version"] == "v1"
    assert status["events_summary"]["by_type"]["training_succeeded"] == 1
    perf = loop.performance()
    assert perf.collected_last_hour == 4 and perf.collection_rate_per_hour == pytest.approx(4 / 24)
    assert perf.success_rate == 1.0 and perf.average_training_time_s > 0 and perf.runs_promoted == 1

    exported = loop.export(inline=True)
    assert exported.count == 4 and exported.jsonl.count("\n") == 4
    assert json.loads(exported.jsonl.splitlines()[0])["messages"][0] == {"role": "user", "content": QA[0][0]}
    written = loop.export(tmp_path / "out" / "train.jsonl")
    assert written.count == 4 and Path(written.path).read_text(encoding="utf-8") == exported.jsonl
    page = loop.conversations(limit=2, offset=1)
    assert page.total == 4 and [t.id for t in page.conversations] == ["turn-2", "turn-1"]


def test_turns_that_arrive_during_a_run_make_exactly_one_follow_up(make, tiny_model_path):
    trainer = Trainer(tiny_model_path, block=True)
    loop = make(trainer)
    for i in range(3):
        loop.record(turn(i))
    assert trainer.started.wait(WAIT)

    during = [loop.record(turn(i)) for i in range(3, 8)]  # 5 turns, more than a batch
    assert all(i.collected and i.training_queued for i in during)
    assert loop.training_progress().status == "training"
    assert loop.training_progress().pending and loop.status().training_status.pending
    assert types(loop).count("training_queued") == 1

    trainer.release.set()
    assert loop.wait_idle(WAIT)
    first, second = trainer.jobs
    assert (first.from_seq, first.to_seq) == (0, 3)
    assert (second.from_seq, second.to_seq, second.new_turns) == (3, 8, 5)
    assert second.init_version == "v1" and second.init_adapter == loop.registry.path("v1")
    assert second.replay_turns == 1  # round(4 train turns * 0.25) earlier turns mixed in
    assert len(second.train) == 4 + 1 and len(second.holdout) == 1
    runs = loop.training_history().runs
    assert [(r.from_seq, r.to_seq, r.status) for r in reversed(runs)] == [(0, 3, "succeeded"), (3, 8, "succeeded")]
    assert loop.registry.info("v2").parent == "v1"
    assert loop.policy.watermark == 8 and loop.policy.new_data == 0
    assert types(loop).count("training_started") == 2


def test_a_failing_run_is_retried_then_reported_and_its_data_stays_pending(make, tiny_model_path, receiver):
    trainer = Trainer(tiny_model_path, fail=10)
    loop = make(trainer, finetune_webhook_url=receiver.url, loop_kwargs={"webhook_flavor": "slack"})
    loop.update_settings({"max_attempts": 2, "retry_backoff_s": 0.05})
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)

    assert len(trainer.jobs) == 2  # the first try and one automatic retry
    assert [j.attempt for j in trainer.jobs] == [1, 2]
    runs = loop.training_history().runs
    assert [(r.status, r.attempt, r.from_seq, r.to_seq) for r in reversed(runs)] == [
        ("failed", 1, 0, 3), ("failed", 2, 0, 3)
    ]
    assert "injected failure" in runs[0].error
    failed = [e for e in loop.events(event_type="training_failed").events]
    assert [e.data["attempt"] for e in failed] == [2, 1]
    assert failed[1].data["retry_in"] == pytest.approx(0.05) and failed[0].data["retry_in"] is None
    # Slack shape: {"text"} only, one per failed attempt
    assert len(receiver.bodies) == 2 and all(set(b) == {"text"} for b in receiver.bodies)
    assert all("미세조정 실패" in b["text"] and "injected failure" in b["text"] for b in receiver.bodies)
    # the data stays pending, what serves is unchanged
    assert loop.active_version() == BASE and loop.registry.versions() == []
    assert loop.policy.watermark == 0 and loop.policy.new_data == 3
    status = loop.status().training_status
    assert status.stalled and status.consecutive_failures == 2 and status.status == "failed"
    assert loop.training_progress().status == "failed"
    assert loop.performance().success_rate == 0.0

    # once the cause is gone a manual run trains on exactly that pending data
    trainer.fail = 0
    started = loop.finetune()
    assert started.started and (started.from_seq, started.to_seq) == (0, 3)
    assert loop.wait_idle(WAIT)
    assert loop.active_version() == "v1" and loop.policy.watermark == 3
    assert len(receiver.bodies) == 3 and "미세조정 완료: v1" in receiver.bodies[-1]["text"]


def test_a_transient_failure_is_retried_automatically(make, tiny_model_path):
    trainer = Trainer(tiny_model_path, fail=1)
    loop = make(trainer)
    loop.update_settings({"retry_backoff_s": 0.01})
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    assert [r.outcome for r in reversed(loop.training_history().runs)] == ["failed", "promoted"]
    assert loop.active_version() == "v1" and loop.policy.failures == 0
    assert types(loop) == ["settings_updated", "training_started", "training_failed", "training_started",
                           "adapter_promoted", "training_succeeded"]


def test_the_gate_keeps_a_worse_version_marked_rejected(make, tiny_model_path):
    activated: list[str] = []
    loop = make(Trainer(tiny_model_path), activated=activated)
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT) and loop.active_version() == "v1"

    loop.update_settings({"gate_tolerance": -0.9})  # demand a 90 % lower held-out loss
    for i in range(3, 6):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)

    assert loop.active_version() == "v1" and activated == ["v1"]
    info = loop.registry.info("v2")
    assert info.status == "rejected" and info.parent == "v1" and info.data_watermark == 6
    assert info.metrics["promoted"] is False and "exceeds the limit" in info.metrics["gate_reason"]
    assert info.metrics["candidate_loss"] is not None and info.metrics["active_loss"] is not None
    assert loop.policy.watermark == 6  # the data was trained on: not pending again
    progress = loop.training_progress()
    assert progress.status == "rejected" and progress.version == "v2"
    rejected = loop.events(event_type="training_rejected").events
    assert len(rejected) == 1 and rejected[0].data["version"] == "v2"
    assert [(m.version, m.status) for m in loop.models().versions] == [
        (BASE, "base"), ("v1", "active"), ("v2", "rejected")
    ]
    assert loop.training_history().runs[0].outcome == "rejected"
    assert loop.status().models_info.rejected == 1

    # a human may still promote it: the gate is a default, not a veto
    change = loop.promote("v2")
    assert (change.active, change.previous) == ("v2", "v1") and activated == ["v1", "v2"]
    assert loop.registry.info("v1").status == "archived"


def test_manual_runs_back_up_and_versions_roll_back_to_base_and_forward(make, tiny_model_path, tmp_path):
    activated: list[str] = []
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, activated=activated, finetune_auto_trigger=False)
    for i in range(2):
        assert not loop.record(turn(i)).training_queued
    below = loop.finetune()
    assert not below.started and "force" in below.message
    assert loop.finetune(force=True).started
    assert loop.wait_idle(WAIT) and loop.active_version() == "v1"
    assert not list((tmp_path / "data" / "backups").glob("adapter-*"))  # base serving: nothing to back up

    for i in range(2, 6):
        loop.record(turn(i))
    assert loop.finetune(backup_existing=True).started
    assert loop.wait_idle(WAIT)
    (backup,) = (tmp_path / "data" / "backups").glob("adapter-v1-*")
    validate_adapter_dir(backup)
    assert "adapter_backed_up" in types(loop)
    assert trainer.jobs[1].init_version == "v1"
    top = loop.active_version()
    assert top in ("v1", "v2")

    change = loop.rollback("base")
    assert (change.active, change.previous) == (BASE, top)
    assert loop.active_version() == BASE and loop.record(turn(6)).current_version == BASE
    assert loop.rollback("v1").active == "v1" and loop.active_version() == "v1"
    assert loop.rollback().active == BASE  # default: the previously active version
    assert activated[-3:] == [BASE, "v1", BASE]
    rolled = loop.events(event_type="adapter_rolled_back").events
    assert [(e.data["from"], e.data["to"]) for e in reversed(rolled)] == [(top, BASE), (BASE, "v1"), ("v1", BASE)]

    with pytest.raises(NotFound):
        loop.rollback("v9")
    with pytest.raises(ValidationError):
        loop.rollback("../v1")
    assert loop.active_version() == BASE


def test_settings_are_validated_and_survive_a_restart(make, tiny_model_path, tmp_path):
    loop = make(Trainer(tiny_model_path))
    for bad in (
        {"batch_size": 0}, {"epochs": 101}, {"learning_rate": 0}, {"batch_sise": 5},
        {"auto_trigger": "maybe"}, {"holdout_fraction": 1}, {"gate_tolerance": -1}, {"max_attempts": 0},
    ):
        with pytest.raises(ValidationError):
            loop.update_settings(bad)
    assert loop.runtime.batch_size == 3 and loop.runtime.epochs == 2  # from Settings

    now = loop.update_settings({"finetune_batch_size": 7, "auto_trigger": False, "epochs": 3,
                                "collection_enabled": False, "learning_rate": 5e-4})
    assert (now.batch_size, now.auto_trigger, now.epochs, now.collection_enabled) == (7, False, 3, False)
    assert loop.policy.config.batch_size == 7 and not loop.policy.config.auto_trigger
    loop.close()

    again = make(Trainer(tiny_model_path))
    rt = again.runtime
    assert (rt.batch_size, rt.auto_trigger, rt.epochs, rt.collection_enabled, rt.learning_rate) == (
        7, False, 3, False, 5e-4
    )
    assert again.policy.config.batch_size == 7
    assert again.status().settings.batch_size == 7
    again.close()

    # a stored value that no longer validates falls back to the default, loudly
    with ConversationStore(tmp_path / "data" / "echorag.sqlite") as store:
        store.set_setting("finetune_batch_size", 0)
    assert make(Trainer(tiny_model_path)).runtime.batch_size == 3


def test_lowering_the_batch_size_starts_a_run(make, tiny_model_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_batch_size=10)
    for i in range(4):
        assert not loop.record(turn(i)).should_train
    loop.update_settings({"batch_size": 4})
    assert loop.wait_idle(WAIT)
    assert [(j.from_seq, j.to_seq) for j in trainer.jobs] == [(0, 4)]
    assert loop.training_progress().trigger == "settings"


def test_finetune_during_a_run_is_a_conflict_and_queues_one_follow_up(make, tiny_model_path):
    trainer = Trainer(tiny_model_path, block=True)
    loop = make(trainer, finetune_auto_trigger=False)
    assert loop.finetune(force=True).message == "no new data"
    for i in range(3):
        loop.record(turn(i))
    first = loop.finetune()
    assert first.started and first.run_id == 1
    assert trainer.started.wait(WAIT)

    for i in range(3, 5):  # fewer than a batch: only the 409 makes a follow-up
        loop.record(turn(i))
    assert not loop.policy.pending
    with pytest.raises(Conflict) as caught:
        loop.finetune(force=True)
    assert caught.value.status_code == 409 and caught.value.detail == {"run_id": 1, "pending": True}
    assert loop.policy.pending and loop.training_progress().pending
    assert "training_queued" in types(loop)

    trainer.release.set()
    assert loop.wait_idle(WAIT)
    assert [(j.from_seq, j.to_seq) for j in trainer.jobs] == [(0, 3), (3, 5)]
    assert loop.training_history().runs[0].metrics["run_id"] == 2
    assert loop.training_progress().trigger == "pending"


def test_collection_off_stores_nothing(make, tiny_model_path):
    loop = make(Trainer(tiny_model_path), finetune_batch_size=100)
    loop.update_settings({"collection_enabled": False})
    off = loop.record(turn(0))
    assert not off.collected and off.total_collected == 0 and loop.store.counts().total == 0
    loop.update_settings({"collection_enabled": True})
    on = loop.record(turn(0))
    assert on.collected and on.total_collected == 1 and on.new_data_count == 1
    assert not loop.record(Turn(id="x", session_id="s", user_id="u", user="", assistant="답", adapter_version="base",
                                model="tiny")).collected  # empty: filtered
    dup = turn(0)
    dup.id = "another-id"
    assert not loop.record(dup).collected  # same content: duplicate
    assert loop.record(turn(0)).collected  # the same turn id again: an idempotent retry
    assert loop.store.counts().total == 1


def test_a_run_interrupted_by_a_restart_is_failed_and_its_data_retrained(make, tiny_model_path, tmp_path):
    with ConversationStore(tmp_path / "data" / "echorag.sqlite") as store:
        for i in range(3):
            store.add_turn(turn(i))
        store.start_run(0, 3)  # the process dies during this run

    trainer = Trainer(tiny_model_path)
    loop = make(trainer, loop_kwargs={"resume": False})
    (run,) = loop.training_history().runs
    assert (run.status, run.outcome, run.from_seq, run.to_seq) == ("failed", "interrupted", 0, 3)
    assert types(loop) == ["training_interrupted"]
    assert loop.policy.watermark == 0 and loop.policy.new_data == 3
    assert loop.policy.failures == 1 and not loop.policy.is_running
    progress = loop.training_progress()
    assert progress.status == "failed" and progress.run_id == 1 and "interrupted" in progress.error
    assert loop.status().events_summary.last_error.startswith("⛔")
    assert trainer.jobs == []
    loop.close()

    # a restart that resumes: the interrupted attempt counts, the retry follows its backoff
    delays: list[float] = []

    def schedule(delay, fn):
        delays.append(delay)
        threading.Thread(target=fn, daemon=True).start()

    again = make(trainer, loop_kwargs={"schedule": schedule})
    assert again.wait_idle(WAIT)
    assert delays == [30.0]  # retry_backoff_s after one failure
    assert [(j.from_seq, j.to_seq, j.attempt) for j in trainer.jobs] == [(0, 3, 2)]
    assert again.active_version() == "v1" and again.policy.watermark == 3
    assert [r.outcome for r in reversed(again.training_history().runs)] == ["interrupted", "promoted"]


def test_a_run_of_only_disliked_turns_completes_without_training(make, tiny_model_path, tmp_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_auto_trigger=False)
    for i in range(3):
        loop.record(turn(i))
    assert loop.feedback("turn-0", -1).rating == -1
    assert loop.feedback("turn-1", "down").rating == -1
    assert loop.feedback("turn-2", "👎").rating == -1
    with pytest.raises(NotFound):
        loop.feedback("no-such-turn", 1)
    with pytest.raises(ValueError):
        loop.feedback("turn-0", 5)

    assert loop.finetune(force=True).started
    assert loop.wait_idle(WAIT)
    assert trainer.jobs == [] and loop.registry.versions() == []
    (run,) = loop.training_history().runs
    assert run.outcome == "empty" and loop.policy.watermark == 3
    assert "training_skipped" in types(loop) and loop.training_progress().status == "succeeded"
    assert loop.export(inline=True).count == 0

    # clearing (with a backup) leaves nothing pending
    loop.record(turn(3))
    cleared = loop.clear_conversations(backup=True)
    assert cleared.deleted == 4 and Path(cleared.backup_path).is_file()
    assert loop.policy.new_data == 0 and loop.store.counts().total == 0
    assert loop.record(turn(4)).new_data_count == 1
    assert loop.cleanup(keep_days=0).conversations == 1
    assert loop.store.counts().total == 0


@pytest.fixture(scope="module")
def prebuilt_adapter(tiny_model_path, tmp_path_factory) -> Path:
    """A genuine (untrained) peft LoRA for the tiny model, for runs that need no training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path_factory.mktemp("prebuilt") / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(adapter)
    return adapter


def test_synchronous_submit_and_schedule_run_everything_inline(make, prebuilt_adapter):
    """``submit``/``schedule`` that call at once (no threads): a failure, its retry and a
    success all happen inside ``record``, without deadlock or recursion trouble."""
    calls: list[int] = []

    def flaky(job: TrainingJob, on_progress) -> TrainingOutcome:
        calls.append(job.attempt)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        shutil.copytree(prebuilt_adapter, job.output_dir)
        return TrainingOutcome(adapter_dir=job.output_dir, candidate_loss=0.9, active_loss=1.0)

    loop = make(flaky, loop_kwargs={"submit": lambda fn: fn(), "schedule": lambda delay, fn: fn()})
    assert not loop.record(turn(0)).training_queued
    assert not loop.record(turn(1)).training_queued
    third = loop.record(turn(2))  # the whole run, retry included, happened in here
    assert third.training_queued  # as it was when the turn was recorded
    assert calls == [1, 2] and loop.active_version() == "v1" and loop.policy.watermark == 3
    assert loop.record(turn(3)).current_version == "v1"
    assert loop.wait_idle(1)


def test_api_models_reject_nonsense():
    from echorag.mlops.api import CleanupRequest, FeedbackRequest, FinetuneRequest, PromoteRequest, RollbackRequest

    assert FinetuneRequest().model_dump() == {"force": False, "backup_existing": True}
    assert FeedbackRequest(turn_id="t", rating="up").value == 1
    assert FeedbackRequest(turn_id="t", rating=-1).value == -1
    assert FeedbackRequest(turn_id="t", rating="👎").value == -1
    assert RollbackRequest(version="base").version == "base" and RollbackRequest().version is None
    for model, body in (
        (FinetuneRequest, {"forse": True}), (FeedbackRequest, {"turn_id": "t", "rating": 2}),
        (FeedbackRequest, {"turn_id": "", "rating": 1}), (RollbackRequest, {"version": "v0"}),
        (RollbackRequest, {"version": "latest"}), (PromoteRequest, {}), (CleanupRequest, {"keep_days": -1}),
    ):
        with pytest.raises(ValidationError):
            model.model_validate(body)


def test_concurrent_records_give_contiguous_runs_one_at_a_time(make, prebuilt_adapter):
    """Many threads record while runs go: runs never overlap, never skip and never repeat data."""
    adapter = prebuilt_adapter
    running, overlaps = [], []

    def fake_train(job: TrainingJob, on_progress) -> TrainingOutcome:
        running.append(job.run_id)
        if len(running) > 1:
            overlaps.append(list(running))
        for step in range(1, 4):
            on_progress({"step": step, "total_steps": 3, "loss": 1.0 / step, "eta_s": 0.0})
            time.sleep(0.01)
        shutil.copytree(adapter, job.output_dir)
        running.remove(job.run_id)
        return TrainingOutcome(adapter_dir=job.output_dir, candidate_loss=1.0, active_loss=1.0)

    loop = make(fake_train, finetune_batch_size=5)
    threads = [
        threading.Thread(target=lambda k=k: [loop.record(turn(100 + 20 * k + i)) for i in range(20)])
        for k in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loop.wait_idle(WAIT)

    assert overlaps == []
    runs = list(reversed(loop.training_history(limit=1000).runs))
    assert runs and all(r.status == "succeeded" for r in runs)
    assert runs[0].from_seq == 0
    assert all(a.to_seq == b.from_seq for a, b in zip(runs, runs[1:]))  # contiguous: no gap, no repeat
    assert loop.registry.versions() == [f"v{i}" for i in range(1, len(runs) + 1)]
    assert loop.store.max_seq() == 120
    assert loop.policy.watermark == runs[-1].to_seq and loop.policy.new_data < 5
    assert loop.training_progress().losses == [1.0, 0.5, 1.0 / 3]


# -- conversation backups and restore ---------------------------------------------------


def adapter_trainer(adapter: Path, jobs: list, release: threading.Event | None = None):
    """A train_fn that copies a prebuilt adapter (no training); optionally waits to be released."""

    def train(job: TrainingJob, on_progress) -> TrainingOutcome:
        jobs.append(job)
        if release is not None:
            assert release.wait(WAIT), "the test never released the run"
        shutil.copytree(adapter, job.output_dir)
        return TrainingOutcome(adapter_dir=job.output_dir, candidate_loss=0.9, active_loss=1.0)

    return train


def snapshot(loop: LearningLoop) -> dict[str, dict]:
    """Every stored turn by id, without its seq (which a restore may change)."""
    return {t.id: t.model_dump(exclude={"seq"}) for t in loop.store.recent_turns(10_000)}


def test_restore_brings_back_a_cleared_backup_and_trains_each_turn_once(make, prebuilt_adapter):
    jobs: list[TrainingJob] = []
    loop = make(adapter_trainer(prebuilt_adapter, jobs), finetune_batch_size=3)
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT) and loop.active_version() == "v1" and loop.policy.watermark == 3
    loop.record(turn(3))
    loop.record(turn(4))  # seq 4 and 5: collected, not trained yet
    loop.feedback("turn-0", "up")
    loop.feedback("turn-4", "down")
    before = snapshot(loop)
    assert len(before) == 5 and loop.backups().count == 0

    cleared = loop.clear_conversations(backup=True)
    assert cleared.deleted == 5 and loop.store.counts().total == 0
    assert loop.policy.watermark == 5 and loop.policy.new_data == 0  # the clear consumed seq 4, 5
    (backup,) = loop.backups().backups
    assert backup.name == Path(cleared.backup_path).name and backup.turns == 5 and backup.size_bytes > 0
    assert backup.created_at == pytest.approx(time.time(), abs=60)
    loop.record(turn(5))  # seq 6, arrives after the clear

    restored = loop.restore(backup.name)
    assert (restored.backup, restored.restored, restored.skipped) == (backup.name, 5, 0)
    assert (restored.already_trained, restored.pending) == (3, 2)
    assert (restored.total_collected, restored.new_data_count) == (6, 3)
    assert restored.training_queued  # 3 pending turns: the batch size, so a run starts by itself
    after = snapshot(loop)
    assert {k: v for k, v in after.items() if k != "turn-5"} == before  # same text, feedback, times
    seqs = {t.id: t.seq for t in loop.store.recent_turns(100)}
    assert [seqs[f"turn-{i}"] for i in range(3)] == [1, 2, 3]  # trained: kept below the watermark
    assert (seqs["turn-5"], seqs["turn-3"], seqs["turn-4"]) == (6, 7, 8)  # untrained: pending again
    event = loop.events("conversations_restored").events[0]
    assert event.data.items() >= {"backup": backup.name, "restored": 5, "pending": 2, "already_trained": 3}.items()
    assert "복원" in event.message

    # That run trains exactly the turns never trained: turn-3 and turn-5 (turn-4 is 👎).
    assert loop.wait_idle(WAIT)
    first, second = jobs
    assert (second.from_seq, second.to_seq, second.new_turns) == (5, 8, 2)
    trained_users = {m[0]["content"] for m in second.train + second.holdout}
    assert trained_users >= {turn(3).user, turn(5).user} and turn(4).user not in trained_users
    assert first.new_turns == 3 and loop.policy.watermark == 8 and loop.policy.new_data == 0

    again = loop.restore(backup.name)  # nothing doubled
    assert (again.restored, again.skipped, again.pending) == (0, 5, 0)
    assert loop.store.counts().total == 6 and loop.policy.new_data == 0


def test_restore_refuses_names_outside_the_backups_dir(make, prebuilt_adapter, tmp_path):
    from echorag.mlops import MlopsError

    loop = make(adapter_trainer(prebuilt_adapter, []), finetune_auto_trigger=False)
    loop.record(turn(0))
    cleared = loop.clear_conversations(backup=True)
    outside = tmp_path / "conversations-outside.sqlite"
    shutil.copy(cleared.backup_path, outside)
    (loop.backups_dir / "conversations-link.sqlite").symlink_to(outside)
    (loop.backups_dir / "conversations-garbage.sqlite").write_text("not a database")

    for name in ("../echorag.sqlite", str(outside), "echorag.sqlite", "conversations-link.sqlite",
                 "backups/../../data/echorag.sqlite", "", "conversations-\0.sqlite"):
        with pytest.raises(MlopsError) as refused:
            loop.restore(name)
        assert refused.value.status_code == 400 and not isinstance(refused.value, NotFound), name
        assert "GET /mlops/backups" in str(refused.value)
    with pytest.raises(NotFound) as missing:
        loop.restore("conversations-20990101-000000-abcdef.sqlite")
    assert missing.value.status_code == 404
    with pytest.raises(MlopsError, match="not a readable conversation backup") as garbage:
        loop.restore("conversations-garbage.sqlite")
    assert garbage.value.status_code == 400
    assert loop.store.counts().total == 0  # nothing was restored by any of these

    listed = {b.name: b.turns for b in loop.backups().backups}
    assert listed[Path(cleared.backup_path).name] == 1 and listed["conversations-garbage.sqlite"] is None
    # the full path that clear_conversations returned is accepted too
    assert loop.restore(cleared.backup_path).restored == 1


def test_restore_waits_for_a_run_in_progress(make, prebuilt_adapter):
    release = threading.Event()
    jobs: list[TrainingJob] = []
    loop = make(adapter_trainer(prebuilt_adapter, jobs, release), finetune_batch_size=2)
    loop.record(turn(0))
    cleared = loop.clear_conversations(backup=True)
    loop.record(turn(1))
    loop.record(turn(2))  # a run starts and blocks
    assert loop.policy.is_running
    with pytest.raises(Conflict) as busy:
        loop.restore(Path(cleared.backup_path).name)
    assert busy.value.status_code == 409 and loop.store.counts().total == 2
    release.set()
    assert loop.wait_idle(WAIT)
    restored = loop.restore(Path(cleared.backup_path).name)
    assert (restored.restored, restored.pending) == (1, 1)  # turn-0 was cleared untrained


def test_a_damaged_version_is_refused_with_an_event_and_never_served(make, tmp_path):
    from tests.unit.test_mlops_registry import saved_adapter

    activated: list[str] = []
    loop = make(Trainer(tmp_path), activated=activated)
    loop.registry.add(saved_adapter(tmp_path / "run1"))
    (loop.registry.path("v1") / "adapter_model.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(NotFound, match="unreadable"):
        loop.promote("v1")
    with pytest.raises(NotFound):
        loop.rollback("v7")
    assert loop.active_version() == BASE and activated == []
    refused = [e for e in loop.events(limit=10).events if e.type == "adapter_refused"]
    assert [e.data["version"] for e in refused] == ["v7", "v1"]  # newest first
