import math
import threading
import unicodedata

import numpy as np
import pytest

from echorag.evaluation.retrieval_metrics import evaluate, load_jsonl, mrr_at_k, ndcg_at_k, recall_at_k
from echorag.retrieval.lexical import BM25Index, fuse

DOCS = {
    "seoul": "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다.",
    "busan": "부산은 대한민국 제2의 도시로 해운대 해수욕장이 유명하다.",
    "kimchi": "김치는 배추를 소금에 절여 고춧가루와 함께 발효시킨 음식이다.",
    "ktx": "KTX 고속열차를 타면 서울에서 부산까지 약 2시간 30분이 걸린다.",
}


@pytest.fixture
def index() -> BM25Index:
    index = BM25Index()
    index.add(list(DOCS), list(DOCS.values()))
    return index


def top(index: BM25Index, query: str, k: int = 10) -> list[str]:
    return [doc_id for doc_id, _ in index.search(query, k)]


# --- BM25Index -------------------------------------------------------------------


def test_query_with_other_particles_and_endings_finds_the_document(index):
    # The document says '김치는 ... 발효시킨 음식이다'; the query conjugates and inflects differently.
    assert top(index, "김치를 어떻게 발효시키나요?")[0] == "kimchi"
    assert top(index, "해운대가 있는 도시가 어디야")[0] == "busan"
    assert top(index, "ktx로 몇 시간 걸려요?")[0] == "ktx"  # Latin is case-insensitive


def test_nfd_query_finds_nfc_text(index):
    query = unicodedata.normalize("NFD", "한강은 어디를 흐르나요")
    assert top(index, query)[0] == "seoul"


def test_search_returns_best_first_positive_scores_and_at_most_k(index):
    results = index.search("서울 부산", k=2)
    assert len(results) == 2
    assert results[0][1] >= results[1][1] > 0
    assert top(index, "서울 부산", k=100)[:1] == ["ktx"]  # the only document with both
    assert len(index.search("서울 부산", k=100)) == 3  # 'kimchi' shares no term
    assert index.search("서울", k=0) == []


def test_no_match_and_empty_index_give_nothing(index):
    assert index.search("양자역학", 5) == []
    assert index.search("", 5) == []
    assert index.search("은는이가", 5) == []  # particles only
    assert BM25Index().search("서울", 5) == []


def test_readding_an_id_replaces_its_text(index):
    index.add(["kimchi"], ["비빔밥은 밥에 나물과 고추장을 넣어 비벼 먹는 음식이다."])
    assert len(index) == 4
    assert "kimchi" not in top(index, "배추 김치 발효")
    assert top(index, "비빔밥에 고추장")[0] == "kimchi"


def test_remove_and_clear(index):
    index.remove(["busan", "no-such-id"])
    assert len(index) == 3 and "busan" not in index
    assert "busan" not in top(index, "해운대 해수욕장 부산")
    index.clear()
    assert len(index) == 0
    assert index.search("서울", 5) == []
    index.add(["again"], ["서울역에서 만나요"])
    assert top(index, "서울역") == ["again"]


def test_ids_are_not_indexed_as_text():
    index = BM25Index()
    index.add(["김치"], ["부산의 바다는 아름답다."])
    assert index.search("김치", 5) == []


def test_old_texts_are_not_re_tokenised_after_add():
    calls: list[list[str]] = []

    def tokenize(texts: list[str]) -> list[list[str]]:
        calls.append(texts)
        return [text.split() for text in texts]

    index = BM25Index(tokenize=tokenize)
    index.add(["a", "b"], ["red apple", "green pear"])
    index.search("apple", 1)
    index.add(["c"], ["red cherry"])
    assert top(index, "red", 5) == ["a", "c"]  # equal scores: ties go by id
    tokenised = [text for call in calls for text in call]
    assert tokenised.count("red apple") == 1 and tokenised.count("green pear") == 1


