"""Identity and privacy without Ray: signed sessions, hashed user keys, the trusted
proxy check, and erasure from the database, its backups, exports and later runs."""

from __future__ import annotations

import json
import threading

import pytest

from echorag.config import Settings
from echorag.identity.access import (
    SessionSigner,
    header_user,
    new_key,
    parse_key,
    parse_networks,
    secret_matches,
    session_owner,
    valid_user_id,
)
from echorag.learning import Conflict, ConversationStore, LearningLoop, NotFound
from echorag.learning.privacy import IdentityService
from echorag.learning.users import UserDirectory
from echorag.types import Turn


def _turn(i: int, user_id: str, session_id: str, text: str = "") -> Turn:
    question = f"{text or user_id}의 질문 {i}번입니다"
    return Turn(id=f"t-{user_id}-{i}", session_id=session_id, user_id=user_id,
                user=question, assistant=f"{text or user_id}에게 답변 {i}번입니다",
                adapter_version="base", model="extractive", backend="extractive", label="teacher",
                prompt=[{"role": "system", "content": "시스템"}, {"role": "user", "content": f"참고 문서: …\n\n질문: {question}"}])


def _file_bytes(path) -> bytes:
    """The database and its WAL, as someone who copies the files would read them."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# -- sessions -------------------------------------------------------------------------------------


def test_a_session_id_is_only_valid_for_the_owner_it_was_issued_to():
    signer = SessionSigner("x" * 32)
    mine, theirs = signer.issue(), signer.issue("usr_alice")
    assert signer.verify(mine) and signer.verify(theirs, "usr_alice")
    assert not signer.verify(theirs, "usr_bob") and not signer.verify(theirs) and not signer.verify(mine, "usr_alice")
    assert len({signer.issue() for _ in range(100)}) == 100 and len(mine) <= 128
    nonce, mac = mine[2:].split(".")
    forged = f"s-{nonce[:-1]}{'A' if nonce[-1] != 'A' else 'B'}.{mac}"
    for bad in (forged, "default", "", None, "s-abc", "s-a.b.c", mine + "x"):
        assert not signer.verify(bad)
    assert not SessionSigner("y" * 32).verify(mine)  # another deployment's secret
    with pytest.raises(ValueError):
        SessionSigner("short")


# -- keys -----------------------------------------------------------------------------------------


def test_a_key_is_stored_as_a_salted_hash_and_parsed_strictly():
    a, b = new_key(), new_key()
    assert a.key.startswith(f"erk_{a.key_id}_") and a.salt != b.salt and a.digest != b.digest
    key_id, secret = parse_key(a.key)
    assert key_id == a.key_id and secret_matches(secret, a.salt, a.digest)
    assert not secret_matches(secret + "x", a.salt, a.digest)
    assert a.key not in a.digest and secret not in a.digest
    for bad in ("", "erk", "erk_zz_" + "a" * 40, "xyz_0123456789ab_" + "a" * 40, "erk_0123456789ab_short", "Bearer x"):
        assert parse_key(bad) is None


def test_user_keys_authenticate_until_revoked_or_deleted(tmp_path):
    store = ConversationStore(tmp_path / "db.sqlite")
    users = UserDirectory(store)
    issued = users.add("김철수")
    alice = issued.user.id
    assert alice.startswith("usr_") and issued.api_key.startswith("erk_")
    with pytest.raises(Conflict):
        users.add("김철수")
    first = users.authenticate(issued.api_key)
    assert first.user_id == alice and first.name == "김철수"
    assert users.authenticate(issued.api_key).user_id == alice  # verified once, then by digest
    tampered = issued.api_key[:-1] + ("A" if issued.api_key[-1] != "A" else "B")
    assert users.authenticate(tampered) is None and users.authenticate("garbage") is None

    second = users.issue_key(alice).api_key
    users.revoke(alice, key_id=parse_key(issued.api_key)[0])
    assert users.authenticate(issued.api_key) is None  # the very next call
    assert users.authenticate(second).user_id == alice
    with pytest.raises(NotFound):
        users.revoke(alice, key_id="000000000000")
    assert [k.revoked_at is None for k in users.get(alice).keys] == [False, True]

    raw = _file_bytes(store.path)
    for key in (issued.api_key, second):
        assert key.encode() not in raw and parse_key(key)[1].encode() not in raw
    assert users.delete(alice) == 1 and users.authenticate(second) is None
    with pytest.raises(NotFound):
        users.get(alice)
    assert users.secret() == users.secret() and len(users.secret()) >= 32
    store.close()


def test_concurrent_authentication_of_one_key(tmp_path):
    store = ConversationStore(tmp_path / "db.sqlite")
    users = UserDirectory(store)
    key = users.add("동시").api_key
    results = []
    threads = [threading.Thread(target=lambda: results.append(users.authenticate(key))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is not None for r in results)
    store.close()


# -- trusted proxies ------------------------------------------------------------------------------


def test_a_header_user_is_believed_only_from_a_trusted_proxy():
    proxies = parse_networks(["10.0.0.5", "192.168.1.0/24"])
    headers = {"X-Forwarded-User": "kim"}
    assert header_user("10.0.0.5", headers, "X-Forwarded-User", proxies) == "kim"
    assert header_user("192.168.1.77", headers, "X-Forwarded-User", proxies) == "kim"
    assert header_user("10.0.0.6", headers, "X-Forwarded-User", proxies) is None
    assert header_user(None, headers, "X-Forwarded-User", proxies) is None
    assert header_user("not-an-ip", headers, "X-Forwarded-User", proxies) is None
    assert header_user("10.0.0.5", {}, "X-Forwarded-User", proxies) is None
    for reserved in ("anonymous", "openai", session_owner("s-x"), " kim", "", "a\x00b"):
        assert not valid_user_id(reserved)
    with pytest.raises(ValueError):
        parse_networks(["not a network"])


def test_trusted_header_mode_needs_proxies():
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(auth_mode="trusted_header")
    with pytest.raises(ValueError):
        Settings(auth_mode="api_keys", trusted_proxies=["300.1.1.1"])
    assert Settings(auth_mode="trusted_header", trusted_proxies=["10.0.0.0/8"]).trusted_proxies == ("10.0.0.0/8",)


# -- erasure --------------------------------------------------------------------------------------


def test_erasing_a_user_deletes_their_turns_everywhere_and_for_good(tmp_path):
    store = ConversationStore(tmp_path / "db.sqlite")
    for i in range(3):
        assert store.add_turn(_turn(i, "usr_a", f"sa{i}", "당뇨병환자")).stored
        assert store.add_turn(_turn(i, "usr_b", "sb")).stored
    backup = store.backup(tmp_path / "backups")
    assert not store.set_feedback("t-usr_a-0", 1, owner="usr_b")  # another's turn: unknown
    assert store.set_feedback("t-usr_a-0", 1, owner="usr_a")

    deleted = store.erase("user", "usr_a")
    assert sorted(t.id for t in deleted) == [f"t-usr_a-{i}" for i in range(3)]
    assert [t.user_id for t in store.recent_turns(100)] == ["usr_b"] * 3
    assert "당뇨병환자".encode() not in _file_bytes(store.path)
    again = store.add_turn(_turn(9, "usr_a", "sa9", "새 질문"))
    assert not again.stored and again.reason == "erased"
    assert store.counts().filtered["erased"] == 1

    # A backup made before the erasure brings nothing of theirs back.
    assert store.restore(backup) == 0
    assert {t.user_id for t in store.recent_turns(100)} == {"usr_b"}
    assert store.turns_of("user", "usr_a") == [] and len(store.turns_of("user", "usr_b")) == 3
    store.close()


def test_erasing_an_open_session_by_its_id(tmp_path):
    store = ConversationStore(tmp_path / "db.sqlite")
    owner = session_owner("s-one.mac")
    store.add_turn(_turn(0, owner, "s-one.mac"))
    store.add_turn(_turn(1, session_owner("s-two.mac"), "s-two.mac"))
    assert [t.session_id for t in store.erase("session", "s-one.mac")] == ["s-one.mac"]
    assert [t.session_id for t in store.recent_turns()] == ["s-two.mac"]
    assert store.add_turn(_turn(2, owner, "s-one.mac")).reason == "erased"
    store.close()


class Recorder:
    """A ``train_fn`` that keeps each job and fails (no model is trained)."""

    def __init__(self):
        self.jobs = []

    def __call__(self, job, on_progress):
        self.jobs.append(job)
        raise RuntimeError("recorded")


def test_an_erased_user_is_in_no_later_run_export_or_backup(tmp_path):
    recorder = Recorder()
    settings = Settings(data_dir=tmp_path / "data", finetune_auto_trigger=False, finetune_max_attempts=1,
                        finetune_holdout_fraction=0.25, finetune_replay_fraction=0)
    loop = LearningLoop(settings, recorder)
    identities = IdentityService(settings)  # its own actor in Serve, over the same database
    try:
        alice = identities.add_user("앨리스").user.id
        bob = identities.add_user("밥").user.id
        for i in range(4):
            assert loop.record(_turn(i, alice, "sa", "김철수당뇨")).collected
            assert loop.record(_turn(i, bob, "sb", "밥")).collected
        exported = loop.export()
        loop.clear_conversations(backup=True)
        loop.restore(loop.backups().backups[0].name)

        report = identities.erase("user", alice)
        assert (report.conversations, report.pending, report.keys_revoked) == (4, 4, 1)
        assert report.backups == 4 and report.exported == 4
        assert [u.id for u in identities.users().users] == [bob]
        event = loop.events("data_erased").events[0]
        assert event.data["conversations"] == 4 and event.data["subject"] == alice

        lines = open(exported.path, encoding="utf-8").read().splitlines()
        assert len(lines) == 4 and all("김철수당뇨" not in line for line in lines)
        kept = loop.store.get_turn(_turn(0, bob, "sb", "밥").id)
        assert kept.export_line() in lines
        assert not loop.record(_turn(7, alice, "sa", "다시")).collected
        assert identities.subject_conversations("user", alice).count == 0
        assert identities.subject_conversations("user", bob).count == 4

        loop.finetune(force=True)
        assert loop.wait_idle(30)
        (job,) = recorder.jobs
        texts = json.dumps(job.train + job.holdout, ensure_ascii=False)
        assert "김철수당뇨" not in texts and texts.count("밥의 질문") == 4
        for backup in (tmp_path / "data" / "backups").glob("conversations-*.sqlite"):
            assert "김철수당뇨".encode() not in backup.read_bytes()
    finally:
        identities.close()
        loop.close()
