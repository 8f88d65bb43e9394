"""LocalGenerator on the tiny model with real peft LoRA adapters; OpenAIGenerator on a mock API."""

import json
import re
import threading
from pathlib import Path

import httpx2
import pytest
import torch

from echorag.answering.prompts import build_messages
from echorag.models.generation import LocalGenerator, OpenAIGenerator
from echorag.types import BASE, Generation, MemoryTurn

SEOUL = build_messages(
    "서울의 명소는 어디인가요?",
    [{"text": "서울에는 경복궁과 남산서울타워가 있습니다.", "metadata": {"title": "서울 여행"}}],
    [MemoryTurn(user="안녕하세요", assistant="안녕하세요! 무엇을 도와드릴까요?")],
)
KIMCHI = build_messages("김치는 어떻게 만드나요?", [], [])
REFUND = build_messages(
    "환불은 언제까지 되나요?",
    [{"text": "구매 후 7일 이내에는 전액 환불이 가능합니다.", "collection": "documents"},
     {"text": "포장을 뜯은 제품은 환불이 어렵습니다."}],
    [],
)
MAX_NEW = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_path, tmp_path_factory) -> dict[str, Path]:
    """Two different random LoRA adapters, saved the way the learning loop saves them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = {}
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        config = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear",
                            init_lora_weights=False)  # random, so outputs visibly change
        dirs[name] = tmp_path_factory.mktemp(f"adapter-{name}")
        get_peft_model(base, config).save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def generator(tiny_model_path, adapter_dirs) -> LocalGenerator:
    generator = LocalGenerator(str(tiny_model_path))
    for name, path in adapter_dirs.items():
        generator.load_adapter(name, path)
    return generator


def test_loads_the_tiny_demo_on_cpu(generator):
    assert (generator.kind, generator.device, generator.is_demo) == ("tiny", "cpu", True)
    assert generator.model.dtype == torch.float32
    assert generator.adapters == ["a", "b"]


def test_generate_returns_korean_with_token_counts(generator):
    [out] = generator.generate([SEOUL], [None], max_new_tokens=MAX_NEW)
    assert isinstance(out, Generation) and re.search(r"[가-힣]", out.text)
    assert out.prompt_tokens == generator.count_tokens(SEOUL)
    # The budget cuts the reply short: exactly that many tokens, the start of the longer reply.
    [short] = generator.generate([SEOUL], [None], max_new_tokens=3)
    assert out.completion_tokens > 3 and short.completion_tokens == 3
    assert out.text.startswith(short.text.strip()) and len(short.text) < len(out.text)


def test_adapters_change_the_output(generator):
    outputs = {
        adapter: [g.text for g in generator.generate([SEOUL, REFUND], [adapter] * 2, MAX_NEW)]
        for adapter in ("a", "b", None)
    }
    assert outputs["a"] != outputs["b"] != outputs[None] != outputs["a"]
    assert generator.generate([SEOUL], [BASE], MAX_NEW)[0].text == outputs[None][0]  # "base" = no adapter


def test_mixed_batch_equals_each_row_alone(generator):
    conversations, adapters = [SEOUL, KIMCHI, REFUND], ["a", "b", None]  # lengths differ: padding
    batch = generator.generate(conversations, adapters, max_new_tokens=MAX_NEW)
    alone = [generator.generate([c], [a], max_new_tokens=MAX_NEW)[0] for c, a in zip(conversations, adapters)]
    assert batch == alone


def test_generation_is_deterministic(generator):
    first = generator.generate([SEOUL, KIMCHI], ["a", None], MAX_NEW)
    assert generator.generate([SEOUL, KIMCHI], ["a", None], MAX_NEW) == first


def test_stream_joins_to_the_generated_text(generator):
    for adapter in (None, "a", "b"):
        pieces = list(generator.stream(REFUND, adapter, max_new_tokens=MAX_NEW))
        text = "".join(pieces)
        # The streamer hands text over word by word: a reply without a space comes whole.
        assert len(pieces) > 1 or " " not in text.strip(), pieces
        assert text == generator.generate([REFUND], [adapter], MAX_NEW)[0].text
    assert len(list(generator.stream(REFUND, None, max_new_tokens=MAX_NEW))) > 1  # the base model's words


def test_stream_stopped_early_releases_the_model(generator):
    expected = generator.generate([KIMCHI], max_new_tokens=4)
    stream = generator.stream(SEOUL, "a", max_new_tokens=64)
    next(stream)
    stream.close()  # e.g. the HTTP client went away
    done: list = []
    worker = threading.Thread(target=lambda: done.append(generator.generate([KIMCHI], max_new_tokens=4)))
    worker.start()
    worker.join(timeout=120)
    assert done == [expected]  # the model's lock was released: the next request is served, unchanged


def test_sampling_varies_the_reply_within_the_budget(generator):
    replies = [generator.generate([KIMCHI], ["b"], max_new_tokens=8, temperature=1.5)[0] for _ in range(6)]
    assert all(0 < r.completion_tokens <= 8 for r in replies)
    assert len({r.text for r in replies}) > 1  # greedy decoding would give one reply six times


def test_unknown_adapter_is_a_key_error(generator):
    with pytest.raises(KeyError, match="unknown adapter 'v9'"):
        generator.generate([SEOUL], ["v9"])
    with pytest.raises(KeyError, match="v9"):
        generator.stream(SEOUL, "v9")  # at the call, not at the first piece
    with pytest.raises(ValueError):
        generator.generate([SEOUL, KIMCHI], ["a"])


def test_load_and_unload_adapters(tiny_model_path, adapter_dirs):
    from peft import PeftModel

    generator = LocalGenerator(str(tiny_model_path))
    base = generator.generate([SEOUL], max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError):
        generator.load_adapter(BASE, adapter_dirs["a"])
    generator.load_adapter("v1", adapter_dirs["a"])
    generator.load_adapter("v2", adapter_dirs["b"])
    v1 = generator.generate([SEOUL], ["v1"], MAX_NEW)
    generator.load_adapter("v1", adapter_dirs["b"])  # same name again: replaced
    assert generator.generate([SEOUL], ["v1"], MAX_NEW) == generator.generate([SEOUL], ["v2"], MAX_NEW) != v1
    generator.unload_adapter("v1")
    assert generator.adapters == ["v2"]
    generator.unload_adapter("v2")
    assert generator.adapters == [] and not isinstance(generator.model, PeftModel)
    assert generator.generate([SEOUL], max_new_tokens=MAX_NEW) == base
    with pytest.raises(KeyError):
        generator.unload_adapter("v2")


# -- OpenAI-compatible backend, against a mock transport (no network) ---------------------


def _openai_mock(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    assert request.url.path == "/v1/chat/completions" and body["model"] == "gpt-4o-mini"
    question = body["messages"][-1]["content"]
    if body.get("stream"):
        chunks = [{"content": "안녕"}, {"content": "하세요"}, {}]
        lines = [
            "data: " + json.dumps({
                "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": None if delta else "stop"}],
            })
            for delta in chunks
        ]
        sse = "\n\n".join([*lines, "data: [DONE]"]) + "\n\n"
        return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"답: {question[-3:]}"}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    })


@pytest.fixture()
def openai_generator() -> OpenAIGenerator:
    from openai import OpenAI

    client = OpenAI(api_key="test", base_url="http://mock.test/v1",
                    http_client=httpx2.Client(transport=httpx2.MockTransport(_openai_mock)))
    return OpenAIGenerator(model="gpt-4o-mini", client=client)


def test_openai_generate_keeps_order_and_usage(openai_generator):
    out = openai_generator.generate([SEOUL, KIMCHI], ["v2", None], max_new_tokens=16)
    assert [g.text for g in out] == [f"답: {SEOUL[-1]['content'][-3:]}", f"답: {KIMCHI[-1]['content'][-3:]}"]
    assert (out[0].prompt_tokens, out[0].completion_tokens) == (11, 3)
    assert (openai_generator.name, openai_generator.kind) == ("gpt-4o-mini", "openai")


def test_openai_stream(openai_generator):
    assert list(openai_generator.stream(SEOUL)) == ["안녕", "하세요"]
