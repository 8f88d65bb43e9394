"""The hybrid retriever on real Chroma (embedded) with the real e5 embedder."""

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings

from echorag.korean import morphemes_many, split_sentences
from echorag.retrieval.bm25_snapshots import BM25Snapshots
from echorag.retrieval.embedding import E5Embedder
from echorag.retrieval.hybrid import Retriever, chunk_documents
from echorag.retrieval.vector_store import EmbedderMismatchError, VectorStore, reindex
from echorag.types import Turn

DOCS = [
    {"id": "seoul", "text": "서울은 대한민국의 수도이다. 한강이 도시를 가로지른다.", "metadata": {"title": "서울"}},
    {"id": "busan", "text": "부산은 대한민국 제2의 도시이며 큰 항구가 있다. 해운대 해수욕장이 유명하다."},
    {"id": "kimchi", "text": "김치는 배추를 소금에 절인 뒤 고춧가루 양념으로 버무려 발효시킨 음식이다."},
    {"id": "jeju", "text": "제주도는 화산섬으로 한라산이 있다. 감귤과 돌하르방으로 유명하다."},
]


@pytest.fixture(scope="module")
def embedder():
    return E5Embedder()


@pytest.fixture()
def client(tmp_path):
    return chromadb.PersistentClient(str(tmp_path / "chroma"), settings=ChromaSettings(anonymized_telemetry=False))


def _index(client, embedder, docs=DOCS):
    retriever = Retriever(VectorStore(client, embedder.id, embedder.dim))
    chunks = chunk_documents(docs, 200, 50)
    retriever.add_chunks(chunks, embedder.embed_passages([c.text for c in chunks]))
    return retriever


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
@pytest.mark.parametrize(("query", "doc"), [("한국의 수도는 어디야?", "seoul"), ("해운대가 있는 도시", "busan"), ("배추를 절이는 발효 음식", "kimchi")])
def test_each_mode_finds_the_document(client, embedder, mode, query, doc):
    retriever = _index(client, embedder)
    hits = retriever.search(query, embedder.embed_queries([query])[0], 3, mode=mode)
    assert hits[0].metadata["doc_id"] == doc
    assert hits[0].text and isinstance(hits[0].score, float)


def test_bm25_is_rebuilt_from_chroma_after_a_restart(client, embedder):
    _index(client, embedder)
    reopened = Retriever(VectorStore(client, embedder.id, embedder.dim))
    assert reopened.search("한라산 감귤", None, 1, mode="bm25")[0].metadata["doc_id"] == "jeju"


def test_reingesting_a_document_replaces_its_chunks(client, embedder):
    retriever = _index(client, embedder)
    before = retriever.counts()["documents"]
    changed = [{"id": "seoul", "text": "서울의 인구는 약 930만 명이다."}]
    chunks = chunk_documents(changed, 200, 50)
    retriever.add_chunks(chunks, embedder.embed_passages([c.text for c in chunks]))
    assert retriever.counts()["documents"] == before
    assert not retriever.search("한강", None, 5, mode="bm25") or all(
        "한강" not in h.text for h in retriever.search("한강", None, 5, mode="bm25")
    )


def test_memory_is_recalled_only_for_its_user(client, embedder):
    retriever = _index(client, embedder)
    question = "내 강아지 이름은 초코야"
    turn = Turn(id="t1", session_id="s", user_id="alice", user=question, assistant="초코라는 이름이 귀엽네요.",
                adapter_version="base", model="extractive")
    retriever.remember_turn(turn, embedder.embed_queries([question])[0])
    query = embedder.embed_queries(["강아지 이름이 뭐였지?"])[0]
    assert [h.id for h in retriever.recall(query, 3, "alice")] == ["t1"]
    assert retriever.recall(query, 3, "bob") == []
    context = retriever.chat_context("강아지 이름이 뭐였지?", query, "alice", 2, 1)
    assert [r.collection for r in context] == ["documents", "documents", "memory"]


def test_turns_remembered_together_are_each_recalled_by_their_own_user(client, embedder):
    retriever = _index(client, embedder)
    questions = ["내 강아지 이름은 초코야", "내 고양이 이름은 나비야"]
    turns = [Turn(id=f"t{i}", session_id=f"s{i}", user_id=user, user=q, assistant="기억할게요.",
                  adapter_version="base", model="extractive")
             for i, (user, q) in enumerate(zip(["alice", "bob"], questions))]
    retriever.remember_turns(turns, list(embedder.embed_queries(questions)))  # one store write
    alice = retriever.recall(embedder.embed_queries(["강아지 이름이 뭐였지?"])[0], 3, "alice")
    bob = retriever.recall(embedder.embed_queries(["고양이 이름이 뭐였지?"])[0], 3, "bob")
    assert [h.id for h in alice] == ["t0"] and "초코" in alice[0].text
    assert [h.id for h in bob] == ["t1"] and "나비" in bob[0].text


