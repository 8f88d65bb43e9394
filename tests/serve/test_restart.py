"""A restart of the whole application (every replica and the collector actor) keeps
conversations, settings, events, the active version and the knowledge base."""

import pytest

from tests.serve.conftest import ADMIN, wait_idle

pytestmark = pytest.mark.serve


def test_a_full_restart_keeps_everything_that_was_acknowledged(server, client, app_settings):
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.mlops import COLLECTOR_NAME, NAMESPACE

    wait_idle(client)
    answer = client.post("/chat", json={"message": "제주도는 어떤 섬인가요?", "user_id": "restart-user"}).json()
    assert answer["mlops_info"]["collected"]
    old_batch = client.get("/mlops/status").json()["settings"]["batch_size"]
    assert client.post("/mlops/settings", json={"batch_size": old_batch + 11}, headers=ADMIN).status_code == 200
    before = client.get("/mlops/status").json()
    events = client.get("/mlops/events?limit=1000", headers=ADMIN).json()["events"]
    documents = client.get("/health").json()["documents"]

    serve.delete("echorag")
    ray.kill(ray.get_actor(COLLECTOR_NAME, namespace=NAMESPACE), no_restart=True)
    serve.run(build_app(app_settings), name="echorag", route_prefix="/")

    try:
        after = client.get("/mlops/status").json()
        assert after["collector_stats"]["total_collected"] == before["collector_stats"]["total_collected"]
        assert after["settings"]["batch_size"] == old_batch + 11
        assert after["models_info"]["current_version"] == before["models_info"]["current_version"]
        again = client.get("/mlops/events?limit=1000", headers=ADMIN).json()["events"]
        assert {e["id"] for e in events} <= {e["id"] for e in again}
        turns = client.get("/mlops/conversations?limit=5", headers=ADMIN).json()["conversations"]
        assert answer["turn_id"] in {t["id"] for t in turns}
        health = client.get("/health").json()
        assert health["documents"] == documents
        assert health["adapter_version"] == before["models_info"]["current_version"]
        found = client.post("/chat", json={"message": "훈민정음은 누가 만들었나요?", "user_id": "restart-user"}).json()
        assert any("훈민정음" in r["text"] for r in found["search_results"])
    finally:
        client.post("/mlops/settings", json={"batch_size": old_batch}, headers=ADMIN)
