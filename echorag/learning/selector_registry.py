"""Answer selector versions (``echorag.answering.selector``): ``s1``, ``s2``… beside the adapters.

Each version is one immutable JSON file under ``<adapters root>/selectors/`` (a local path
or the same storage URI the adapters use, so every node reads it); ``state.json`` holds
which version serves, the versions served before it (for rollback) and each version's
status and gate metrics. ``base`` is the version that ships with the package. Only the
collector writes; retriever replicas read the state every few seconds.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Literal

from echorag.answering.selector import BASE, AnswerSelector
from echorag.learning.adapter_storage import LocalStorage, RemoteStorage, is_uri

STATE_FILE = "state.json"
_VERSION = re.compile(r"^s([1-9]\d*)$")
Status = Literal["candidate", "promoted", "rejected"]


class SelectorRegistry:
    def __init__(self, adapters_root: str) -> None:
        root = f"{str(adapters_root).rstrip('/')}/selectors"
        self.storage = RemoteStorage(root) if is_uri(adapters_root) else LocalStorage(root)
        self._lock = threading.Lock()
        self._loaded: AnswerSelector | None = None

    # -- reading ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.storage.read_text(STATE_FILE))
        except FileNotFoundError:
            state = {}
        return {"active": state.get("active", BASE), "previous": state.get("previous", []),
                "versions": state.get("versions", {})}

    def active(self) -> str:
        return self.state()["active"]

    def versions(self) -> list[str]:
        """Registered versions, oldest first (``base`` not included)."""
        return sorted(self.state()["versions"], key=lambda v: int(v[1:]))

    def next_version(self) -> str:
        versions = self.versions()
        return f"s{int(versions[-1][1:]) + 1}" if versions else "s1"

    def load(self, version: str) -> AnswerSelector:
        if version == BASE:
            return AnswerSelector.base()
        if not _VERSION.match(version):
            raise KeyError(f"no selector version {version!r}")
        try:
            return AnswerSelector.from_json(self.storage.read_text(f"{version}.json"))
        except FileNotFoundError:
            raise KeyError(f"no selector version {version!r}") from None

    def load_active(self) -> AnswerSelector:
        """The selector that serves now; the one loaded last is kept while it stays active."""
        version = self.active()
        if self._loaded is None or self._loaded.version != version:
            self._loaded = self.load(version)
        return self._loaded

    def history(self) -> list[dict[str, Any]]:
        """Every version with its status, parent, what it learnt from and its gate metrics."""
        state = self.state()
        rows = [{"version": BASE, "status": "promoted", "active": state["active"] == BASE}]
        for version in self.versions():
            info = state["versions"][version]
            rows.append({"version": version, "active": state["active"] == version, **info})
        return rows

    # -- writing (the collector only) ----------------------------------------------------------
    def add(self, selector: AnswerSelector, status: Status, metrics: dict[str, Any]) -> None:
        with self._lock:
            state = self.state()
            if selector.version in state["versions"]:
                raise FileExistsError(f"selector {selector.version} exists; versions are immutable")
            self.storage.write_json(f"{selector.version}.json", json.loads(selector.to_json()))
            state["versions"][selector.version] = {
                "status": status, "parent": selector.parent, "fitted_on": selector.fitted_on,
                "metrics": metrics, "created_at": time.time(),
            }
            if status == "promoted":
                self._activate(state, selector.version)
            self.storage.write_json(STATE_FILE, state)

    def promote(self, version: str) -> str:
        """Serve ``version`` (also one the gate rejected: the gate is a default, not a veto)."""
        self.load(version)  # it exists and reads
        with self._lock:
            state = self.state()
            if version != BASE:
                state["versions"][version]["status"] = "promoted"
            self._activate(state, version)
            self.storage.write_json(STATE_FILE, state)
        return version

    def rollback(self, to: str | None = None) -> str:
        """Serve ``to``, or the version that served before the active one (``base`` at last)."""
        with self._lock:
            state = self.state()
            target = to if to is not None else (state["previous"][-1] if state["previous"] else BASE)
            self.load(target)
            if to is None and state["previous"]:
                state["previous"].pop()
            state["active"] = target
            self.storage.write_json(STATE_FILE, state)
        return target

    @staticmethod
    def _activate(state: dict[str, Any], version: str) -> None:
        if state["active"] != version:
            state["previous"] = [*state["previous"], state["active"]][-20:]
        state["active"] = version
