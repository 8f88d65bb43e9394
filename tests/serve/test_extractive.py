"""What a user gets where no language model loads: ``generator_model: auto`` without
KANANA answers extractively. /chat, /chat/stream and /v1/chat/completions quote the
sample knowledge base verbatim with ``[n]`` markers that point at the right passages,
and say NO_ANSWER to a question the documents do not answer; the web page says so."""

import json
import math
import re
import shutil
import time
from contextlib import contextmanager

import httpx
import pytest

from echorag.answering.prompts import NO_ANSWER
from echorag.documents import read_documents, sample_path
from tests.conftest import ARTIFACTS
from tests.serve.conftest import ADMIN

pytestmark = pytest.mark.serve

PREFIX = "/extractive"
MARKER = re.compile(r"\s*\[(\d+)\]")
OFF_TOPIC = "화성의 수도는 어디인가요?"


@contextmanager
def deployed(name: str, ray_cluster: str, settings: dict, tiny_model_path, tmp_path_factory):
    """An EchoRAG application of its own (data dir, collector) at /``name``, the sample
    knowledge base ingested and the tiny student in place, as after a first start."""
    from ray import serve

    from deployments.app import build_app
    from deployments.mlops import stop_app_actors

    root = tmp_path_factory.mktemp(f"{name}-app")
    shutil.copytree(tiny_model_path, root / "models" / "tiny-ko")
    serve.run(build_app({**settings, "data_dir": str(root)}), name=name, route_prefix=f"/{name}")
    with httpx.Client(base_url=f"{ray_cluster}/{name}", timeout=180) as http:
        response = http.post("/documents", json={"documents": read_documents([sample_path()])}, headers=ADMIN)
        assert response.status_code == 200, response.text
        yield http
    serve.delete(name)
    stop_app_actors(name)


@pytest.fixture(scope="module")
def extractive(ray_cluster, app_settings, tiny_model_path, tmp_path_factory):
    """EchoRAG as a fresh offline install serves it (``auto``, the hub offline), at /extractive."""
    settings = {**app_settings, "generator_model": "auto",
                "finetune_webhook_url": None, "finetune_auto_trigger": False,
                "finetune_train_on": "teacher", "finetune_gate_min_examples": 20,  # the defaults
                "rate_limit_per_minute": 0,  # the canary test opens 40 sessions from one address
                "engine": "transformers"}  # the student on the fallback engine: the shared app runs vLLM
    with deployed(PREFIX.strip("/"), ray_cluster, settings, tiny_model_path, tmp_path_factory) as http:
        yield http


def quotes(answer: str) -> list[tuple[str, int]]:
    """(quoted text, n) of each ``text [n]`` of an extractive answer."""
    pieces = MARKER.split(answer.strip())
    assert pieces[-1] == "", f"answer does not end with a citation: {answer!r}"
    return [(pieces[i].strip(), int(pieces[i + 1])) for i in range(0, len(pieces) - 1, 2)]


def assert_grounded(answer: str, results: list[dict], doc_id: str, must_contain: str) -> None:
    """Every quote is verbatim from the passage its [n] names; the answer cites ``doc_id``."""
    cited = quotes(answer)
    assert 1 <= len(cited) <= 3, answer
    for text, n in cited:
        assert 1 <= n <= len(results), (answer, n)
        passage = " ".join(results[n - 1]["text"].split())
        assert text.rstrip(" …") in passage, f"{text!r} is not a quote of passage [{n}]"
    assert doc_id in {results[n - 1]["metadata"]["doc_id"] for _, n in cited}, answer
    assert must_contain in answer, answer


def test_health_says_extractive(extractive):
    health = extractive.get("/health").json()
    assert health["model_kind"] == "extractive" and health["model"] == "extractive"
    assert health["demo_model"] is False


def test_chat_quotes_the_right_document_with_citations(extractive):
    body = extractive.post("/chat", json={"message": "훈민정음은 누가 만들었나요?"}).json()
    assert body["model"] == "extractive" and body["abstained"] is False
    assert_grounded(body["response"], body["search_results"], "kb-hunminjeongeum", "세종")

    body = extractive.post("/chat", json={"message": "6·25 전쟁은 언제 시작되었나요?"}).json()
    assert body["abstained"] is False
    assert_grounded(body["response"], body["search_results"], "kb-korean-war", "1950")


