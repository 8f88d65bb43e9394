"""The LoRA training core on the tiny model: label masks, the loop, held-out loss, adapters."""

import hashlib
import re
from pathlib import Path

import pytest

from echorag.config import Settings
from echorag.learning.evaluation import evaluate_versions
from echorag.learning.progress import StepInfo
from echorag.learning.train_config import TrainConfig
from echorag.learning.training import TrainingError, save_adapter, train_lora
from echorag.models.chat_tokens import IGNORE, encode_chat, supports_assistant_mask
from echorag.models.generation import LocalGenerator
from echorag.models.tiny_model import CHAT_TEMPLATE, EOT
from tests.korean_qa import QA

CHATS = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
MULTI_TURN = [
    {"role": "system", "content": "당신은 친절한 한국어 도우미입니다."},
    {"role": "user", "content": "안녕하세요"},
    {"role": "assistant", "content": "안녕하세요! 무엇을 도와드릴까요?"},
    {"role": "user", "content": "김치는 어떤 음식인가요?"},
    {"role": "assistant", "content": "김치는 발효 음식입니다."},
]
# Fast enough for a unit test, strong enough for the tiny model to visibly learn 12 chats.
FAST = TrainConfig(epochs=16, learning_rate=1e-2, batch_size=4, max_length=128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_model_path):
    """The tiny tokenizer with a KANANA-like template: no {% generation %} markers."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", CHAT_TEMPLATE)
    return tokenizer


def labelled(tokenizer, encoded: dict) -> list[str]:
    """The labelled spans, decoded one contiguous run at a time."""
    spans, current = [], []
    for label in encoded["labels"] + [IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


# --------------------------------------------------------------------------- label masks


@pytest.mark.parametrize("chat", [CHATS[0], MULTI_TURN], ids=["one-turn", "multi-turn"])
def test_labels_cover_exactly_the_last_assistant_reply_with_generation_markers(tiny_tokenizer, chat):
    """The last reply is the answer; earlier ones are remembered turns of the served prompt."""
    assert supports_assistant_mask(tiny_tokenizer)
    encoded = encode_chat(tiny_tokenizer, chat, max_length=512)
    assert labelled(tiny_tokenizer, encoded) == [chat[-1]["content"] + EOT]
    # Labels are the input ids where they are set: no shift here (the model shifts).
    assert all(lab in (IGNORE, tok) for tok, lab in zip(encoded["input_ids"], encoded["labels"]))


@pytest.mark.parametrize("chat", [CHATS[0], MULTI_TURN], ids=["one-turn", "multi-turn"])
def test_labels_without_generation_markers_match_the_marker_path(tiny_tokenizer, plain_tokenizer, chat):
    assert not supports_assistant_mask(plain_tokenizer)
    fallback = encode_chat(plain_tokenizer, chat, max_length=512)
    assert labelled(plain_tokenizer, fallback) == [chat[-1]["content"] + EOT]
    assert fallback == encode_chat(tiny_tokenizer, chat, max_length=512)


def test_long_chats_are_cut_and_chats_with_nothing_to_learn_are_refused(tiny_model_path, tiny_tokenizer):
    encoded = encode_chat(tiny_tokenizer, CHATS[1], max_length=20)
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == 20
    # A prompt that fills max_length leaves no reply token: nothing to train on.
    with pytest.raises(TrainingError, match="assistant tokens"):
        train_lora(tiny_model_path, [CHATS[1]], TrainConfig(max_length=8))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    steps: list[StepInfo] = []
    result = train_lora(tiny_model_path, CHATS, FAST, on_step=steps.append)
    adapter = save_adapter(result.model, tmp_path_factory.mktemp("adapter") / "v1")
    return result, steps, adapter


def test_training_lowers_the_loss_and_the_trained_version_answers_like_its_labels(tiny_model_path, trained):
    result, _, adapter = trained
    epochs = result.epoch_losses
    assert len(epochs) == FAST.epochs and epochs[-1] < 0.7 * epochs[0], epochs
    scores = evaluate_versions(tiny_model_path, {"base": None, "trained": adapter}, CHATS, FAST)
    base, trained_ = scores["base"], scores["trained"]
    print(f"\non the training chats: loss base {base.loss:.3f} → trained {trained_.loss:.3f}, agreement "
          f"{base.agreement:.3f} → {trained_.agreement:.3f}; epoch losses {[round(x, 3) for x in epochs]}")
    assert trained_.loss < 0.7 * base.loss, scores
    assert trained_.agreement > base.agreement + 0.1, scores  # greedy answers, served as LocalGenerator serves
    # The answers it scored are returned, one per pool chat, for reports beyond agreement.
    assert len(trained_.answers) == len(CHATS) and all(isinstance(a, str) for a in trained_.answers)


def test_on_step_reports_every_step_with_total_and_eta(trained):
    result, steps, _ = trained
    total = 3 * FAST.epochs  # 12 chats / batch 4 = 3 steps an epoch
    assert [s.step for s in steps] == list(range(1, total + 1)) == list(range(1, result.steps + 1))
    assert {s.total_steps for s in steps} == {total}
    assert [s.epoch for s in steps] == [e for e in range(FAST.epochs) for _ in range(3)]
    assert [s.loss for s in steps] == result.losses
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(steps, steps[1:]))
    assert steps[0].eta_s > 0 and steps[-1].eta_s == 0 and steps[-1].progress == 1.0


def test_gradient_accumulation_takes_fewer_optimizer_steps(tiny_model_path):
    steps: list[StepInfo] = []
    config = TrainConfig(epochs=1, batch_size=2, grad_accum=3, max_length=128)
    result = train_lora(tiny_model_path, CHATS, config, on_step=steps.append)
    assert result.steps == len(steps) == 2  # 6 micro-batches of 2, 3 per step


def _digest(directory: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(directory.iterdir()))).hexdigest()


def test_training_continues_from_an_existing_adapter(tiny_model_path, trained, tmp_path):
    first, _, adapter = trained
    before = _digest(adapter)
    config = TrainConfig(epochs=1, learning_rate=5e-3, batch_size=4, max_length=128, seed=1)
    fresh = train_lora(tiny_model_path, CHATS, config)
    continued = train_lora(tiny_model_path, CHATS, config, init_adapter=adapter)
    # It starts where the first run ended, not from scratch.
    assert continued.losses[0] < 0.5 * fresh.losses[0], (continued.losses, fresh.losses)
    assert continued.losses[0] < 1.5 * first.losses[-1]
    out = save_adapter(continued.model, tmp_path / "v2")
    assert _digest(adapter) == before  # the parent version is never written to
    assert _digest(out) != before


def test_saved_adapter_loads_in_the_generator_and_changes_its_answer(tiny_model_path, trained):
    _, _, adapter = trained
    generator = LocalGenerator(str(tiny_model_path))
    generator.load_adapter("v1", adapter)
    question = CHATS[0][:1]
    base, tuned = generator.generate([question, question], adapters=[None, "v1"], max_new_tokens=16)
    assert base.text != tuned.text, base.text
    print(f"\nbase: {base.text!r}\ntuned: {tuned.text!r}")


# --------------------------------------------------------------------------- config and data


def test_config_from_settings_reads_what_settings_has():
    config = TrainConfig.from_settings(Settings(finetune_epochs=5), learning_rate=2e-4)
    assert (config.epochs, config.learning_rate, config.lora_r) == (5, 2e-4, 16)
    assert config.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert TrainConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)
    assert TrainConfig.from_dict(config.to_dict() | {"unknown": 1}) == config
    with pytest.raises(ValueError):
        TrainConfig(holdout_fraction=1.0)


