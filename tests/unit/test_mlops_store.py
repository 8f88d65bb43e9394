import json
import sqlite3
import threading
import time

import pytest

from echorag.learning import ConversationStore, Event
from echorag.learning.dataset import export_jsonl, labelled
from echorag.types import Turn


def turn(i: int, user: str | None = None, assistant: str | None = None, **kw) -> Turn:
    return Turn(
        id=kw.pop("id", f"t{i}"),
        session_id=kw.pop("session_id", "s1"),
        user_id=kw.pop("user_id", "u1"),
        user=user or f"질문 {i}번: 서울의 날씨는 어떤가요?",
        assistant=assistant or f"답변 {i}번: 오늘 서울은 맑습니다.",
        adapter_version="base",
        model="tiny",
        sources=["doc-1"],
        **kw,
    )


@pytest.fixture
def store(tmp_path):
    with ConversationStore(tmp_path / "echorag.sqlite") as s:
        yield s


def test_wal_mode_and_full_sync(store):
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == 2  # FULL


def test_acknowledged_turns_are_on_disk_and_survive_reopening(tmp_path):
    path = tmp_path / "echorag.sqlite"
    store = ConversationStore(path)
    results = [store.add_turn(turn(i)) for i in range(3)]
    assert [r.stored for r in results] == [True] * 3 and [r.seq for r in results] == [1, 2, 3]
    # Another connection (another process, say) sees them before the store is closed.
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 3
    store.close()

    with ConversationStore(path) as reopened:
        turns = reopened.turns_after(0)
        assert [t.id for t in turns] == ["t0", "t1", "t2"] and reopened.max_seq() == 3
        assert turns[0].sources == ["doc-1"] and turns[0].user.startswith("질문 0번")


def test_pii_never_reaches_disk(tmp_path):
    path = tmp_path / "echorag.sqlite"
    secrets = ["010-1234-5678", "kim.minsu@example.com", "900101-1234567", "4111 1111 1111 1111"]
    with ConversationStore(path) as store:
        result = store.add_turn(
            turn(
                1,
                user=f"제 번호는 {secrets[0]}이고 메일은 {secrets[1]}입니다. 주민번호 {secrets[2]}",
                assistant=f"카드 {secrets[3]} 확인했습니다.",
                user_id="kim.minsu@example.com",
            )
        )
        assert result.stored and sorted(result.pii) == ["card", "email", "phone", "rrn"]
        stored = store.turns_after(0)[0]
        assert "[전화번호]" in stored.user and "[이메일]" in stored.user and "[주민등록번호]" in stored.user
        assert "[카드번호]" in stored.assistant
        assert stored.user_id.startswith("anon-")
        assert store.counts().filtered == {"pii_scrubbed": 1}
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("echorag.sqlite"))
    for secret in secrets + ["kim.minsu", "1234567"]:
        assert secret.encode() not in on_disk


def test_filtered_turns_are_counted_by_reason(store):
    assert not store.add_turn(turn(1, user="   ", assistant="답")).stored
    assert store.add_turn(turn(2, user="?", assistant="네, 알겠습니다.")).reason == "too_short"
    assert store.add_turn(turn(3)).stored
    assert store.counts().filtered == {"empty": 1, "too_short": 1}
    assert store.counts().total == 1


def test_duplicates_are_filtered_across_a_reopen(tmp_path):
    path = tmp_path / "echorag.sqlite"
    with ConversationStore(path) as store:
        assert store.add_turn(turn(1, user="환불은 어떻게 하나요?", assistant="고객센터로 문의하세요.")).stored
        again = store.add_turn(turn(2, user="환불은  어떻게 하나요? ", assistant="고객센터로 문의하세요."))
        assert (again.stored, again.reason) == (False, "duplicate")
    with ConversationStore(path) as store:
        after_restart = store.add_turn(turn(3, user="환불은 어떻게 하나요?", assistant="고객센터로 문의하세요."))
        assert after_restart.reason == "duplicate"
        assert store.counts().filtered == {"duplicate": 2} and store.counts().total == 1


