"""Which stored turns train and which judge (echorag.learning.dataset), on a real SQLite store."""

import json

import pytest

from echorag.learning import ConversationStore
from echorag.learning.dataset import export_jsonl, run_data, training_turns
from echorag.learning.train_config import TrainConfig
from echorag.types import Turn


def turn(i: int, label: str = "teacher") -> Turn:
    return Turn(
        id=f"t{i}", session_id="s1", user_id="u1", user=f"질문 {i}번: 한라산의 높이는?",
        assistant=f"답변 {i}번: 한라산은 1,947m입니다. [1]", adapter_version="base", model="m",
        prompt=[{"role": "system", "content": "시스템"}, {"role": "user", "content": f"참고 문서: … 질문 {i}번"}],
        backend="extractive" if label == "teacher" else "tiny", label=label,
    )


@pytest.fixture
def store(tmp_path):
    with ConversationStore(tmp_path / "echorag.sqlite") as s:
        yield s


def ids(turns) -> list[str]:
    return [t.id for t in turns]


def test_train_on_chooses_the_labels(store):
    store.add_turn(turn(0, "teacher"))
    for i in (1, 2, 3, 4):
        store.add_turn(turn(i, "self"))
    store.set_feedback("t1", 1)  # 👍 on the student's answer
    store.set_feedback("t2", -1)  # 👎
    store.correct("t3", "한라산의 높이는 1,947m입니다.")
    assert ids(training_turns(store, "teacher")) == ["t0", "t1", "t3"]  # the student's unrated t4 is not a label
    assert ids(training_turns(store, "rated")) == ["t1", "t3"]
    assert ids(training_turns(store, "corrected")) == ["t3"]
    assert ids(training_turns(store, "all")) == ["t0", "t1", "t3", "t4"]
    store.correct("t2", "바로잡은 답입니다.")  # a 👎 answer, corrected: the correction trains
    assert "t2" in ids(training_turns(store, "corrected"))
    with pytest.raises(ValueError, match="train_on"):
        training_turns(store, "everything")


def test_a_correction_is_kept_beside_the_original_and_trains_with_weight(store):
    store.add_turn(turn(0))
    store.add_turn(turn(1))
    corrected = store.correct("t1", "  한라산은 해발 1,947m이며 연락처는 010-1234-5678입니다.  ")
    assert corrected.assistant == "답변 1번: 한라산은 1,947m입니다. [1]"  # never overwritten
    assert corrected.corrected.startswith("한라산은 해발 1,947m") and "010-1234-5678" not in corrected.corrected
    assert corrected.label_origin == "corrected" and corrected.messages()[-1]["content"] == corrected.corrected
    assert store.correct("missing", "답") is None
    data = run_data(store, 0, 2, TrainConfig(holdout_fraction=0.0, correction_weight=3))
    answers = [chat[-1]["content"] for chat in data.train]
    assert answers.count(corrected.corrected) == 3 and answers.count("답변 0번: 한라산은 1,947m입니다. [1]") == 1
    assert data.corrected_turns == 1


def test_the_pool_is_chosen_by_hash_never_trains_and_grows_with_every_batch(store):
    config = TrainConfig(holdout_fraction=0.2, replay_fraction=10.0, pool_size=100)
    for i in range(10):
        store.add_turn(turn(i))
    first = run_data(store, 0, 10, config)
    pool_ids = {t.id for t in store.select("pool = 1")}
    assert len(pool_ids) == first.pool_turns == 2 and len(first.train) == 8
    trained = {chat[1]["content"] for chat in first.train}
    assert len(trained) == 8 and not trained & {f"참고 문서: … 질문 {t[1:]}번" for t in pool_ids}
    assert run_data(store, 0, 10, config).pool == first.pool  # a retry: the same pool
    for i in range(10, 20):
        store.add_turn(turn(i))
    second = run_data(store, 10, 20, config)  # replays everything earlier it may
    assert second.pool_turns == 4 and second.replay_turns == 8
    assert not {t.id for t in store.select("pool = 1")} & set(ids(training_turns(store, "teacher")))
    assert run_data(store, 10, 20, TrainConfig(holdout_fraction=0.2, pool_size=3)).pool_turns == 3  # newest 3


def test_a_turn_corrected_after_training_trains_again(store):
    for i in range(3):
        store.add_turn(turn(i))
    config = TrainConfig(holdout_fraction=0.0, replay_fraction=0.0)
    assert len(run_data(store, 0, 3, config).train) == 3
    run = store.start_run(0, 3)
    store.finish_run(run.id, "succeeded")
    for i in range(3, 5):
        store.add_turn(turn(i))
    assert len(run_data(store, 3, 5, config).train) == 2
    store.correct("t1", "바로잡은 답입니다.")
    again = run_data(store, 3, 5, config)
    assert [c[-1]["content"] for c in again.train].count("바로잡은 답입니다.") == config.correction_weight


def test_export_writes_the_training_set_in_chat_format(store, tmp_path):
    store.add_turn(turn(0))
    store.add_turn(turn(1, "self"))
    out = tmp_path / "train.jsonl"
    assert export_jsonl(store, out, "teacher") == 1
    line = json.loads(out.read_text(encoding="utf-8"))
    assert line["messages"][0] == {"role": "system", "content": "시스템"}
    assert line["messages"][-1]["role"] == "assistant"
