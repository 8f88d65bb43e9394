
import pytest

from echorag.learning import Event, payload_for, send_webhook
from echorag.learning.events import training_failed, training_succeeded
from tests.webhook_receiver import Receiver


@pytest.fixture
def receiver_factory():
    made = []

    def make(script=()):
        made.append(Receiver(list(script)))
        return made[-1]

    yield make
    for r in made:
        r.close()


EVENT = training_succeeded("v3", 1.23, 1.10, (0.31, 0.42), 40)


def test_korean_messages():
    assert EVENT.message == "✅ 미세조정 완료: v3 (평가 풀 40건: loss 1.23 → 1.10, 일치도 0.31 → 0.42)"
    failed = training_failed("CUDA out of memory", attempt=1, max_attempts=3, retry_in=30)
    assert failed.message.startswith("❌ 미세조정 실패: CUDA out of memory") and "30초 후 재시도" in failed.message


def test_payload_shapes_by_url():
    assert payload_for("https://hooks.slack.com/services/T0/B0/x", EVENT) == {"text": EVENT.message}
    assert payload_for("https://discord.com/api/webhooks/1/abc", EVENT) == {"content": EVENT.message}
    assert payload_for("https://discordapp.com/api/webhooks/1/abc", EVENT) == {"content": EVENT.message}
    generic = payload_for("https://example.com/hook", EVENT)
    assert generic["type"] == "training_succeeded" and generic["text"] == EVENT.message
    assert generic["data"]["version"] == "v3"
    assert payload_for("https://discord.com/api/webhooks/1/x", "가" * 3000)["content"] == "가" * 2000


def test_retries_503_and_429_then_delivers(receiver_factory):
    r = receiver_factory([(503, {}), (429, {"Retry-After": "0.3"})])
    assert send_webhook(r.url, EVENT, attempts=4, backoff=0.01) is True
    assert len(r.bodies) == 3 and r.bodies[-1]["message"] == EVENT.message
    assert r.times[2] - r.times[1] >= 0.3  # Retry-After honoured, not the 0.02 s backoff


@pytest.mark.parametrize(
    ("flavor", "expected"),
    [("slack", {"text": EVENT.message}), ("discord", {"content": EVENT.message})],
)
def test_slack_and_discord_bodies_arrive(receiver_factory, flavor, expected):
    r = receiver_factory([(500, {})])
    assert send_webhook(r.url, EVENT, backoff=0.01, flavor=flavor)
    assert r.bodies == [expected, expected]


def test_gives_up_without_raising(receiver_factory):
    r = receiver_factory([(503, {})] * 10)
    assert send_webhook(r.url, EVENT, attempts=3, backoff=0.01) is False
    assert len(r.bodies) == 3


def test_client_errors_are_not_retried(receiver_factory):
    r = receiver_factory([(404, {})])
    assert send_webhook(r.url, Event(type="test", message="테스트")) is False
    assert len(r.bodies) == 1


def test_unreachable_or_invalid_urls_never_raise():
    assert send_webhook("http://127.0.0.1:9/hook", EVENT, attempts=2, backoff=0.01, timeout=0.5) is False
    assert send_webhook("not a url", EVENT, attempts=1) is False
