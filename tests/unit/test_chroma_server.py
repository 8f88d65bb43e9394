"""The retriever against a real Chroma server (``chroma run`` on loopback), as on a
cluster where every Retriever replica shares one store through ``ECHORAG_CHROMA_HOST``."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings as ChromaSettings

from echorag.config import load_settings
from echorag.documents import read_documents, read_jsonl, sample_path
from echorag.retrieval.embedding import E5Embedder
from echorag.retrieval.hybrid import Retriever, chunk_documents
from echorag.retrieval.vector_store import VectorStore, connect

CHROMA = Path(sys.executable).with_name("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """A Chroma server process with its own data path; yields (port, path)."""
    path, port = tmp_path_factory.mktemp("chroma-server"), _free_port()
    log = open(path.parent / "chroma-server.log", "wb")
    server = subprocess.Popen(
        [str(CHROMA), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path)],
        stdout=log, stderr=subprocess.STDOUT, env={"ANONYMIZED_TELEMETRY": "False", "PATH": ""},
    )
    deadline = time.monotonic() + 60
    while True:
        try:  # the client connects when it is made
            chromadb.HttpClient(host="127.0.0.1", port=port, settings=ChromaSettings(anonymized_telemetry=False))
            break
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"chroma server did not start: {(path.parent / 'chroma-server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield port, path
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def embedder():
    return E5Embedder()


def test_retriever_on_a_chroma_server(chroma_server, embedder, tmp_path):
    port, server_path = chroma_server
    settings = load_settings(data_dir=tmp_path / "data", chroma_host="127.0.0.1", chroma_port=port)
    client = connect(settings)
    assert isinstance(client, chromadb.api.client.Client) and client.get_settings().chroma_server_http_port == port

    retriever = Retriever(VectorStore(client, embedder.id, embedder.dim), settings.fusion,
                          settings.bm25_weight, settings.dense_weight)
    documents = read_documents([sample_path()])
    chunks = chunk_documents(documents, settings.chunk_size, settings.chunk_overlap)
    retriever.add_chunks(chunks, embedder.embed_passages([c.text for c in chunks]))

    question = read_jsonl(sample_path("dev_queries.jsonl"))[0]  # 훈민정음 창제 당시 자음과 모음은 …
    hits = retriever.search(question["query"], embedder.embed_queries([question["query"]])[0], 3)
    assert question["relevant_ids"][0] in [h.metadata["doc_id"] for h in hits]

    # The data lives in the server: another client (another replica, another node) sees it,
    # a retriever opened on it rebuilds BM25 from it, and nothing was written locally.
    other = chromadb.HttpClient(host="127.0.0.1", port=port, settings=ChromaSettings(anonymized_telemetry=False))
    assert other.get_collection("documents").count() == len(chunks)
    reopened = Retriever(VectorStore.from_settings(settings, embedder.id, embedder.dim))
    assert reopened.search(question["query"], None, 3, mode="bm25")[0].metadata["doc_id"] == question["relevant_ids"][0]
    assert not settings.chroma_dir.exists()
    assert (server_path / "chroma.sqlite3").is_file()


def test_kubernetes_readiness_probe_path_answers(chroma_server):
    """deploy/kuberay/chroma.yaml probes this path of the same server."""
    import httpx
    import yaml

    from tests.conftest import REPO

    docs = yaml.safe_load_all((REPO / "deploy" / "kuberay" / "chroma.yaml").read_text(encoding="utf-8"))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert httpx.get(f"http://127.0.0.1:{chroma_server[0]}{probe}", timeout=10).status_code == 200
