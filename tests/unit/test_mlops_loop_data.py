"""The learning loop's data administration and concurrency, without Ray: restoring
backups, concurrent records, inline submission, damaged versions."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from echorag.learning import BASE, Conflict, LearningLoop, NotFound, TrainingJob, TrainingOutcome
from echorag.learning.progress import StepInfo
from tests.unit.loop_helpers import WAIT, Trainer, turn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    from echorag.learning.api import CleanupRequest, FeedbackRequest, FinetuneRequest, PromoteRequest, RollbackRequest

    assert FinetuneRequest().model_dump() == {"force": False, "backup_existing": True}
    assert FeedbackRequest(turn_id="t", rating="up").value == 1
    assert FeedbackRequest(turn_id="t", rating=-1).value == -1
    assert FeedbackRequest(turn_id="t", rating="👎").value == -1
    assert RollbackRequest(version="base").version == "base" and RollbackRequest().version is None
    for model, body in (
        (FinetuneRequest, {"forse": True}), (FeedbackRequest, {"turn_id": "t", "rating": 2}),
        (FeedbackRequest, {"turn_id": "", "rating": 1}), (RollbackRequest, {"version": "v0"}),
        (RollbackRequest, {"version": "latest"}), (PromoteRequest, {"student_share": 1.5}), (CleanupRequest, {"keep_days": -1}),
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
            on_progress(StepInfo(step, total_steps=3, epoch=0, loss=1.0 / step, elapsed_s=step, eta_s=0.0))
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
    """Every stored turn by id, without its seq (which a restore may change) and its pool
    membership (which a run that starts meanwhile may set)."""
    return {t.id: t.model_dump(exclude={"seq", "pool"}) for t in loop.store.recent_turns(10_000)}


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
    from echorag.learning import MlopsError

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


def test_the_gate_judges_what_is_served_with_the_registered_candidate(make, prebuilt_adapter):
    """With a ``scorer`` (in the cluster: the serving deployment pinned to a version) the
    candidate is registered before the verdict, and the loss and agreement the gate reads
    are measured on what is served under each version."""
    jobs: list[TrainingJob] = []
    asked: list[tuple[str, str, str | None, int]] = []

    class Served:
        def answers(self, version: str, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
            asked.append(("answers", version, status(version), len(prompts)))
            labels = [chat[-1]["content"] for chat in jobs[-1].holdout]
            return labels if version != BASE else ["모르겠습니다."] * len(prompts)

        def loss(self, version: str, pool: list[list[dict]], max_length: int) -> float:
            asked.append(("loss", version, status(version), len(pool)))
            assert all(chat[-1]["role"] == "assistant" for chat in pool)  # scored with their answers
            return 0.5 if version != BASE else 2.5

    def status(version: str) -> str | None:
        return None if version == BASE else loop.registry.info(version).status

    loop = make(adapter_trainer(prebuilt_adapter, jobs), finetune_batch_size=8, loop_kwargs={"scorer": Served()})
    for i in range(8):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    pool = len(jobs[0].holdout)
    assert pool > 0 and asked == [("loss", "v1", "candidate", pool), ("answers", "v1", "candidate", pool),
                                  ("loss", BASE, None, pool), ("answers", BASE, None, pool)]
    info = loop.registry.info("v1")
    assert info.status == "active" and loop.active_version() == "v1"
    assert info.metrics["candidate_loss"] == 0.5 and info.metrics["active_loss"] == 2.5
    assert info.metrics["candidate_agreement"] == 1.0 and info.metrics["active_agreement"] < 0.2
    assert "eval_s" in info.timings


def test_a_traffic_poll_answers_as_soon_as_the_pointer_moves(make, prebuilt_adapter):
    """What ingress replicas keep in memory: ``traffic_after`` holds a poll while nothing
    changes and answers within moments of a promotion, a canary share or a rollback."""
    from echorag.serving.routing import Traffic

    loop = make(adapter_trainer(prebuilt_adapter, []))
    loop.registry.add(prebuilt_adapter)
    known = loop.traffic_after(None)  # nothing known yet: at once
    assert known == Traffic(BASE, 0.0)

    started = time.monotonic()
    assert loop.traffic_after(known, timeout_s=0.5) == known  # unchanged: held until the timeout
    assert time.monotonic() - started >= 0.45

    answers: list[tuple[float, Traffic]] = []

    def follow(since: Traffic, expected: Traffic) -> None:
        """As an ingress replica does: poll again with what the last poll said."""
        begun = time.monotonic()
        while since != expected and time.monotonic() - begun < 20:
            since = loop.traffic_after(since, timeout_s=20)
        answers.append((time.monotonic() - begun, since))

    for change, expected in ((lambda: loop.promote("v1", 0.25), Traffic("v1", 0.25)),
                             (lambda: loop.rollback(), Traffic(BASE, 0.25))):
        waiter = threading.Thread(target=follow, args=(known, expected))
        waiter.start()
        time.sleep(0.3)  # the poll is waiting
        change()
        waiter.join(5)
        waited, known = answers[-1]
        assert known == expected and waited < 2.5, answers
