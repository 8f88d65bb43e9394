"""Per-session short-term memory: the last N turns of each conversation."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable

from echorag.types import MemoryTurn


class SessionMemory:
    """Keeps the last ``max_turns`` turns per session, for at most ``max_sessions``
    sessions (least recently used sessions are forgotten first)."""

    def __init__(self, max_turns: int = 5, max_sessions: int = 10_000) -> None:
        self.max_turns = max_turns
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, deque[MemoryTurn]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> list[MemoryTurn]:
        with self._lock:
            turns = self._sessions.get(session_id)
            if turns is None:
                return []
            self._sessions.move_to_end(session_id)
            return list(turns)

    def add(self, session_id: str, user: str, assistant: str) -> None:
        if self.max_turns == 0:
            return
        with self._lock:
            turns = self._sessions.setdefault(session_id, deque(maxlen=self.max_turns))
            turns.append(MemoryTurn(user=user, assistant=assistant))
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def clear(self, session_id: str | None = None) -> int:
        """Forget one session (or all); returns how many turns were dropped."""
        with self._lock:
            if session_id is None:
                dropped = sum(len(t) for t in self._sessions.values())
                self._sessions.clear()
                return dropped
            return len(self._sessions.pop(session_id, ()))

    def forget(self, belongs: Callable[[str], bool]) -> int:
        """Forget every session for which ``belongs(session_id)``; returns the turns dropped."""
        with self._lock:
            doomed = [s for s in self._sessions if belongs(s)]
            return sum(len(self._sessions.pop(s)) for s in doomed)

    def __len__(self) -> int:
        return len(self._sessions)