def test_recording_the_same_turn_twice_is_idempotent(store):
    first = store.add_turn(turn(1))
    retried = store.add_turn(turn(1))
    assert retried.stored and retried.seq == first.seq and store.counts().total == 1


def test_thumbs_down_turns_are_excluded_from_training_and_export(store, tmp_path):
    for i in range(4):
        store.add_turn(turn(i))
    assert store.set_feedback("t1", -1) and store.set_feedback("t2", 1)
    assert not store.set_feedback("missing", 1)
    with pytest.raises(ValueError):
        store.set_feedback("t0", 5)

    trainable = f"seq > ? AND seq <= ? AND {labelled('all')}"
    assert [t.id for t in store.select(trainable, (0, 4))] == ["t0", "t2", "t3"]
    assert [t.id for t in store.select(trainable, (2, 4))] == ["t2", "t3"]  # seqs (2, 4]
    counts = store.counts()
    assert (counts.total, counts.liked, counts.disliked) == (4, 1, 1)

    out = tmp_path / "export" / "train.jsonl"
    assert export_jsonl(store, out, train_on="all") == 3  # these turns are the student's own answers
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {
        "messages": [
            {"role": "user", "content": "질문 0번: 서울의 날씨는 어떤가요?"},
            {"role": "assistant", "content": "답변 0번: 오늘 서울은 맑습니다."},
        ]
    }
    assert all("질문 1번" not in m["content"] for line in lines for m in line["messages"])


def test_a_sample_is_deterministic_and_only_of_matching_turns(store):
    for i in range(20):
        store.add_turn(turn(i))
    store.set_feedback("t3", -1)
    where, params = "seq <= ? AND feedback >= 0", (10,)
    sample = store.sample(where, params, n=5, seed=7)
    assert sample == store.sample(where, params, n=5, seed=7)
    assert len(sample) == 5 and all(t.seq <= 10 and t.id != "t3" for t in sample)
    assert len(store.sample(where, params, n=100)) == 9


def test_backup_clear_restore_round_trip(store, tmp_path):
    for i in range(3):
        store.add_turn(turn(i))
    store.set_feedback("t1", -1)
    original = store.turns_after(0)

    deleted, backup = store.clear(backup=True, backups_dir=tmp_path / "backups")
    assert deleted == 3 and backup.is_file() and store.counts().total == 0
    assert store.max_seq() == 3  # seqs are never reused: the watermark stays meaningful
    assert store.add_turn(turn(9)).seq == 4

    assert store.restore(backup) == 3
    restored = store.turns_after(0)
    assert restored[:3] == original and restored[3].id == "t9"
    assert store.restore(backup) == 0  # already there
    # The fingerprints came back too: a restored turn's content is still a duplicate.
    assert store.add_turn(turn(10, user=original[0].user, assistant=original[0].assistant)).reason == "duplicate"


def test_restore_refuses_a_file_that_is_not_a_backup(store, tmp_path):
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(ValueError, match="not an EchoRAG"):
        store.restore(other)
    with pytest.raises(FileNotFoundError):
        store.restore(tmp_path / "missing.sqlite")


def test_cleanup_removes_old_data(store):
    store.add_turn(turn(1, created_at=time.time() - 40 * 86400))
    store.add_turn(turn(2))
    assert store.cleanup(keep_days=30)["conversations"] == 1
    assert [t.id for t in store.turns_after(0)] == ["t2"]


def test_runtime_settings_persist_across_restarts(tmp_path):
    path = tmp_path / "echorag.sqlite"
    with ConversationStore(path) as store:
        store.set_settings(finetune_batch_size=50, finetune_auto_trigger=False)
        store.set_setting("finetune_batch_size", 25)
    with ConversationStore(path) as store:
        assert store.runtime_settings() == {"finetune_batch_size": 25, "finetune_auto_trigger": False}
        assert store.get_setting("missing", "기본값") == "기본값"


