"""Faults a user should barely notice: a generator replica dying under load, the
Chroma server going away and coming back."""

import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import ADMIN

pytestmark = pytest.mark.serve

QUESTIONS = ["훈민정음은 누가 만들었나요?", "김치는 어떤 음식인가요?", "여권은 어디서 발급받나요?", "블랙홀이란 무엇인가요?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_generator_replica_killed_under_load_costs_no_request(client):
    import ray

    def ask(i: int) -> int:
        body = {"message": QUESTIONS[i % len(QUESTIONS)], "user_id": f"fault-user-{i}"}
        return client.post("/chat", json=body, timeout=180).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        time.sleep(0.3)  # requests are in flight
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
        assert len(replicas) == 1
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        more = [pool.submit(ask, i) for i in range(8, 12)]  # arriving while Serve replaces it
        statuses = [f.result() for f in futures + more]
    assert statuses == [200] * 12
    after = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
    assert after and after != [replicas[0]["name"]]  # a new replica serves


class ChromaServer:
    """A real ``chroma run`` on loopback that the test can stop and start again."""

    def __init__(self, path: Path) -> None:
        self.path, self.port, self.process = path, _free_port(), None

    def start(self) -> None:
        chroma = Path(sys.executable).parent / "chroma"
        self.process = subprocess.Popen(
            [str(chroma), "run", "--host", "127.0.0.1", "--port", str(self.port), "--path", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat").is_success, 60, "chroma")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def chroma_app(ray_cluster, app_settings, tiny_model_path, tmp_path_factory):
    """A second EchoRAG application whose documents live in a Chroma server."""
    from ray import serve

    from deployments.app import build_app
    from deployments.mlops import stop_app_actors

    root = tmp_path_factory.mktemp("chroma-app")
    shutil.copytree(tiny_model_path, root / "data" / "models" / "tiny-ko")
    server = ChromaServer(root / "chroma")
    server.start()
    settings = {
        **app_settings, "data_dir": str(root / "data"), "chroma_host": "127.0.0.1", "chroma_port": server.port,
        "finetune_webhook_url": None, "finetune_auto_trigger": False,
        "engine": "transformers",  # the fallback engine, forced: the shared app runs vLLM
    }
    serve.run(build_app(settings), name="chroma", route_prefix="/chroma")
    url = f"{ray_cluster}/chroma"
    documents = [
        {"id": "hangul", "text": "훈민정음은 1443년 세종대왕이 창제한 한국의 문자 체계이다."},
        {"id": "kimchi", "text": "김치는 배추와 무를 소금에 절여 양념에 버무린 한국의 발효 음식이다."},
    ]
    assert httpx.post(f"{url}/documents", json={"documents": documents}, headers=ADMIN, timeout=120).is_success
    yield url, server
    serve.delete("chroma")
    stop_app_actors("chroma")
    if server.process.poll() is None:
        server.stop()


def test_chroma_server_outage_is_a_korean_503_and_heals_by_itself(chroma_app):
    url, server = chroma_app
    question = {"message": "훈민정음은 누가 만들었나요?", "user_id": "chroma-user"}
    assert httpx.get(f"{url}/health", timeout=60).json()["status"] == "ok"
    answer = httpx.post(f"{url}/chat", json=question, timeout=120)
    assert answer.status_code == 200 and answer.json()["search_results"][0]["id"].startswith("hangul")

    server.stop()
    health = httpx.get(f"{url}/health", timeout=60).json()
    assert health["status"] == "degraded" and "store_error" in health["detail"]
    refused = httpx.post(f"{url}/chat", json=question, timeout=120)
    assert refused.status_code == 503
    assert "검색 저장소에 연결할 수 없습니다" in refused.json()["error"]
    assert refused.headers["Retry-After"]

    server.start()  # same data directory: nothing was lost
    _wait(lambda: httpx.get(f"{url}/health", timeout=60).json()["status"] == "ok", 60, "health to recover")
    again = httpx.post(f"{url}/chat", json=question, timeout=120)
    assert again.status_code == 200 and again.json()["search_results"][0]["id"].startswith("hangul")
