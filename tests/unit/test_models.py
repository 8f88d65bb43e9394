"""Model resolution and the tiny offline model (no network, no Ray)."""

import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest

from echorag.models import resolution as models
from echorag.models.resolution import KANANA_ID, ResolvedModel, resolve_generator


@pytest.fixture()
def offline_empty_cache(monkeypatch, tmp_path) -> Path:
    """HF_HUB_OFFLINE=1 and an empty Hugging Face cache; any hub call fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(models, "_hub_answers", _no_network)
    return tmp_path / "hf" / "hub"


def _no_network(*args, **kwargs):
    raise AssertionError("resolution touched the network")


def _fake_kanana_cache(hub: Path, with_weights: bool = True) -> Path:
    """The Hugging Face cache layout of a downloaded KANANA snapshot (files are stand-ins)."""
    repo = hub / f"models--{KANANA_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "config.json").write_text("{}")
    if with_weights:
        (snapshot / "model.safetensors").write_bytes(b"")
    return snapshot


def test_auto_offline_with_empty_cache_serves_the_tiny_demo(offline_empty_cache, models_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="echorag.models.resolution"):
        resolved = resolve_generator("auto", models_dir)
    assert resolved == ResolvedModel(str(models_dir / "tiny-ko"), "tiny", models.TINY_NAME)
    assert resolved.is_demo
    assert any("DEMO" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_auto_prefers_kanana_from_the_local_cache(offline_empty_cache, models_dir):
    snapshot = _fake_kanana_cache(offline_empty_cache)
    resolved = resolve_generator("auto", models_dir)
    assert resolved == ResolvedModel(str(snapshot), "kanana", KANANA_ID)
    assert not resolved.is_demo


def test_auto_ignores_a_cached_kanana_without_weights(offline_empty_cache, models_dir):
    _fake_kanana_cache(offline_empty_cache, with_weights=False)
    assert resolve_generator("auto", models_dir).kind == "tiny"


def test_auto_online_but_hub_silent_serves_the_tiny_demo(monkeypatch, tmp_path, models_dir):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    asked = []
    monkeypatch.setattr(models, "_hub_answers", lambda repo_id: asked.append(repo_id) or False)
    assert resolve_generator("auto", models_dir).kind == "tiny"
    assert asked == [KANANA_ID]


def test_explicit_specs(tmp_path, tiny_model_path, models_dir):
    local = tmp_path / "my-model"
    local.mkdir()
    assert resolve_generator(str(local), models_dir) == ResolvedModel(str(local), "local", "my-model")
    assert resolve_generator(str(tiny_model_path), models_dir).kind == "tiny"  # recognised by its marker
    assert resolve_generator("tiny", models_dir).path == str(tiny_model_path)
    assert resolve_generator("org/some-model", models_dir) == ResolvedModel("org/some-model", "hub", "org/some-model")
    assert resolve_generator(KANANA_ID, models_dir).kind == "kanana"
    with pytest.raises(FileNotFoundError):
        resolve_generator(str(tmp_path / "missing"), models_dir)


def test_tiny_model_shape(tiny_model_path):
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(tiny_model_path)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.num_hidden_layers == 2 and config.tie_word_embeddings
    assert 2000 <= config.vocab_size <= 4096
    card = json.loads((tiny_model_path / models.TINY_MARKER).read_text())
    assert card["version"] == models.TINY_VERSION and card["params"] < 1_000_000
    generation = GenerationConfig.from_pretrained(tiny_model_path)
    assert generation.eos_token_id == config.eos_token_id and generation.pad_token_id is not None
    assert "EchoRAG's tiny demo model" in (tiny_model_path / "README.md").read_text()


def test_tokenizer_round_trips_korean(tiny_tokenizer):
    text = "안녕하세요! 에코RAG는 한국어 검색 증강 채팅 서비스입니다. 처음 보는 글자: 뷁, 햏, 😀 그리고 English."
    ids = tiny_tokenizer(text)["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tiny_tokenizer.eos_token == "<|eot_id|>" and tiny_tokenizer.pad_token_id is not None


CHAT = [
    {"role": "system", "content": "한국어로 답하세요."},
    {"role": "user", "content": "서울은 어디인가요?"},
    {"role": "assistant", "content": "서울은 대한민국의 수도입니다. [1]"},
    {"role": "user", "content": "부산은요?"},
    {"role": "assistant", "content": "부산은 항구 도시입니다."},
]


def test_chat_template_with_and_without_generation_prompt(tiny_tokenizer):
    prompt = tiny_tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n한국어로 답하세요.<|eot_id|>")
    assert prompt.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\n서울은 어디인가요?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    closed = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert closed.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n부산은 항구 도시입니다.<|eot_id|>")


def test_assistant_mask_covers_exactly_the_replies(tiny_tokenizer):
    enc = tiny_tokenizer.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tiny_tokenizer.decode(masked) == "서울은 대한민국의 수도입니다. [1]<|eot_id|>부산은 항구 도시입니다.<|eot_id|>"


def test_concurrent_ensure_builds_once_and_reproducibly(monkeypatch, tmp_path, tiny_model_path):
    """Two starters race for a fresh models dir: one builds, both get it, bytes match the session build."""
    builds = []
    real_build = models.build_tiny_model
    monkeypatch.setattr(models, "build_tiny_model", lambda out, seed=0: builds.append(out) or real_build(out, seed))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(models.ensure_tiny_model(tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and results == [tmp_path / "tiny-ko"] * 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-ko-")]  # no temp dir left
    for name in ("model.safetensors", "tokenizer.json", "config.json", models.TINY_MARKER):
        assert _digest(tmp_path / "tiny-ko" / name) == _digest(tiny_model_path / name), name


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_what_answers_chat_offline_is_the_extractive_answerer_not_the_tiny_model(offline_empty_cache, tmp_path):
    from echorag.config import Settings

    settings = Settings(data_dir=tmp_path)
    assert models.resolve_answerer(settings) == models.EXTRACTIVE
    assert not (settings.models_dir / "tiny-ko").exists()  # nothing was built for it
    assert models.resolve_answerer(Settings(data_dir=tmp_path, generator_backend="extractive")).kind == "extractive"
    # The tiny model answers only when asked for by name; the student stays the tiny model.
    assert models.resolve_answerer(Settings(data_dir=tmp_path, generator_model="tiny")).kind == "tiny"
    assert resolve_generator("auto", settings.models_dir).kind == "tiny"


def test_what_answers_chat_is_kanana_when_it_is_cached(offline_empty_cache, tmp_path):
    from echorag.config import Settings

    snapshot = _fake_kanana_cache(offline_empty_cache)
    assert models.resolve_answerer(Settings(data_dir=tmp_path)) == ResolvedModel(str(snapshot), "kanana", KANANA_ID)


def test_the_student_model_is_what_the_loop_fine_tunes_where_a_teacher_answers(offline_empty_cache, tmp_path,
                                                                               tiny_model_path):
    from echorag.config import Settings

    student = str(tiny_model_path)  # any local model directory will do
    taught = Settings(data_dir=tmp_path, generator_backend="extractive", student_model=student)
    assert models.student_spec(taught) == student
    assert models.resolve_student(taught).path == str(tiny_model_path.resolve())
    # Unset: generator_model's local model, the tiny one offline.
    assert models.student_spec(Settings(data_dir=tmp_path, generator_backend="extractive")) == "auto"
    # Where the local model answers, it is the student itself.
    assert models.student_spec(Settings(data_dir=tmp_path, generator_model="tiny", student_model=student)) == "tiny"
