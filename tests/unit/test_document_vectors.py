"""Document vectors on disk: a document added again, by another process or after a
restart, is not embedded again; what users type never reaches the disk."""

import sqlite3

import numpy as np
import pytest

from echorag.retrieval.embedding import E5Embedder, VectorCache


class Counting:
    """The real e5 embedder, counting the texts it is asked to embed."""

    def __init__(self, embedder: E5Embedder) -> None:
        self.inner, self.id, self.dim = embedder, embedder.id, embedder.dim
        self.passages: list[str] = []
        self.queries: list[str] = []

    def embed_passages(self, texts):
        self.passages += texts
        return self.inner.embed_passages(texts)

    def embed_queries(self, texts):
        self.queries += texts
        return self.inner.embed_queries(texts)


@pytest.fixture(scope="module")
def e5():
    return E5Embedder()


def test_a_second_cache_on_the_same_directory_embeds_only_new_passages(e5, tmp_path):
    documents = ["세종대왕은 1443년 훈민정음을 창제했다.", "한라산의 높이는 1,947m이다."]
    first = Counting(e5)
    vectors = VectorCache(first, path=tmp_path).embed_passages(documents)
    assert first.passages == documents

    again = Counting(e5)  # as a restarted replica, or another application on the machine
    cache = VectorCache(again, path=tmp_path)
    both = cache.embed_passages([documents[1], "김치는 배추를 소금에 절여 담근다.", documents[0]])
    assert again.passages == ["김치는 배추를 소금에 절여 담근다."]
    np.testing.assert_array_equal(both[[2, 0]], vectors)  # stored vectors come back bit for bit
    assert np.allclose(both[1], e5.embed_passages(["김치는 배추를 소금에 절여 담근다."])[0], atol=1e-6)


def test_queries_are_never_written_to_disk(e5, tmp_path):
    cache = VectorCache(Counting(e5), path=tmp_path)
    cache.embed_queries(["내 계좌 비밀번호는 1234인데 바꿔야 할까?"])
    cache.embed_passages(["문서 한 문장."])
    [file] = tmp_path.glob("*.sqlite")
    assert e5.id.split(":")[0] in file.name
    with sqlite3.connect(file) as db:
        assert db.execute("SELECT count(*) FROM vectors").fetchone()[0] == 1

    later = Counting(e5)
    VectorCache(later, path=tmp_path).embed_queries(["내 계좌 비밀번호는 1234인데 바꿔야 할까?"])
    assert later.queries == ["내 계좌 비밀번호는 1234인데 바꿔야 할까?"]
