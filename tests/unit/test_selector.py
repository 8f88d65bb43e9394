"""The learned answer selector on real Kiwi and real e5 features: fitting, calibration,
versions as files; and the small-talk replies every backend gives."""


import numpy as np
import pytest

from echorag.answering import small_talk
from echorag.answering.evidence import analyse
from echorag.answering.selector import FEATURES, AnswerSelector, Example, features, fit
from echorag.documents import read_jsonl, sample_path
from echorag.evaluation.answer_metrics import contains
from echorag.retrieval.embedding import VectorCache
from echorag.types import SearchResult


@pytest.fixture(scope="module")
def examples():
    """Twenty bundled questions (dev half: 14 answerable, 6 not) against their own document
    and two others."""
    from echorag.retrieval.embedding import E5Embedder

    e5 = VectorCache(E5Embedder())
    kb = {d["id"]: d for d in read_jsonl(sample_path("sample_kb.jsonl"))}
    ids = sorted(kb)
    dev = [q for q in read_jsonl(sample_path("dev_queries.jsonl")) if q.get("split") == "dev"]
    queries = [q for q in dev if q["relevant_ids"]][:14] + [q for q in dev if not q["relevant_ids"]][:6]
    made = []
    for n, query in enumerate(queries):
        chosen = list(query["relevant_ids"]) + [ids[n % len(ids)], ids[(n * 7 + 3) % len(ids)]]
        results = [SearchResult(id=f"{d}#0", text=kb[d]["text"], score=1.0 / (1 + i), collection="documents",
                                metadata={"doc_id": d}) for i, d in enumerate(dict.fromkeys(chosen))]
        analysis = analyse(query["query"], results, embedder=e5)
        refs = list(query.get("answers") or [query.get("answer") or ""]) if query["relevant_ids"] else []
        labels = np.array([float(bool(refs) and contains(u.text, refs)) for u in analysis.units])
        made.append((analysis, Example(features(analysis), labels, bool(query["relevant_ids"]))))
    return made


def test_features_are_one_row_per_sentence_and_favour_the_answer(examples):
    analysis, example = next((a, e) for a, e in examples if e.labels.any())
    assert example.rows.shape == (len(analysis.units), len(FEATURES))
    assert np.isfinite(example.rows).all()
    coverage = example.rows[:, FEATURES.index("coverage")]
    assert coverage[example.labels == 1].max() >= np.median(coverage)


def test_a_fitted_selector_is_calibrated_and_ranks_answers_first(examples):
    data = [e for _, e in examples]
    selector = fit(data, "v1", parent="base")
    x = np.vstack([e.rows for e in data])
    y = np.concatenate([e.labels for e in data])
    p = selector.probabilities(x)
    assert ((0 < p) & (p < 1)).all()
    # In aggregate a logistic regression predicts as many positives as it was shown.
    assert p.sum() == pytest.approx(y.sum(), rel=0.15)
    assert p[y == 1].mean() > 3 * p[y == 0].mean()
    assert 0 <= selector.threshold < 1 and selector.fitted_on["questions"] == len(data)
    assert selector.fitted_on["threshold_out_of_fold"]["kept"] is (selector.threshold > 0)
    assert selector.parent == "base"


def test_a_version_saved_and_loaded_decides_the_same(examples, tmp_path):
    selector = fit([e for _, e in examples], "v2")
    selector.save(tmp_path / "v2.json")
    loaded = AnswerSelector.load(tmp_path / "v2.json")
    assert loaded == selector
    for analysis, example in examples[:5]:
        assert np.allclose(loaded.probabilities(example.rows), selector.probabilities(example.rows))
        assert loaded.decide(analysis).selection.selector == "v2"


def test_the_base_version_tells_answerable_questions_from_unanswerable_ones(examples):
    base = AnswerSelector.base()
    assert base.question is not None and 0 < base.threshold < 1
    judged = [(base.answerability(e.rows, base.probabilities(e.rows)), e.answerable) for _, e in examples]
    answerable = [p for p, known in judged if known]
    unanswerable = [p for p, known in judged if not known]
    assert min(answerable) > 0 and np.mean(answerable) > np.mean(unanswerable) + 0.3
    # What the verdict says is what the analysis carries to the answerer.
    for analysis, example in examples:
        assert base.decide(analysis).abstain is base.verdict(example.rows)[1]


def test_a_version_fitted_on_other_features_is_refused(tmp_path):
    text = AnswerSelector.base().to_json().replace('"coverage"', '"old_feature"')
    with pytest.raises(ValueError, match="other features"):
        AnswerSelector.from_json(text)


def test_the_base_version_ships_with_the_package():
    base = AnswerSelector.base()
    assert base.version == "base" and base.features == FEATURES
    assert base.fitted_on["questions"] > 50 and 0 <= base.threshold < 1


@pytest.mark.parametrize(("message", "expected"), [
    ("안녕하세요", "greeting"), ("안녕!", "greeting"), ("반갑습니다 😊", "greeting"),
    ("고마워요", "thanks"), ("감사합니다!", "thanks"), ("잘 있어", "farewell"), ("안녕히 계세요", "farewell"),
    ("뭐 할 수 있어?", "about"), ("넌 누구야?", "about"), ("도움말", "about"),
    # A real question, even after a greeting or about a word that looks like one, is a question.
    ("안녕하세요, 훈민정음은 누가 만들었나요?", None), ("감사원은 무슨 일을 해?", None),
    ("헬로 키티는 누가 만들었어?", None), ("한라산 높이는 몇 m인가?", None),
])
def test_small_talk_is_whole_messages_only(message, expected):
    assert small_talk.kind(message) == expected
    assert (small_talk.reply(message) is None) is (expected is None)


def test_a_greeting_before_a_question_is_left_out_of_what_is_searched():
    assert small_talk.without_greeting("안녕하세요, 훈민정음은 누가 만들었나요?") == "훈민정음은 누가 만들었나요?"
    assert small_talk.without_greeting("안녕! 한라산 높이는?") == "한라산 높이는?"
    assert small_talk.without_greeting("안녕하세요") == "안녕하세요"
    assert small_talk.without_greeting("안녕하세요의 뜻은?") == "안녕하세요의 뜻은?"