def test_runs_define_the_trained_watermark(store):
    assert store.trained_watermark() == 0
    first = store.start_run(0, 100)
    store.finish_run(first.id, "succeeded", version="v1", metrics={"holdout_loss": 1.1})
    failed = store.start_run(100, 150)
    store.finish_run(failed.id, "failed", error="CUDA out of memory")
    assert store.trained_watermark() == 100  # a failed run leaves its data pending
    dangling = store.start_run(100, 160, attempts=2)
    [interrupted] = store.interrupt_running_runs()
    assert interrupted.id == dangling.id and interrupted.status == "failed"
    runs = store.runs()
    assert [r.status for r in runs] == ["failed", "failed", "succeeded"]
    assert runs[-1].metrics == {"holdout_loss": 1.1} and runs[-1].version == "v1"


def test_events_are_stored_and_queryable(tmp_path):
    path = tmp_path / "echorag.sqlite"
    with ConversationStore(path) as store:
        store.add_event("training_started", "🚀 미세조정 시작", {"run_id": 1})
        stored = store.add_event(Event(type="training_succeeded", message="✅ 미세조정 완료: v1"))
        assert stored.id == 2
    with ConversationStore(path) as store:
        assert [e.type for e in store.events()] == ["training_succeeded", "training_started"]
        [started] = store.events("training_started")
        assert started.data == {"run_id": 1} and started.message == "🚀 미세조정 시작"
        assert len(store.events(limit=1)) == 1


def test_safe_from_many_threads(store):
    def write(worker: int) -> None:
        for i in range(25):
            store.add_turn(turn(worker * 100 + i))
            store.counts()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [t.seq for t in store.turns_after(0)]
    assert len(seqs) == 200 and seqs == list(range(1, 201))


# The conversations table before served prompts were kept.
_OLD_SCHEMA = """
CREATE TABLE conversations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, session_id TEXT NOT NULL,
    user_id TEXT NOT NULL, user TEXT NOT NULL, assistant TEXT NOT NULL, adapter_version TEXT NOT NULL,
    model TEXT NOT NULL, sources TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL,
    feedback INTEGER NOT NULL DEFAULT 0 CHECK (feedback IN (-1, 0, 1)), fingerprint TEXT NOT NULL UNIQUE
);
INSERT INTO conversations (id, session_id, user_id, user, assistant, adapter_version, model, created_at, fingerprint)
VALUES ('old', 's0', 'u0', '옛 질문입니다', '옛 답변입니다', 'base', 'tiny', 1.0, 'f-old');
"""


def test_a_turn_keeps_the_served_prompt_scrubbed_and_its_origin(store):
    prompt = [{"role": "system", "content": "시스템"},
              {"role": "user", "content": "참고 문서:\n[1]\n제주도는 화산섬이다.\n\n질문: 제 번호 010-1234-5678로 연락 주세요"}]
    assert store.add_turn(turn(1, prompt=prompt, backend="extractive", label="teacher")).stored
    stored = store.get_turn("t1")
    assert stored.backend == "extractive" and stored.label == "teacher" and not stored.closed_book
    assert "010-1234-5678" not in json.dumps(stored.prompt, ensure_ascii=False)
    assert stored.prompt[1]["content"].startswith("참고 문서:\n[1]\n제주도는 화산섬이다.")
    assert stored.messages() == [*stored.prompt, {"role": "assistant", "content": stored.assistant}]


def test_an_old_database_is_migrated_in_place_and_its_turns_train_closed_book(tmp_path):
    path = tmp_path / "echorag.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
    backup = tmp_path / "old-backup.sqlite"
    with sqlite3.connect(backup) as db:
        db.executescript(_OLD_SCHEMA.replace("'old'", "'from-backup'").replace("'f-old'", "'f-backup'"))
    with ConversationStore(path) as store:
        old = store.get_turn("old")
        assert old.closed_book and old.backend == "" and old.label == "self"
        assert old.messages() == [{"role": "user", "content": "옛 질문입니다"}, {"role": "assistant", "content": "옛 답변입니다"}]
        assert store.add_turn(turn(2, prompt=[{"role": "user", "content": "새 질문"}])).stored
        assert store.restore(backup) == 1  # an older backup restores, with the defaults
        assert store.get_turn("from-backup").closed_book
    with ConversationStore(path) as store:  # reopening migrates nothing twice
        assert store.get_turn("t2").prompt == [{"role": "user", "content": "새 질문"}]
