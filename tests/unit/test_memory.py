from echorag.serving.memory import SessionMemory
from echorag.types import MemoryTurn


def test_keeps_the_last_turns_per_session():
    memory = SessionMemory(max_turns=2)
    for i in range(3):
        memory.add("a", f"질문 {i}", f"답 {i}")
    memory.add("b", "다른 세션", "응")
    assert memory.get("a") == [MemoryTurn(user="질문 1", assistant="답 1"), MemoryTurn(user="질문 2", assistant="답 2")]
    assert len(memory.get("b")) == 1 and memory.get("nobody") == []


def test_clear_one_session_or_all():
    memory = SessionMemory(max_turns=5)
    memory.add("a", "1", "1")
    memory.add("b", "2", "2")
    assert memory.clear("a") == 1 and memory.get("a") == [] and len(memory.get("b")) == 1
    assert memory.clear() == 1 and len(memory) == 0


def test_least_recently_used_sessions_are_forgotten_first():
    memory = SessionMemory(max_turns=1, max_sessions=2)
    memory.add("old", "1", "1")
    memory.add("mid", "2", "2")
    memory.get("old")  # touch
    memory.add("new", "3", "3")
    assert memory.get("mid") == [] and memory.get("old") and memory.get("new")