def test_another_embedder_is_refused_with_the_reindex_command(client, embedder):
    _index(client, embedder)
    with pytest.raises(EmbedderMismatchError, match="echorag reindex"):
        VectorStore(client, "kanana:other:mean", 1792)


def test_reindex_swaps_in_the_new_embedder_without_losing_text(client, embedder):
    _index(client, embedder)

    class Halved:  # a different embedder: e5 vectors folded to half the dimension
        id, dim = "test:halved", embedder.dim // 2

        def embed_passages(self, texts):
            v = embedder.embed_passages(texts)
            v = v[:, : self.dim] + v[:, self.dim :]
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    counts = reindex(client, Halved())
    assert counts["documents"] == len(chunk_documents(DOCS, 200, 50))
    store = VectorStore(client, Halved.id, Halved.dim)
    assert {h.metadata["doc_id"] for h in store.get_all("documents")} == {d["id"] for d in DOCS}


def test_e5_vectors_are_unit_length_and_nfd_matches_nfc(embedder):
    import unicodedata

    text = "훈민정음은 세종대왕이 만들었다"
    nfc, nfd = embedder.embed_queries([text, unicodedata.normalize("NFD", text)])
    assert np.allclose(np.linalg.norm(nfc), 1.0, atol=1e-5)
    assert np.allclose(nfc, nfd)


def test_dense_score_blends_the_chunk_and_its_best_sentence(client, embedder):
    doc = {"id": "long", "text": "부산은 대한민국 제2의 도시이다. 해운대 해수욕장이 유명하다. 김치는 발효 음식이다."}
    retriever = Retriever(VectorStore(client, embedder.id, embedder.dim),
                          embed_passages=embedder.embed_passages, sentence_weight=0.5)
    chunks = chunk_documents([doc], 500, 100)
    retriever.add_chunks(chunks, embedder.embed_passages([c.text for c in chunks]))
    query = embedder.embed_queries(["김치는 어떤 음식인가?"])[0]
    chunk_cos = float(embedder.embed_passages([chunks[0].text])[0] @ query)
    best_sentence = float(max(embedder.embed_passages(split_sentences(chunks[0].text)) @ query))
    expected = 0.5 * chunk_cos + 0.5 * best_sentence
    assert best_sentence > chunk_cos  # one sentence answers; the rest dilutes the chunk vector
    assert retriever.search("", query, 1, mode="dense")[0].score == pytest.approx(expected, abs=1e-4)
    # After a restart the sentence vectors come from Chroma: nothing is embedded again.
    embedded: list[str] = []
    reopened = Retriever(VectorStore(client, embedder.id, embedder.dim),
                         embed_passages=lambda texts: embedded.extend(texts) or embedder.embed_passages(texts),
                         sentence_weight=0.5)
    assert reopened.search("", query, 1, mode="dense")[0].score == pytest.approx(expected, abs=1e-4)
    assert embedded == []
    # The rows laid out as evidence.analyse takes them.
    [rows] = reopened.vector_rows([chunks[0].id])
    assert rows.shape == (1 + len(split_sentences(chunks[0].text)), embedder.dim)
    assert float(rows[0] @ query) == pytest.approx(chunk_cos, abs=1e-4)
    # Without an embedder the dense score is the chunk's cosine.
    plain = Retriever(VectorStore(client, embedder.id, embedder.dim))
    assert plain.search("", query, 1, mode="dense")[0].score == pytest.approx(chunk_cos, abs=1e-4)


