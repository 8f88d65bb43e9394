"""The ingress only routes: its replica process never loads a model library, so it
starts fast and stays small however large the model behind it is."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.serve


def _replica_pids(deployment: str) -> list[int]:
    """Ray titles each replica's process ``ray::ServeReplica:<app>:<deployment>``."""
    title = f"ray::ServeReplica:echorag:{deployment}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(title):
                pids.append(int(proc.name))
        except OSError:  # a process that ended while we looked
            continue
    return pids


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_ingress_replica_process_loads_no_torch(client):
    assert client.get("/health").status_code == 200  # every deployment has started
    ingress, generator = _replica_pids("EchoRAGIngress"), _replica_pids("Generator")
    assert ingress and generator
    # The check itself works: the generator's process does map torch's library.
    assert all("libtorch" in _maps(pid) for pid in generator)
    assert not any("libtorch" in _maps(pid) for pid in ingress)