def test_search_also_scores_the_included_ids(index):
    ranking = index.search("김치 발효", 1, include=["seoul", "kimchi", "unknown"])
    assert ranking[0][0] == "kimchi" and ranking[0][1] > 0
    assert ranking[1:] == [("seoul", 0.0)]  # shares no term: an exact 0, unknown ids skipped
    # an included id that is also in the top k appears once
    assert [d for d, _ in index.search("김치", 5, include=["kimchi"])] == ["kimchi"]
    assert index.search("김치", 0, include=["busan"]) == [("busan", 0.0)]


def test_terms_tokenised_before_give_the_same_index(index):
    """What a new replica does with the terms stored beside each chunk: no Kiwi, same scores."""
    from echorag.korean import morphemes_many

    calls: list[list[str]] = []

    def tokenize(texts: list[str]) -> list[list[str]]:
        calls.append(list(texts))
        return morphemes_many(texts)

    again = BM25Index(tokenize=tokenize)
    again.add_terms(list(DOCS), index.terms(list(DOCS.values())))
    queries = ("김치를 어떻게 발효시키나요?", "서울 부산", "해운대가 있는 도시")
    for query in queries:
        assert again.search(query, 4) == index.search(query, 4)
    assert calls == [[q] for q in queries]  # only the queries were tokenised
    with pytest.raises(ValueError):
        again.add_terms(["a"], [])


def test_add_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        BM25Index().add(["a", "b"], ["only one"])


def test_concurrent_adds_and_searches_are_safe():
    index = BM25Index()
    errors: list[Exception] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                index.add([f"{n}-{i}"], [f"스레드 {n}번이 문서 {i}번을 추가했다"])
                index.search("문서 추가", 3)
        except Exception as error:  # pragma: no cover - the failure we look for
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 40
    assert len(index.search("문서", 100)) == 40


# --- fusion ----------------------------------------------------------------------

DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
SPARSE = [("b", 12.0), ("d", 9.0), ("a", 1.0)]


@pytest.mark.parametrize("method", ["rrf", "score", "zscore"])
def test_a_document_high_in_both_rankings_wins(method):
    dense = [("only-dense", 0.95), ("both", 0.9), ("x", 0.1)]
    sparse = [("only-sparse", 15.0), ("both", 14.0), ("y", 1.0)]
    fused = fuse({"dense": dense, "bm25": sparse}, method=method)
    assert fused[0][0] == "both"
    assert {doc_id for doc_id, _ in fused} == {"only-dense", "both", "x", "only-sparse", "y"}


def test_rrf_scores_are_weighted_reciprocal_ranks():
    fused = dict(fuse({"dense": DENSE, "bm25": SPARSE}, rrf_k=60))
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["d"] == pytest.approx(1 / 62)


@pytest.mark.parametrize("method", ["rrf", "score", "zscore"])
def test_weights_shift_the_result(method):
    rankings = {"dense": [("a", 0.9), ("b", 0.1)], "bm25": [("b", 10.0), ("a", 2.0)]}
    assert fuse(rankings, {"dense": 3.0, "bm25": 1.0}, method=method)[0][0] == "a"
    assert fuse(rankings, {"dense": 1.0, "bm25": 3.0}, method=method)[0][0] == "b"
    assert fuse(rankings, {"dense": 1.0, "bm25": 0.0}, method=method)[0][0] == "a"


def test_score_fusion_min_max_normalises_each_ranking():
    fused = dict(fuse({"dense": DENSE, "bm25": SPARSE}, method="score"))
    assert fused["b"] == pytest.approx(0.5 + 1.0)
    assert fused["a"] == pytest.approx(1.0 + 0.0)
    assert fused["d"] == pytest.approx(8 / 11)
    assert fused["c"] == pytest.approx(0.0)


