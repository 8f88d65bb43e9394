"""The ingress only routes: its replica process never loads a model library, so it
starts fast and stays small however large the model behind it is."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.serve


def _replica_pids(deployment: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", f"ServeReplica:echorag:{deployment}"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_ingress_replica_process_loads_no_torch(client):
    assert client.get("/health").status_code == 200  # every deployment has started
    ingress, generator = _replica_pids("EchoRAGIngress"), _replica_pids("Generator")
    assert ingress and generator
    # The check itself works: the generator's process does map torch's library.
    assert all("libtorch" in _maps(pid) for pid in generator)
    assert not any("libtorch" in _maps(pid) for pid in ingress)