def test_off_topic_question_gets_no_answer(extractive):
    body = extractive.post("/chat", json={"message": OFF_TOPIC}).json()
    assert body["response"] == NO_ANSWER and body["abstained"] is True
    assert "[" not in body["response"]
    assert body["usage"]["completion_tokens"] == 0


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def test_stream_quotes_then_abstains(extractive):
    with extractive.stream("POST", "/chat/stream", json={"message": "김치는 어떻게 담그나요?"}) as response:
        events = _events(response)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and "token" in names
    done = events[-1][1]["response"]
    assert "".join(data["text"] for name, data in events if name == "token").strip() == done["response"]
    assert_grounded(done["response"], done["search_results"], "kb-kimchi-making", "김치")

    with extractive.stream("POST", "/chat/stream", json={"message": OFF_TOPIC}) as response:
        events = _events(response)
    assert events[-1][1]["response"]["response"] == NO_ANSWER
    assert [data["text"] for name, data in events if name == "token"] == [NO_ANSWER]


def test_openai_api_answers_extractively(extractive):
    import openai

    client = openai.OpenAI(base_url=f"{extractive.base_url}v1",
                           api_key="not-needed", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model="echorag", messages=[{"role": "user", "content": "훈민정음은 누가 만들었나요?"}])
    answer = completion.choices[0].message.content
    assert MARKER.search(answer) and "세종" in answer
    completion = client.chat.completions.create(model="echorag", messages=[{"role": "user", "content": OFF_TOPIC}])
    assert completion.choices[0].message.content == NO_ANSWER


@pytest.mark.browser
def test_web_page_shows_the_extractive_banner(extractive, browser):
    from playwright.sync_api import expect

    page = browser.new_page(locale="ko-KR", viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{extractive.base_url}".rstrip("/") + "/")
        banner = page.locator("#extractive-banner")
        expect(banner).to_be_visible(timeout=30_000)
        expect(banner).to_contain_text("문서 인용 모드")
        expect(page.locator("#demo-banner")).to_be_hidden()
        page.fill("#chat-input", "훈민정음은 누가 만들었나요?")
        page.press("#chat-input", "Enter")
        answer = page.locator('[data-role="assistant"]').first
        answer.and_(page.locator('[data-state="done"]')).wait_for(timeout=120_000)
        expect(answer).to_contain_text("세종")
        expect(answer).to_contain_text("[")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "extractive.png"), full_page=True)
    finally:
        page.close()


def test_greetings_get_a_polite_reply_on_every_route(extractive):
    import openai

    from echorag.answering.small_talk import REPLIES

    body = extractive.post("/chat", json={"message": "안녕하세요!"}).json()
    assert body["response"] == REPLIES["greeting"] and not body["abstained"] and body["search_results"] == []
    assert not body["mlops_info"]["collected"]  # small talk never becomes a training label
    with extractive.stream("POST", "/chat/stream", json={"message": "고마워요"}) as response:
        events = _events(response)
    assert "".join(data["text"] for name, data in events if name == "token") == REPLIES["thanks"]
    client = openai.OpenAI(base_url=f"{extractive.base_url}v1", api_key="not-needed", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model="echorag", messages=[{"role": "user", "content": "뭐 할 수 있어?"}])
    assert completion.choices[0].message.content == REPLIES["about"]


def test_the_extractive_teacher_trains_the_tiny_student_and_the_gate_refuses_a_thin_pool(extractive):
    """Three chats answered by the teacher, batch size 3: a real Ray Train run of the tiny
    student on exactly the served messages; with the default gate (20 pool turns) the
    candidate is scored on the pool by loss and agreement and kept, not promoted. The same
    run fits an answer selector version from the 👍, 👎 and correction given meanwhile."""
    answers = []
    for question in ("훈민정음은 언제 반포되었나요?", "한라산의 높이는 얼마인가요?", "독도는 어디에 있나요?"):
        response = extractive.post("/chat", json={"message": question})
        assert response.status_code == 200 and response.json()["mlops_info"]["selector_version"] == "base"
        answers.append(response.json())
    for body, rating in zip(answers, ("up", "down")):
        rated = extractive.post("/feedback", json={"turn_id": body["turn_id"], "rating": rating,
                                                   "session_id": body["session_id"]})
        assert rated.status_code == 200, rated.text
    corrected = extractive.put(f"/mlops/conversations/{answers[2]['turn_id']}", json={"answer": NO_ANSWER},
                               headers=ADMIN)
    assert corrected.status_code == 200, corrected.text
    stored = extractive.get("/mlops/conversations", params={"limit": 3}, headers=ADMIN).json()["conversations"]
    for turn in stored:
        assert (turn["backend"], turn["label"]) == ("extractive", "teacher")
        roles = [m["role"] for m in turn["prompt"]]
        assert roles[0] == "system" and roles[-1] == "user" and turn["prompt"][-1]["content"].startswith("참고 문서:")
    started = extractive.post("/mlops/settings", json={"batch_size": 3, "auto_trigger": True}, headers=ADMIN)
    assert started.status_code == 200, started.text
    deadline = time.time() + 900
    while (progress := extractive.get("/mlops/training-progress").json())["status"] in ("idle", "training"):
        assert time.time() < deadline, progress
        time.sleep(2)
    assert progress["status"] == "rejected", progress  # trained and judged, not promoted
    versions = {v["version"]: v for v in extractive.get("/mlops/models").json()["versions"]}
    candidate = versions["v1"]
    assert candidate["status"] == "rejected" and not candidate["active"]
    metrics = candidate["metrics"]
    assert metrics["candidate_agreement"] is not None and metrics["candidate_loss"] is not None
    assert "gate_min_examples" in metrics["gate_reason"]
    events = extractive.get("/mlops/events", params={"event_type": "training_rejected"}, headers=ADMIN).json()["events"]
    assert events and "평가 풀" in events[0]["message"] and "일치도" in events[0]["message"]
    assert extractive.get("/health").json()["model_kind"] == "extractive"  # the teacher still answers
    # The answer selector learnt from exactly those three labels, and was judged with reasons.
    models = extractive.get("/mlops/models").json()
    selectors = {s["version"]: s for s in models["selectors"]}
    assert models["selector"] == "base" and set(selectors) == {"base", "s1"}
    s1 = selectors["s1"]
    assert s1["fitted_on"]["feedback_questions"] + s1["fitted_on"]["pool_questions"] == 3, s1
    assert s1["status"] == "rejected" and "fewer than 20" in s1["metrics"]["reason"]
    events = extractive.get("/mlops/events", params={"event_type": "selector_rejected"}, headers=ADMIN).json()
    assert "답변 선택기 s1 보류" in events["events"][0]["message"]


