"""After chat traffic, the cluster's Prometheus endpoint serves the echorag_* series.

Ray exports custom metrics as ``ray_<name>`` (counters with ``_total``) every
``metrics_report_interval_ms`` (2 s in the test cluster), so every check polls.
Counters are per process (the ``WorkerId`` tag) and per session: values are summed,
and compared with at least what this test sent (other tests may have chatted first).
"""

import time
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from echorag.models.engine import engine_status

pytestmark = pytest.mark.serve

QUESTIONS = ["환불 규정이 어떻게 되나요?", "배송은 보통 며칠 걸리나요?", "비밀번호를 잊어버렸어요."]
PII_MESSAGE = "제 전화번호는 010-1234-5678 입니다. 연락 주세요."


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its echorag/serve tags): value summed over processes}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    ray_tags = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "otel_scope_name",
                "otel_scope_schema_url", "otel_scope_version", "JobId", "ReplicaId", "replica", "ActorId"}
    values: dict[tuple[str, frozenset], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            tags = frozenset((k, v) for k, v in sample.labels.items() if k not in ray_tags)
            values[(sample.name, tags)] += sample.value
    return values


def value(metrics: dict, name: str, **tags: str) -> float:
    """Sum of ``name`` over the series whose tags include ``tags``."""
    wanted = set(tags.items())
    return sum(v for (n, t), v in metrics.items() if n == name and wanted <= t)


def wait_until(port: int, check, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(port)
        missing = check(metrics)
        if not missing:
            return metrics
        if time.monotonic() > deadline:
            found = sorted({f"{n}{dict(t)}" for n, t in metrics if "echorag" in n or "serve_num_http" in n})
            pytest.fail(f"not exported after {timeout_s:.0f} s: {missing}; found: {found}")
        time.sleep(2)


@pytest.fixture(scope="module")
def chatted(client):
    """Chat traffic of this module: three questions and a turn with a phone number."""
    for i, question in enumerate(QUESTIONS + [PII_MESSAGE]):
        r = client.post("/chat", json={"message": question, "user_id": "u-metrics"})
        assert r.status_code == 200, r.text
    return len(QUESTIONS) + 1


def test_deployments_export_echorag_series(chatted, metrics_port, client):
    def missing(m: dict) -> list[str]:
        expected = {
            # the generator: tokens of every answer (tiny model, base adapter)
            "ray_echorag_tokens_generated_total": value(m, "ray_echorag_tokens_generated_total", adapter="base") >= chatted,
            # the collector: stored turns, the scrubbed phone number, the active version (base = 0)
            "ray_echorag_conversations_collected_total": value(m, "ray_echorag_conversations_collected_total") >= chatted,
            "ray_echorag_conversations_filtered_total{reason=pii_scrubbed}":
                value(m, "ray_echorag_conversations_filtered_total", reason="pii_scrubbed") >= 1,
            "ray_echorag_active_adapter_version": any(n == "ray_echorag_active_adapter_version" for n, _ in m),
            # Ray Serve's own series, next to ours
            "ray_serve_num_http_requests_total": value(m, "ray_serve_num_http_requests_total", application="echorag") >= chatted,
        }
        return [name for name, ok in expected.items() if not ok]

    active = client.get("/mlops/status").json()["models_info"]["current_version"]
    expected = 0 if active == "base" else int(active.removeprefix("v"))  # other tests may have trained

    def version_missing(m: dict) -> list[str]:
        return [] if value(m, "ray_echorag_active_adapter_version") == expected else [f"active version {expected}"]

    wait_until(metrics_port, lambda m: missing(m) + version_missing(m))


def test_ingress_exports_request_and_stage_series(chatted, metrics_port):
    def missing(m: dict) -> list[str]:
        expected = {
            "ray_echorag_requests_total{route=/chat,status=200}":
                value(m, "ray_echorag_requests_total", route="/chat", status="200") >= chatted,
            "ray_echorag_request_latency_s_count{route=/chat}":
                value(m, "ray_echorag_request_latency_s_count", route="/chat") >= chatted,
            "ray_echorag_stage_latency_s_count{stage=generation}":
                value(m, "ray_echorag_stage_latency_s_count", stage="generation") >= chatted,
            "ray_echorag_stage_latency_s_count{stage=retrieval}":
                value(m, "ray_echorag_stage_latency_s_count", stage="retrieval") >= chatted,
            "ray_echorag_retrieval_hits_total{collection=documents}":
                value(m, "ray_echorag_retrieval_hits_total", collection="documents") >= chatted,
        }
        return [name for name, ok in expected.items() if not ok]

    metrics = wait_until(metrics_port, missing)
    # A histogram's +Inf bucket counts every observation.
    assert value(metrics, "ray_echorag_request_latency_s_bucket", route="/chat", le="+Inf") >= chatted


@pytest.mark.skipif(engine_status() is not None, reason=str(engine_status()))
def test_the_engine_exports_its_own_series(chatted, metrics_port):
    """vLLM's metrics (as Ray exports them) beside echorag_*: what it ran and how."""
    def check(m):
        expected = {
            "ray_vllm_generation_tokens_total": value(m, "ray_vllm_generation_tokens_total") >= chatted,
            "ray_vllm_time_to_first_token_seconds_count": value(m, "ray_vllm_time_to_first_token_seconds_count") >= chatted,
            "ray_vllm_num_requests_running": any(n == "ray_vllm_num_requests_running" for n, _ in m),
            "ray_vllm_kv_cache_usage_perc": any(n == "ray_vllm_kv_cache_usage_perc" for n, _ in m),
            "ray_vllm_prefix_cache_queries_total": value(m, "ray_vllm_prefix_cache_queries_total") > 0,
        }
        return [name for name, ok in expected.items() if not ok]

    wait_until(metrics_port, check)