def test_score_fusion_single_item_ranking_counts_as_best():
    fused = fuse({"dense": [("a", 0.3)], "bm25": [("b", 7.0), ("a", 3.0)]}, method="score")
    # a: 1 (the only dense item) + 0 (last in bm25); b: 0 + 1. Tied, so by id.
    assert fused == [("a", 1.0), ("b", 1.0)]


def test_zscore_fusion_standardises_each_ranking():
    fused = dict(fuse({"dense": DENSE, "bm25": SPARSE}, method="zscore"))
    dense_sd, sparse_sd = np.std([0.9, 0.8, 0.7]), np.std([12.0, 9.0, 1.0])
    assert fused["b"] == pytest.approx(0.0 / dense_sd + (12.0 - 22 / 3) / sparse_sd)
    assert fused["c"] == pytest.approx(-0.1 / dense_sd)
    assert fused["d"] == pytest.approx((9.0 - 22 / 3) / sparse_sd)


def test_zscore_fusion_gives_a_flat_ranking_no_say():
    # BM25 saw no difference (every candidate scored 0): the dense order stands.
    fused = fuse({"dense": [("a", 0.9), ("b", 0.5)], "bm25": [("a", 0.0), ("b", 0.0)]},
                 {"bm25": 10.0}, method="zscore")
    assert [doc_id for doc_id, _ in fused] == ["a", "b"]
    assert fuse({"dense": [("a", 0.3)]}, method="zscore") == [("a", 0.0)]


def test_fusion_of_empty_inputs():
    assert fuse({}) == []
    assert fuse({"dense": [], "bm25": []}) == []
    assert fuse({"dense": [], "bm25": [("a", 1.0)]}, method="score") == [("a", 1.0)]


def test_fusion_ties_are_deterministic():
    rankings = {"dense": [("z", 1.0)], "bm25": [("m", 1.0)]}
    assert fuse(rankings) == fuse(dict(reversed(rankings.items()))) == [("m", 1 / 61), ("z", 1 / 61)]


def test_fusion_rejects_unknown_method():
    with pytest.raises(ValueError):
        fuse({"dense": DENSE}, method="max")  # type: ignore[arg-type]


# --- metrics ---------------------------------------------------------------------


def test_metrics_on_hand_checked_examples():
    ranked = ["x", "a", "y", "b"]
    relevant = ["a", "b"]
    # DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3)
    expected_ndcg = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(expected_ndcg)
    assert ndcg_at_k(ranked, relevant, 1) == 0.0
    assert ndcg_at_k(["a", "b"], relevant, 10) == pytest.approx(1.0)
    assert recall_at_k(ranked, relevant, 2) == 0.5
    assert recall_at_k(ranked, relevant, 4) == 1.0
    assert mrr_at_k(ranked, relevant, 10) == 0.5
    assert mrr_at_k(ranked, relevant, 1) == 0.0
    assert mrr_at_k(["a", "a"], ["a"], 10) == 1.0
    assert recall_at_k(["a", "a"], ["a", "b"], 2) == 0.5  # a repeated hit counts once
    assert ndcg_at_k([], ["a"]) == 0.0 and ndcg_at_k(["a"], []) == 0.0


def test_evaluate_averages_over_queries():
    result = evaluate([["a", "b"], ["x", "y", "c"]], [["a"], ["c"]])
    assert set(result) == {"ndcg@10", "recall@1", "recall@5", "recall@10", "mrr@10", "queries"}
    assert result["queries"] == 2
    assert result["recall@1"] == 0.5
    assert result["recall@5"] == 1.0
    assert result["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["ndcg@10"] == pytest.approx((1 + 0.5) / 2)  # 1/log2(4) = 0.5
    with pytest.raises(ValueError):
        evaluate([["a"]], [])


def test_load_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "1", "query": "서울"}\n\n{"id": "2", "query": "부산"}\n', encoding="utf-8")
    assert load_jsonl(path) == [{"id": "1", "query": "서울"}, {"id": "2", "query": "부산"}]
