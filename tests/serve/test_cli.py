"""The ``echorag`` command against the real application: ``main([...])`` in-process with
stdout captured, plus the installed ``.venv/bin/echorag`` as a subprocess.

Other test modules fine-tune the same server, so these tests read the current version
and settings instead of assuming them, and put back what they change."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from echorag.cli import main
from tests.serve.conftest import ADMIN, ADMIN_TOKEN, wait_idle

pytestmark = pytest.mark.serve

ECHORAG = Path(sys.executable).with_name("echorag")




def kv(out: str) -> dict[str, str]:
    """The ``key: value`` lines of an output."""
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in out.splitlines()) if sep}


def chat(client, message):
    fresh = uuid.uuid4().hex[:8]
    r = client.post("/chat", json={"message": f"{message} ({fresh})", "user_id": f"cli-{fresh}"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def run(server, monkeypatch, capsys):
    """``run(*argv, ok=True)`` -> (stdout, stderr) of ``echorag --url SERVER *argv``."""
    monkeypatch.setenv("ECHORAG_ADMIN_TOKEN", ADMIN_TOKEN)

    def run(*argv, ok=True):
        capsys.readouterr()
        code = main(["--url", server, *argv])
        out, err = capsys.readouterr()
        assert (code == 0) == ok, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return out, err

    return run


@pytest.fixture(scope="module")
def quiet_loop(client):
    """No automatic runs while these tests chat; the settings are put back afterwards."""
    wait_idle(client)
    before = client.get("/mlops/status").json()["settings"]
    r = client.post("/mlops/settings", json={"auto_trigger": False, "learning_rate": 2e-3}, headers=ADMIN)
    assert r.status_code == 200, r.text
    yield
    wait_idle(client)
    client.post("/mlops/settings", json=before, headers=ADMIN)


def test_status_shows_the_server_and_the_learning_loop(run, client):
    health = client.get("/health").json()
    out, _ = run("status")
    shown = kv(out)
    assert shown["adapter"] == health["adapter_version"]
    assert shown["model"].startswith(f"{health['model']} (demo model)")
    assert "learning loop" in out and {"collection", "new data", "training", "versions"} <= set(shown)
    data = json.loads(run("status", "--json")[0])
    assert data["health"]["adapter_version"] == health["adapter_version"]
    assert set(data["mlops"]) >= {"collector_stats", "training_status", "settings"}


def test_chat_one_shot_streams_the_answer_and_its_sources(run, client):
    model = client.get("/health").json()["model"]
    out, _ = run("chat", "훈민정음은", "언제", "반포되었나요?")
    answer, sources = out.split("출처:\n")
    assert answer.strip()  # the streamed tokens
    assert "kb-hunminjeongeum" in sources.splitlines()[1]  # the top source, after the header row
    assert f"({model} · " in sources

    data = json.loads(run("chat", "--json", "--no-stream", "김치를 담글 때 배추는 얼마나 절이나요?")[0])
    assert data["response"] and data["search_results"][0]["metadata"]["doc_id"] == "kb-kimchi-making"


def test_chat_reads_one_question_per_stdin_line_in_one_session(run, client, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("제주도는 어떤 섬인가요?\n\n  \n여권은 어디서 발급받나요?\n"))
    out, _ = run("chat", "--json")
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 2 and all(a["response"] for a in answers)
    session = answers[0]["session_id"]  # issued by the server, kept for the second line
    assert answers[1]["session_id"] == session
    memory = client.get("/memory", params={"session_id": session}).json()
    assert [t["user"] for t in memory["turns"]] == ["제주도는 어떤 섬인가요?", "여권은 어디서 발급받나요?"]


class Terminal(io.StringIO):
    """Typed input: ``chat`` without a question starts its interactive loop on a terminal."""

    def isatty(self) -> bool:
        return True


def test_chat_interactive_loop_answers_until_exit(run, monkeypatch):
    monkeypatch.setattr("sys.stdin", Terminal("블랙홀은 어떻게 생기나요?\n/exit\n여권은 어디서 발급받나요?\n"))
    out, _ = run("chat", "--no-sources")
    assert out.startswith("EchoRAG ") and re.search(r"세션 s-\S+", out)
    assert out.count("질문> ") == 2  # one question answered, then /exit; the third line is never read
    assert "출처" not in out
    assert re.search(r"^\(.+ · .+ · \d+\.\d+s\)$", out, re.M)  # the answer's footer: model · adapter · time


def test_settings_show_and_change_then_are_put_back(run, client):
    before = client.get("/mlops/status").json()["settings"]
    out, _ = run("settings")
    assert kv(out)["batch_size"] == str(before["batch_size"]) and kv(out)["auto_trigger"] in ("on", "off")
    try:
        out, _ = run("settings", "--batch-size", "50", "--auto-trigger", "on", "--collection", "off", "--epochs", "3")
        shown = kv(out)
        assert (shown["batch_size"], shown["auto_trigger"], shown["collection_enabled"], shown["epochs"]) == (
            "50", "on", "off", "3")
        now = client.get("/mlops/status").json()["settings"]
        assert (now["batch_size"], now["auto_trigger"], now["collection_enabled"], now["epochs"]) == (50, True, False, 3)
        _, err = run("settings", "--batch-size", "0", ok=False)
        assert "(422)" in err and "batch_size" in err
        with pytest.raises(SystemExit):  # argparse: not on/off
            main(["--url", "http://unused", "settings", "--collection", "maybe"])
    finally:
        keys = ("batch_size", "auto_trigger", "collection_enabled", "epochs")
        r = client.post("/mlops/settings", json={k: before[k] for k in keys}, headers=ADMIN)
        assert r.status_code == 200
    assert client.get("/mlops/status").json()["settings"] == before


def test_finetune_wait_follows_a_run_to_its_version_and_a_second_run_is_a_conflict(run, server, client, quiet_loop):
    wait_idle(client)
    for q in ("블랙홀은 어떻게 생기나요?", "연말정산은 언제 하나요?", "제주도는 어떤 섬인가요?"):
        chat(client, q)
    versions_before = {v["version"] for v in client.get("/mlops/models").json()["versions"]}
    last_run = client.get("/mlops/training-progress").json()["run_id"] or 0

    # The installed command, as a user runs it: it follows the run with a progress bar.
    env = os.environ | {"ECHORAG_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen(
        [str(ECHORAG), "--url", server, "finetune", "--force", "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            progress = client.get("/mlops/training-progress").json()
            if progress["status"] == "training" and progress["run_id"] > last_run:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("the run did not start")
        # While it trains, another run is a 409 (and a follow-up is queued).
        _, err = run("finetune", "--force", ok=False)
        assert "(409)" in err and "in progress" in err
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = out.decode(), err.decode()
    assert proc.returncode == 0, err
    assert f"run {progress['run_id']}" in err and "step" in err  # the tqdm bar
    models = client.get("/mlops/models").json()
    (new,) = {v["version"] for v in models["versions"]} - versions_before
    assert f"run {progress['run_id']} " in out and new in out
    assert ("promoted" in out and models["active"] == new) or ("rejected" in out and models["active"] != new)
    wait_idle(client)  # the queued follow-up has no new data: nothing more runs


def test_rollback_to_base_and_back_to_the_current_version(run, client):
    wait_idle(client)
    current = client.get("/health").json()["adapter_version"]
    out, _ = run("rollback", "base")
    assert out.strip() == f"active adapter: base (was {current})"
    assert client.get("/health").json()["adapter_version"] == "base"
    out, _ = run("rollback", current)  # explicit, whatever the pointer's "previous" is
    assert client.get("/health").json()["adapter_version"] == current
    _, err = run("rollback", "v999", ok=False)
    assert "(404)" in err and "v999" in err
    change = json.loads(run("rollback", current, "--json")[0])
    # No teacher answers in this app, so no session goes to a canary: the share is 0.
    assert change == {"active": current, "previous": current, "student_share": 0.0}


def test_events_are_listed_and_filtered(run, client):
    client.post("/mlops/settings", json={"seed": 0}, headers=ADMIN)  # makes a settings_updated event
    out, _ = run("events", "--type", "settings_updated", "--limit", "3")
    lines = out.splitlines()
    assert lines[0].split() == ["id", "time", "type", "message"]
    assert 1 <= len(lines) - 1 <= 3 and all("settings_updated" in line for line in lines[1:])
    assert "설정 변경" in out
    data = json.loads(run("events", "--limit", "5", "--json")[0])
    assert data["count"] == len(data["events"]) <= 5


def test_export_writes_the_training_jsonl(run, client, tmp_path, quiet_loop):
    chat(client, "여권은 어디서 발급받나요?")  # at least one turn to export, whatever ran before
    count = client.post("/mlops/export", json={"inline": True}, headers=ADMIN).json()["count"]
    target = tmp_path / "out" / "train.jsonl"
    out, _ = run("export", "--out", str(target))
    assert out.strip() == f"exported {count} training examples to {target}"
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == count > 0
    # A training example is the served prompt (system prompt, memory, passages, question) + the answer.
    messages = json.loads(lines[0])["messages"]
    assert messages[0]["role"] == "system" and [m["role"] for m in messages[-2:]] == ["user", "assistant"]
    assert messages[-2]["content"].startswith("참고 문서:")
    out, err = run("export")  # to stdout, for a pipe
    assert out.splitlines() == lines and f"exported {count}" in err


def test_restore_brings_back_a_cleared_backup(run, client, quiet_loop):
    wait_idle(client)
    chat(client, "훈민정음은 언제 반포되었나요?")
    chat(client, "여권은 어디서 발급받나요?")
    turns = lambda: {  # noqa: E731
        (t["id"], t["user"], t["assistant"], t["feedback"])
        for t in client.get("/mlops/conversations", params={"limit": 1000}, headers=ADMIN).json()["conversations"]
    }
    before = turns()
    assert len(before) >= 2

    cleared = client.delete("/mlops/conversations", params={"backup": "true"}, headers=ADMIN).json()
    assert cleared["deleted"] == len(before) and turns() == set()
    name = Path(cleared["backup_path"]).name

    out, _ = run("restore")  # no name: the list
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert row.split()[1] == str(len(before))
    out, _ = run("restore", name)
    assert out.startswith(f"restored {len(before)} conversations from {name}")
    assert "pending:" in out and "already trained:" in out
    assert turns() == before

    again = json.loads(run("restore", name, "--json")[0])
    assert (again["restored"], again["skipped"]) == (0, len(before))
    event = client.get("/mlops/events", params={"event_type": "conversations_restored"}, headers=ADMIN).json()
    assert event["events"][0]["data"]["backup"] == name

    _, err = run("restore", "../echorag.sqlite", ok=False)
    assert "(400)" in err and "not a conversation backup" in err
    _, err = run("restore", "conversations-20000101-000000-aaaaaa.sqlite", ok=False)
    assert "(404)" in err


def test_an_unreachable_server_is_a_clear_error(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    for argv in (["status"], ["chat", "안녕하세요"], ["settings"]):
        assert main(["--url", url, *argv]) == 1
        _, err = capsys.readouterr()
        # (stderr may also carry the Ray workers' log lines of this test session)
        assert f"echorag: error: cannot reach EchoRAG at {url}" in err and "Traceback" not in err

    done = subprocess.run([str(ECHORAG), "--url", url, "status"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot reach EchoRAG" in done.stderr and done.stdout == ""


def test_admin_commands_without_a_token_say_how_to_give_one(server, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ECHORAG_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("ECHORAG_DATA_DIR", str(tmp_path))  # no local token file to fall back on
    for argv in (["events"], ["finetune"], ["restore"], ["settings", "--epochs", "2"]):
        assert main(["--url", server, *argv]) == 1
        _, err = capsys.readouterr()
        assert "(401)" in err and "set ECHORAG_ADMIN_TOKEN" in err, err
    assert main(["--url", server, "status"]) == 0  # reading the status needs no token