@pytest.mark.parametrize("fusion", ["zscore", "score", "rrf"])
def test_hybrid_scores_every_candidate_with_both_retrievers(client, embedder, fusion):
    retriever = _index(client, embedder)
    retriever.fusion = fusion
    query = "해운대 해수욕장"
    hits = retriever.search(query, embedder.embed_queries([query])[0], 10)
    assert hits[0].metadata["doc_id"] == "busan"
    assert len({h.id for h in hits}) == len(hits) == retriever.counts()["documents"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    retriever.delete_documents(["busan"])
    assert "busan" not in {h.metadata["doc_id"] for h in retriever.search(query, embedder.embed_queries([query])[0], 10)}


def test_a_replica_keeps_no_text_or_vector_and_callers_see_no_private_keys(client, embedder):
    tokenised: list[str] = []
    retriever = _index(client, embedder)
    store = VectorStore(client, embedder.id, embedder.dim)
    reopened = Retriever(store, embed_passages=embedder.embed_passages)
    reopened.bm25._tokenize = lambda texts: tokenised.extend(texts) or morphemes_many(texts)
    query = "해운대 해수욕장"
    hits = reopened.search(query, embedder.embed_queries([query])[0], 3)
    assert hits[0].metadata["doc_id"] == "busan"
    assert all(not k.startswith("_") for h in hits for k in h.metadata)
    assert tokenised == [query]  # BM25 came from the stored terms, Kiwi ran for the query only
    assert not hasattr(reopened, "_vectors") and not hasattr(reopened, "_texts")
    assert [h.id for h in hits] == [h.id for h in retriever.search(query, embedder.embed_queries([query])[0], 3)]


def test_chunks_stored_before_terms_and_sentences_are_completed_once(client, embedder):
    """A store filled by an older EchoRAG (chunks without terms or sentence rows) works
    at once; the first replica stores what was missing, the next one only reads."""
    chunks = chunk_documents(DOCS, 200, 50)
    store = VectorStore(client, embedder.id, embedder.dim)
    store.upsert("documents", [c.id for c in chunks], [c.text for c in chunks],
                 embedder.embed_passages([c.text for c in chunks]), [c.metadata for c in chunks])
    embedded: list[str] = []

    def embed(texts):
        embedded.extend(texts)
        return embedder.embed_passages(texts)

    first = Retriever(store, embed_passages=embed)
    assert first.search("한라산 감귤", None, 1, mode="bm25")[0].metadata["doc_id"] == "jeju"
    assert embedded and store.count("sentences") == len(embedded)
    embedded.clear()
    second = Retriever(VectorStore(client, embedder.id, embedder.dim), embed_passages=embed)
    assert second.search("한라산 감귤", None, 1, mode="bm25")[0].metadata["doc_id"] == "jeju"
    assert embedded == []
    first.delete_documents(["jeju"])
    assert not store.collection("sentences").get(where={"doc_id": "jeju"}, include=[])["ids"]


def test_a_replica_s_bm25_follows_documents_written_through_another(client, embedder):
    """Each replica has its own BM25; sync() reloads it once documents changed anywhere."""
    writer = _index(client, embedder)
    reader = Retriever(VectorStore(client, embedder.id, embedder.dim))
    assert reader.sync() is False  # nothing written since it loaded
    extra = [{"id": "birds", "text": "가창오리 떼는 겨울 저녁 금강 하구에서 군무를 펼친다."}]
    chunks = chunk_documents(extra, 200, 50)
    writer.add_chunks(chunks, embedder.embed_passages([c.text for c in chunks]))
    assert reader.search("가창오리 군무", None, 1, mode="bm25") == []  # not yet: its own index
    assert reader.sync() is True
    assert reader.search("가창오리 군무", None, 1, mode="bm25")[0].metadata["doc_id"] == "birds"
    writer.delete_documents(["seoul"])
    assert reader.sync() is True
    assert all(hit.metadata["doc_id"] != "seoul" for hit in reader.search("한국의 수도 한강", None, 4, mode="bm25"))
    assert reader.sync() is False and writer.sync() is True  # the writer reloads once too


def test_a_new_replica_loads_the_bm25_snapshot_of_the_current_documents(client, embedder, tmp_path, monkeypatch):
    """The first replica builds BM25 from the store and leaves a snapshot; the next one loads
    it without reading a chunk's terms, ranks the same, and takes later writes."""
    from echorag.retrieval import passages

    snapshots = BM25Snapshots(tmp_path / "bm25")
    store = VectorStore(client, embedder.id, embedder.dim)
    _index(client, embedder)
    first = Retriever(store, snapshots=snapshots)
    assert [p.name for p in (tmp_path / "bm25").glob("bm25-*")] == [f"bm25-{store.generation()}"]

    with monkeypatch.context() as patch:
        patch.setattr(passages, "stored_metadata", lambda *a, **k: pytest.fail("read the terms from the store"))
        second = Retriever(store, snapshots=snapshots)
    for query in ("한라산 감귤", "한국의 수도 한강", "배추 발효"):
        assert second.bm25.search(query, 4) == first.bm25.search(query, 4)

    extra = [{"id": "birds", "text": "가창오리 떼는 겨울 저녁 금강 하구에서 군무를 펼친다."}]
    chunks = chunk_documents(extra, 200, 50)
    second.add_chunks(chunks, embedder.embed_passages([c.text for c in chunks]))  # a loaded index grows
    assert second.search("가창오리 군무", None, 1, mode="bm25")[0].metadata["doc_id"] == "birds"
    assert first.sync() is True  # a new generation: no snapshot of it yet, so built and saved
    assert first.search("가창오리 군무", None, 1, mode="bm25")[0].metadata["doc_id"] == "birds"
    assert (tmp_path / "bm25" / f"bm25-{store.generation()}").is_dir()
    # A replica that wants sentence vectors does not take a snapshot made without them: it completes the store.
    Retriever(store, snapshots=snapshots, embed_passages=embedder.embed_passages)
    assert store.count("sentences") > 0
