"""The learning loop through HTTP on the real application: chats are collected, a real
Ray Train run fine-tunes a LoRA, the gate promotes it, and /chat serves it."""

import concurrent.futures
import time
import uuid

import pytest

from tests.serve.conftest import ADMIN, wait_idle

pytestmark = pytest.mark.serve

QUESTIONS = [
    "제주도는 어떤 섬인가요?",
    "김치를 담글 때 배추는 얼마나 절이나요?",
    "훈민정음은 언제 반포되었나요?",
    "블랙홀은 어떻게 생기나요?",
    "여권은 어디서 발급받나요?",
    "연말정산은 언제 하나요?",
]


def chat(client, message, **extra):
    fresh = uuid.uuid4().hex[:8]
    body = {"message": message, "user_id": f"learn-{fresh}", **extra}
    r = client.post("/chat", json=body)
    assert r.status_code == 200, r.text
    return r.json()




@pytest.fixture(scope="module")
def fresh_loop(client):
    """Start from the base model (other tests may have trained and promoted versions), no
    collected data, batch size 3, and a learning rate the tiny model notices."""
    assert client.delete("/mlops/conversations", headers=ADMIN).status_code == 200
    wait_idle(client)
    assert client.post("/mlops/rollback", json={"version": "base"}, headers=ADMIN).status_code == 200
    settings = {"batch_size": 3, "auto_trigger": True, "epochs": 2, "learning_rate": 2e-3, "holdout_fraction": 0.34}
    r = client.post("/mlops/settings", json=settings, headers=ADMIN)
    assert r.status_code == 200, r.text
    yield
    client.post("/mlops/settings", json={"batch_size": 100}, headers=ADMIN)


def test_three_chats_train_a_version_that_then_serves(client, fresh_loop):
    before = client.get("/mlops/models").json()
    infos = [chat(client, q)["mlops_info"] for q in QUESTIONS[:3]]
    assert all(i["collected"] for i in infos)
    assert infos[-1]["should_train"] or infos[-1]["training_queued"]

    progress = wait_idle(client)
    assert progress["status"] == "succeeded", progress
    assert progress["total_steps"] and progress["step"] == progress["total_steps"]
    assert len(progress["losses"]) == progress["total_steps"]

    models = client.get("/mlops/models").json()
    new = [v for v in models["versions"] if v["version"] not in {b["version"] for b in before["versions"]}]
    assert len(new) == 1
    version = new[0]["version"]
    assert models["active"] == version and new[0]["status"] == "active"
    # The gate read the loss and answers of the serving deployment with the candidate loaded
    # by name: the run itself only trained.
    timings = new[0]["timings"]
    assert timings["eval_s"] > 0 and timings["train_s"] > 0, timings
    assert new[0]["metrics"]["candidate_agreement"] is not None
    # The tiny model learns: held-out loss of the new version below the base model's.
    run = client.get("/mlops/training-history").json()["runs"][0]
    assert run["outcome"] == "promoted"
    metrics = run["metrics"]
    assert metrics["candidate_loss"] < metrics["active_loss"], metrics
    print(f"held-out loss: base {metrics['active_loss']:.4f} -> {version} {metrics['candidate_loss']:.4f}")

    # Generated with that version: the same as pinning it, and (on some question: the tiny
    # model often copies its first passage whatever the adapter) not what base says.
    answers = []
    for question in QUESTIONS[3:5]:
        answer = chat(client, question)
        assert answer["mlops_info"]["current_version"] == version
        assert answer["adapter_version"] == version
        pinned = chat(client, question, adapter_version=version)
        base = chat(client, question, adapter_version="base")
        assert answer["response"] == pinned["response"]
        answers.append((answer["response"], base["response"]))
    assert any(ours != theirs for ours, theirs in answers), answers
    assert client.get("/health").json()["adapter_version"] == version

    events = client.get("/mlops/events", headers=ADMIN).json()["events"]
    assert {"training_started", "training_succeeded", "adapter_promoted"} <= {e["type"] for e in events}


