"""One real local Ray cluster and one EchoRAG application for all Serve tests."""

import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from echorag.documents import read_documents, sample_path

CHROMIUM = Path("/usr/bin/chromium")
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_idle(client, timeout: float = 600) -> dict:
    """Until no training run is going or pending; returns the last progress."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = client.get("/mlops/training-progress").json()
        if progress["status"] != "training" and not progress["pending"]:
            return progress
        time.sleep(1)
    raise AssertionError(f"training did not finish: {progress}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Where the session cluster serves its Prometheus metrics (``/metrics``)."""
    return _free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    import ray
    from ray import serve

    # Logical CPUs above the 2 physical cores so every deployment and a Train worker schedule.
    ray.init(
        num_cpus=8,
        namespace="echorag",
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        # Export metrics every 2 s instead of 10 s, so a test sees them soon.
        _system_config={"metrics_report_interval_ms": 2000},
        runtime_env={"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "ANONYMIZED_TELEMETRY", "TOKENIZERS_PARALLELISM")}},
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, tiny_model_path):
    """A data dir with the tiny model already built (as after a first start)."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(tiny_model_path, root / "models" / "tiny-ko")
    return root


@pytest.fixture(scope="session")
def webhook():
    """A real local webhook receiver the service reports training to (Slack payloads)."""
    from tests.webhook_receiver import Receiver

    receiver = Receiver([])
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def app_settings(data_dir, webhook) -> dict:
    return {
        "data_dir": str(data_dir), "generator_model": "tiny", "max_new_tokens": 24, "temperature": 0.0,
        "admin_token": ADMIN_TOKEN, "finetune_webhook_url": webhook.url, "finetune_webhook_format": "slack",
        # The tiny model answers here and is also the student: these tests opt in to its
        # own answers as labels and let the gate judge on one pool turn by its loss alone
        # (the agreement of word salad with word salad is noise), to see the whole loop in
        # seconds. test_extractive runs the defaults: a teacher, a thin pool refused.
        "finetune_train_on": "all", "finetune_gate_min_examples": 1, "finetune_gate_agreement_tolerance": 1.0,
    }


@pytest.fixture(scope="session")
def server(ray_cluster, app_settings):
    """Base URL of the running EchoRAG application, sample knowledge base ingested."""
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(app_settings), name="echorag", route_prefix="/")
    documents = read_documents([sample_path()])
    with httpx.Client(base_url=ray_cluster, timeout=300) as client:
        response = client.post("/documents", json={"documents": documents}, headers=ADMIN)
        assert response.status_code == 200, response.text
    return ray_cluster


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Network failures and 4xx/5xx the page itself provokes are logged by Chromium as console
# errors ("Failed to load resource"); only the error test expects them.
RESOURCE_ERROR = "Failed to load resource"


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def unexpected(self, allow_resource_errors=False):
        return [e for e in self.errors if not (allow_resource_errors and RESOURCE_ERROR in e)]


@pytest.fixture
def page(browser, server):
    """A fresh desktop page of the application (Korean locale), its console watched."""
    context = browser.new_context(viewport=DESKTOP, locale="ko-KR", accept_downloads=True, base_url=server)
    page = context.new_page()
    page.console = Console(page)
    page.set_default_timeout(30_000)
    yield page
    context.close()