def _selector_serves(http, version: str, question: str, timeout: float = 30) -> dict:
    """Ask until the retrievers follow the registry to ``version`` (they look every 5 s)."""
    deadline = time.time() + timeout
    while (body := http.post("/chat", json={"message": question}).json())["mlops_info"]["selector_version"] != version:
        assert time.time() < deadline, body["mlops_info"]
        time.sleep(1)
    return body


def test_an_admin_promotes_a_selector_version_and_rollback_restores_the_base_answers(extractive):
    question = "훈민정음은 언제 반포되었나요?"
    before = _selector_serves(extractive, "base", question)
    promoted = extractive.post("/mlops/selector/promote", json={"version": "s1"}, headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json() == {"selector": "s1"}, promoted.text
    assert _selector_serves(extractive, "s1", question)["abstained"] in (True, False)
    assert extractive.get("/mlops/models").json()["selector"] == "s1"
    back = extractive.post("/mlops/selector/rollback", headers=ADMIN)
    assert back.status_code == 200 and back.json() == {"selector": "base"}, back.text
    assert _selector_serves(extractive, "base", question)["response"] == before["response"]
    missing = extractive.post("/mlops/selector/promote", json={"version": "s99"}, headers=ADMIN)
    assert missing.status_code == 404, missing.text


def test_a_canary_sends_about_half_the_sessions_to_the_student_then_promote_and_rollback(extractive):
    """The admin serves the student's v1 (kept by the gate above) to half the sessions:
    about half of 40 new sessions get the student, each session keeps its answerer, and
    /mlops/performance counts both; promote moves every session, rollback none."""
    changed = extractive.post("/mlops/promote", json={"version": "v1", "student_share": 0.5}, headers=ADMIN)
    assert changed.status_code == 200 and changed.json()["student_share"] == 0.5, changed.text
    answerers = {}
    for i in range(40):
        first = extractive.post("/chat", json={"message": "한라산의 높이는 얼마인가요?"}).json()
        again = extractive.post("/chat", json={"message": "제주도에는 어떤 산이 있나요?",
                                               "session_id": first["session_id"]}).json()
        assert (again["model"], again["adapter_version"]) == (first["model"], first["adapter_version"])
        answerers[first["session_id"]] = (first["model"], first["adapter_version"])
    student = [a for a in answerers.values() if a[1] == "v1"]
    assert all(a == student[0] for a in student) and student[0][0] != "extractive"
    bound = 4 * math.sqrt(40 * 0.25)  # four standard deviations of Binomial(40, 0.5)
    assert abs(len(student) - 20) < bound, answerers
    assert set(answerers.values()) == {("extractive", "base"), student[0]}

    performance = extractive.get("/mlops/performance").json()
    rows = {(r["backend"], r["version"]): r for r in performance["answerers"]}
    assert performance["student_share"] == 0.5
    assert rows[("tiny", "v1")]["requests"] == 2 * len(student)
    assert rows[("tiny", "v1")]["latency_p50_ms"] > 0 and rows[("tiny", "v1")]["agreement"] is not None
    assert rows[("extractive", "base")]["requests"] >= 2 * (40 - len(student))

    everyone = extractive.post("/mlops/promote", headers=ADMIN).json()
    assert everyone["student_share"] == 1.0 and everyone["active"] == "v1"
    for _ in range(3):
        assert extractive.post("/chat", json={"message": "독도는 어디에 있나요?"}).json()["adapter_version"] == "v1"
    back = extractive.post("/mlops/rollback", json={"version": "base"}, headers=ADMIN).json()
    assert back["active"] == "base"
    for _ in range(3):  # no student version: the teacher answers every session again
        assert extractive.post("/chat", json={"message": "독도는 어디에 있나요?"}).json()["model"] == "extractive"
    events = extractive.get("/mlops/events", params={"event_type": "traffic_shifted"}, headers=ADMIN).json()["events"]
    assert [e["data"]["student_share"] for e in reversed(events)] == [0.5, 1.0]



@pytest.fixture(scope="module")
def openai_taught(extractive, ray_cluster, app_settings, tiny_model_path, tmp_path_factory):
    """A second EchoRAG whose answers come from an OpenAI-compatible teacher over HTTP:
    the extractive application's own /v1 in the same cluster. Its student is the tiny model."""
    settings = {**app_settings, "generator_backend": "openai",
                "openai_base_url": f"{ray_cluster}{PREFIX}/v1", "openai_model": "echorag",
                "openai_api_key": "unused", "finetune_webhook_url": None, "finetune_auto_trigger": False,
                "finetune_train_on": "teacher", "finetune_gate_min_examples": 20,  # the default gate
                "rate_limit_per_minute": 0, "engine": "transformers"}
    with deployed("openai-taught", ray_cluster, settings, tiny_model_path, tmp_path_factory) as http:
        yield http


def test_an_openai_compatible_teacher_over_http_labels_the_turns_that_train_the_student(openai_taught):
    """Chats answered by a real OpenAI-compatible server are stored as teacher labels with
    the exact prompt sent to it, and a batch of them trains the student in a real run."""
    questions = ("훈민정음은 누가 만들었나요?", "한라산의 높이는 얼마인가요?", "독도는 어디에 있나요?")
    answers = []
    for question in questions:
        body = openai_taught.post("/chat", json={"message": question}).json()
        assert body["model"] == "echorag", body  # the teacher's model name, as its /v1 reports it
        answers.append(body["response"])
    # The teacher answers the question inside the prompt it is sent, from its own documents.
    assert all(MARKER.search(a) for a in answers), answers
    stored = openai_taught.get("/mlops/conversations", params={"limit": 3}, headers=ADMIN).json()["conversations"]
    assert sorted(t["assistant"] for t in stored) == sorted(answers)
    for turn in stored:
        assert (turn["backend"], turn["model"], turn["label"]) == ("openai", "echorag", "teacher"), turn
        assert turn["prompt"][-1]["content"].startswith("참고 문서:")
    started = openai_taught.post("/mlops/settings", json={"batch_size": 3, "auto_trigger": True}, headers=ADMIN)
    assert started.status_code == 200, started.text
    deadline = time.time() + 900
    while (progress := openai_taught.get("/mlops/training-progress").json())["status"] in ("idle", "training"):
        assert time.time() < deadline, progress
        time.sleep(2)
    assert progress["status"] == "rejected", progress  # the default gate: a pool this thin promotes nothing
    versions = openai_taught.get("/mlops/models").json()["versions"]
    candidate = next(v for v in versions if v["version"] == "v1")
    assert candidate["samples"] >= 1 and candidate["metrics"]["candidate_agreement"] is not None, versions
    # A teacher model's answers label the sentences they draw on: the selector learnt from them too.
    selectors = {s["version"]: s for s in openai_taught.get("/mlops/models").json()["selectors"]}
    assert selectors["s1"]["fitted_on"]["feedback_questions"] >= 1 and selectors["s1"]["status"] == "rejected"


def test_eval_answers_gives_the_service_s_own_answers(extractive):
    """``echorag eval-answers`` runs the service's pipeline in one process: over the dev
    half of the bundled questions its answers are the ones /chat gives. (Last in this
    module: its chats are collected turns, which the training tests above must not see.)"""
    from concurrent.futures import ThreadPoolExecutor

    from echorag.config import load_settings
    from echorag.documents import read_jsonl
    from echorag.evaluation.answers import AnswerBench, select_split

    queries = select_split(read_jsonl(sample_path("dev_queries.jsonl")), "dev")
    with ThreadPoolExecutor(4) as pool:  # four users at once; each answer is its own
        served = list(pool.map(lambda q: extractive.post("/chat", json={"message": q["query"]}).json()["response"],
                               queries))
    bench = AnswerBench(read_documents([sample_path()]), load_settings(), progress=False)
    try:
        with ThreadPoolExecutor(1) as pool:  # its own event loop: the browser tests left one running here
            offline = [row["answer"] for row in pool.submit(bench.ask, queries, False).result()["rows"]]
    finally:
        bench.close()
    differ = [(q["query"], a, b) for q, a, b in zip(queries, served, offline) if a != b]
    assert not differ, differ
