"""A handle on ``deploy/local-cluster.sh``: a multi-node Ray cluster on this machine, in
its own state dir, ports and Ray temp dir, driven only from outside (the script, the
``ray`` and ``serve`` CLIs, HTTP), so the pytest process never joins it and the session
cluster of ``tests/serve`` is untouched. Fault and autoscaling tests reuse it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

SCRIPT = REPO / "deploy" / "local-cluster.sh"
BIN = REPO / ".venv" / "bin"
PORT_SPAN = 500  # the script uses ECHORAG_LC_PORT .. +PORT_SPAN


def _port_free(port: int) -> bool:
    for host in ("127.0.0.1", "127.0.0.2"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port_base(tries: int = 50) -> int:
    """A base port whose block of ports (the fixed ones) is free right now."""
    import random

    for _ in range(tries):
        base = random.randrange(30000, 60000 - PORT_SPAN, 10)
        if all(_port_free(base + offset) for offset in (0, 1, 2, 3, *range(10, 60))):
            return base
    raise RuntimeError("no free block of ports")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; reported on timeout
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


class LocalCluster:
    def __init__(self, nodes: str, env: dict[str, str] | None = None) -> None:
        # Short: Ray's socket paths under its temp dir must stay under ~107 characters.
        self.dir = Path(tempfile.mkdtemp(prefix="echorag-lc-", dir="/tmp"))
        self.port = free_port_base()
        self.http_port = free_port()
        self.nodes = nodes
        self.ip = "127.0.0.2"  # the script's ECHORAG_LC_IP: Ray on loopback, Serve on 127.0.0.1
        self.gcs = f"{self.ip}:{self.port}"
        self.dashboard = f"http://{self.ip}:{self.port + 1}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.env = {
            **os.environ,
            "ECHORAG_LC_DIR": str(self.dir), "ECHORAG_LC_PORT": str(self.port), "ECHORAG_LC_NODES": nodes,
            "ECHORAG_LC_HTTP_PORT": str(self.http_port), "ECHORAG_DATA_DIR": str(self.dir / "data"),
            **(env or {}),
        }
        self.env.pop("RAY_ADDRESS", None)

    # -- the script -----------------------------------------------------------------
    def script(self, *args: str, timeout: float = 900) -> str:
        """Run the script; its output goes to a file (the nodes it starts outlive it)."""
        out = self.dir / "script.log"
        with open(out, "w") as log:
            code = subprocess.run([str(SCRIPT), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout).returncode
        text = out.read_text(errors="replace")
        if code != 0:
            raise AssertionError(f"local-cluster.sh {' '.join(args)} failed ({code}):\n{text[-4000:]}\n{self.logs()}")
        return text

    def up(self, config: dict) -> None:
        path = self.dir / "test_serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        self.script("up", str(path))

    def down(self) -> None:
        self.script("down", timeout=180)

    def kill_node(self, name: str) -> None:
        self.script("kill-node", name)

    def start_node(self, name: str) -> None:
        self.script("start-node", name)

    def process_groups(self) -> list[int]:
        return [int(p.read_text()) for p in self.dir.glob("nodes/*/pid")]

    def logs(self, tail: int = 3000) -> str:
        """The end of each node's and Serve's logs, for a failure message."""
        parts = []
        for log in sorted(self.dir.glob("nodes/*/ray-start.log")) + sorted(self.dir.glob("ray/session_latest/logs/serve/controller_*.log")):
            parts.append(f"--- {log}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- looking at it from outside -----------------------------------------------------
    def ray_list(self, what: str, *filters: str) -> list[dict]:
        command = [str(BIN / "ray"), "list", what, "--address", self.dashboard, "--format", "json", "--limit", "10000"]
        for f in filters:
            command += ["--filter", f]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"ray list {what}: {result.stderr[-2000:]}")
        return json.loads(result.stdout)

    def node_ids(self) -> dict[str, str]:
        """Node name (the echorag_node_<name> resource) -> node id, alive nodes only."""
        names = {}
        for node in self.ray_list("nodes", "state=ALIVE"):
            for resource in node.get("resources_total", {}):
                if resource.startswith("echorag_node_"):
                    names[resource.removeprefix("echorag_node_")] = node["node_id"]
        return names

    def replicas(self) -> dict[str, list[str]]:
        """Deployment name -> node ids of its alive Serve replicas."""
        placed: dict[str, list[str]] = {}
        for actor in self.ray_list("actors", "state=ALIVE"):
            cls = actor.get("class_name") or ""
            if cls.startswith("ServeReplica:"):
                placed.setdefault(cls.rsplit(":", 1)[1], []).append(actor["node_id"])
        return placed

    def serve_status(self) -> dict:
        result = subprocess.run([str(BIN / "serve"), "status", "-a", self.dashboard], env=self.env,
                                capture_output=True, text=True, timeout=120)
        return yaml.safe_load(result.stdout) or {}
