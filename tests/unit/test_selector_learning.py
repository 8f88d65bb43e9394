"""The loop teaches the answer selector: real turns answered through the pipeline (real
e5, Kiwi, Chroma, the extractive answerer), labelled by a correction, 👍 and 👎, then a
run fits, judges and registers a selector version, and rollback brings back the last one."""

import asyncio

import numpy as np
import pytest

from echorag.answering.extractive import ExtractiveGenerator
from echorag.answering.prompts import NO_ANSWER
from echorag.documents import read_jsonl, sample_path
from echorag.learning import local_train_fn
from echorag.learning.selector_learning import drawn_on, example_of, labelled_turns
from echorag.retrieval.embedding import E5Embedder
from echorag.retrieval.hybrid import Retriever
from echorag.retrieval.vector_store import VectorStore
from echorag.serving.memory import SessionMemory
from echorag.serving.pipeline import ChatPipeline
from echorag.serving.routing import Answerer
from echorag.serving.schemas import ChatRequest
from echorag.serving.services import LocalServices
from tests.unit.loop_helpers import WAIT

KB = ("kb-hunminjeongeum", "kb-jeju-island", "kb-korean-war", "kb-dokdo")
QUESTIONS = ("최만리 반대 상소는 몇 년에 올라왔나?", "한라산 높이는 몇 m인가?",
             "6·25 전쟁은 어떻게 시작되었나요?", "독도는 어느 행정 구역에 속하나?")


def test_drawn_on_finds_quotes_trimmed_quotes_and_short_answers_only():
    sentence = "세종은 1443년에 훈민정음을 완성했고, 1446년에 반포했다."
    assert drawn_on("1446년 [1]", sentence)
    assert drawn_on("세종은 1443년에 훈민정음을 완성했고, 1446년에 반포했다. [2]", sentence)
    assert drawn_on("1446년에 반포했다. [1]", sentence)  # the clause the answerer trimmed it to
    assert not drawn_on("훈민정음은 15세기에 만들어졌습니다.", sentence)  # the same topic, other words
    assert not drawn_on("한라산은 1,947m이다. [1]", sentence)


@pytest.fixture()
def served(make, tmp_path, tiny_model_path, one_torch_thread):
    loop = make(local_train_fn(tiny_model_path, batch_size=4, max_length=2048), finetune_batch_size=100)
    settings = loop.settings
    e5 = E5Embedder()
    retriever = Retriever.from_settings(VectorStore.from_settings(settings, e5.id, e5.dim), settings, e5.embed_passages)
    generator = ExtractiveGenerator.from_settings(settings)
    services = LocalServices(settings, e5, retriever, generator, loop)
    services.ingest([d for d in read_jsonl(sample_path("sample_kb.jsonl")) if d["id"] in KB])
    chat = ChatPipeline(services, SessionMemory(settings.memory_turns), Answerer(generator.name, generator.kind))

    def ask(question: str, session: str):
        return asyncio.run(chat.chat(ChatRequest(message=question, session_id=session)))

    return loop, retriever, ask


def test_feedback_and_corrections_label_the_sentences_a_run_learns_from(served):
    loop, retriever, ask = served
    answers = [ask(q, f"s{i}") for i, q in enumerate(QUESTIONS)]
    assert all(a.mlops_info.collected and a.mlops_info.selector_version == "base" for a in answers)
    stored = [loop.store.get_turn(a.turn_id) for a in answers]
    assert all(t.selection is not None and len(t.selection.rows) == len(t.selection.sentences) > 1 for t in stored)
    assert labelled_turns(loop.store) == []  # nothing labels them yet: the answerer's own choices teach nothing

    liked, disliked, unanswerable = answers[0], answers[1], answers[3]
    loop.feedback(liked.turn_id, "up")
    loop.feedback(disliked.turn_id, "down")
    loop.correct(unanswerable.turn_id, NO_ANSWER)
    examples = {t.id: example_of(t) for t in labelled_turns(loop.store)}
    assert set(examples) == {liked.turn_id, disliked.turn_id, unanswerable.turn_id}
    up = examples[liked.turn_id]
    assert up.answerable and 1 <= up.labels.sum() < len(up.labels)
    quoted = [s for s, y in zip(loop.store.get_turn(liked.turn_id).selection.sentences, up.labels) if y]
    assert any("1444년" in s for s in quoted)
    down = examples[disliked.turn_id]
    assert down.answerable is None and down.labels.sum() == 0 and len(down.rows) >= 1  # its quotes, nothing else
    none = examples[unanswerable.turn_id]
    assert none.answerable is False and none.labels.sum() == 0 and len(none.rows) > 1

    # A run fits a version on the base's data plus these, and the gate judges it.
    loop.finetune(force=True)
    assert loop.wait_idle(WAIT)
    history = {row["version"]: row for row in loop.selectors.history()}
    assert set(history) == {"base", "s1"}
    s1 = history["s1"]
    assert s1["status"] in ("promoted", "rejected") and s1["metrics"]["reason"]
    assert s1["parent"] == "base"
    assert s1["fitted_on"]["feedback_questions"] + s1["fitted_on"]["pool_questions"] == 3
    assert any(e.type in ("selector_promoted", "selector_rejected") for e in loop.store.events(limit=20))
    loop.finetune(force=True)  # no label is new: no new version
    assert loop.wait_idle(WAIT) and [r["version"] for r in loop.selectors.history()] == ["base", "s1"]

    # Serving follows the registry: promote s1, then roll back to base.
    assert loop.promote_selector("s1") == "s1"
    retriever.selector = loop.selectors.load_active()
    assert ask(QUESTIONS[0], "s9").mlops_info.selector_version == "s1"
    assert loop.rollback_selector() == "base"
    retriever.selector = loop.selectors.load_active()
    again = ask(QUESTIONS[0], "s10")
    assert again.mlops_info.selector_version == "base" and again.response == liked.response
    assert np.isfinite(loop.selectors.load("s1").sentence.coef).all()