def test_rollback_to_base_and_back(client, fresh_loop):
    active = client.get("/mlops/models").json()["active"]
    assert active != "base"
    assert client.post("/mlops/rollback", json={"version": "base"}).status_code == 401
    r = client.post("/mlops/rollback", json={"version": "base"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["active"] == "base"
    assert chat(client, QUESTIONS[0])["adapter_version"] == "base"
    r = client.post("/mlops/promote", json={"version": active}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["active"] == active
    assert chat(client, QUESTIONS[0])["adapter_version"] == active
    assert client.post("/mlops/rollback", json={"version": "v999"}, headers=ADMIN).status_code == 404


def test_chats_during_a_run_make_exactly_one_follow_up_run(client, fresh_loop):
    wait_idle(client)  # earlier tests' chats may still be training
    assert client.delete("/mlops/conversations", headers=ADMIN).status_code == 200  # no new data left over
    runs_before = client.get("/mlops/training-history").json()["count"]
    for q in QUESTIONS[:3]:
        chat(client, q + " (다시)")
    # The run has started; more chats arrive while it trains.
    during = [chat(client, q + " 추가 질문")["mlops_info"] for q in QUESTIONS]
    assert any(i["training_queued"] for i in during)
    wait_idle(client)
    runs = client.get("/mlops/training-history").json()["runs"]
    new = runs[: len(runs) - runs_before]
    assert len(new) == 2, new  # the triggered run and one follow-up, not one per batch
    follow_up, first = new
    assert follow_up["from_seq"] == first["to_seq"]
    assert follow_up["to_seq"] - follow_up["from_seq"] >= len(QUESTIONS) - 3


def test_settings_are_validated_and_admin_only(client):
    assert client.post("/mlops/settings", json={"batch_size": 5}).status_code == 401
    assert client.post("/mlops/settings", json={"batch_size": 0}, headers=ADMIN).status_code == 422
    assert client.post("/mlops/settings", json={"batch_sise": 5}, headers=ADMIN).status_code == 422
    status = client.get("/mlops/status").json()
    assert set(status) >= {"collector_stats", "training_status", "models_info", "events_summary", "performance_metrics"}


def test_killing_the_collector_loses_no_collected_turn(client, fresh_loop):
    import ray

    from deployments.mlops import COLLECTOR_NAME, NAMESPACE

    client.post("/mlops/settings", json={"batch_size": 1000}, headers=ADMIN)
    wait_idle(client)

    def one(i):
        # 48 callers: each holds its own session (and so its own rate-limit bucket).
        session = client.post("/sessions").json()["session_id"]
        r = client.post("/chat", json={"message": f"수집 테스트 질문 {i}번: 한강은 어디로 흐르나요?", "session_id": session})
        return r.json() if r.status_code == 200 else None

    collector = ray.get_actor(COLLECTOR_NAME, namespace=NAMESPACE)
    pid_before = ray.get(collector.info.remote()).pid
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(48)]
        time.sleep(0.5)
        ray.kill(collector, no_restart=False)  # mid-stream: chats are in flight
        answers = [f.result() for f in futures]
    assert ray.get(collector.info.remote()).pid != pid_before  # Ray restarted it

    collected = {a["turn_id"] for a in answers if a and a["mlops_info"]["collected"]}
    assert collected, "no turn was collected"
    stored = client.get("/mlops/conversations", params={"limit": 1000}, headers=ADMIN).json()
    stored_ids = {c["id"] for c in stored["conversations"]}
    assert collected <= stored_ids
    print(f"{len(collected)} of {len(answers)} turns reported collected across a collector kill; all on disk")


def test_a_failing_run_is_retried_reported_and_leaves_serving_and_data_alone(client, fresh_loop, data_dir, webhook):
    wait_idle(client)
    settings = {"batch_size": 1000, "max_attempts": 2, "retry_backoff_s": 1}
    assert client.post("/mlops/settings", json=settings, headers=ADMIN).status_code == 200
    active = client.get("/mlops/models").json()["active"]
    assert active != "base"
    failed_before = client.get("/mlops/events", params={"event_type": "training_failed"}, headers=ADMIN).json()["count"]

    # Injected fault: the active adapter, which the run continues from, is corrupted on disk.
    weights = data_dir / "adapters" / active / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    try:
        for q in QUESTIONS[:2]:
            chat(client, q + " (실패 테스트)")
        r = client.post("/mlops/finetune", json={"force": True}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["started"], r.text
        deadline = time.time() + 300
        while time.time() < deadline:
            failed = client.get("/mlops/events", params={"event_type": "training_failed"}, headers=ADMIN).json()
            progress = client.get("/mlops/training-progress").json()
            if failed["count"] - failed_before >= 2 and progress["status"] == "failed" and not progress["retry_at"]:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the run did not fail twice: {progress}")

        # Serving goes on with the version it had; the new turns are still waiting to train.
        answer = chat(client, QUESTIONS[1])
        assert answer["adapter_version"] == active
        assert answer["mlops_info"]["new_data_count"] >= 3
        # Every failed attempt was reported to the webhook, in Slack's shape.
        deadline = time.time() + 30
        while time.time() < deadline and not any("실패" in b.get("text", "") for b in webhook.bodies):
            time.sleep(0.5)
        failures = [b for b in webhook.bodies if "실패" in b.get("text", "")]
        assert len(failures) >= 2 and all(set(b) == {"text"} for b in failures)
        assert any(set(b) == {"text"} and "완료" in b["text"] for b in webhook.bodies)  # earlier successes too
    finally:
        weights.write_bytes(original)
