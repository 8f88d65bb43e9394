import pytest
from pydantic import ValidationError

from echorag.config import load_settings


def test_original_environment_names_are_accepted(monkeypatch):
    monkeypatch.setenv("FINETUNE_BATCH_SIZE", "7")
    monkeypatch.setenv("FINETUNE_AUTO_TRIGGER", "false")
    monkeypatch.setenv("FINETUNE_EPOCHS", "3")
    monkeypatch.setenv("CONVERSATION_COLLECTION_ENABLED", "0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    s = load_settings()
    assert (s.finetune_batch_size, s.finetune_auto_trigger, s.finetune_epochs) == (7, False, 3)
    assert s.conversation_collection_enabled is False
    assert s.openai_api_key == "sk-test" and s.log_level == "DEBUG"


def test_new_names_use_the_echorag_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHORAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ECHORAG_CHROMA_HOST", "chroma.internal")
    monkeypatch.setenv("ECHORAG_TOP_K", "3")
    s = load_settings()
    assert s.data_dir == tmp_path and s.sqlite_path == tmp_path / "echorag.sqlite"
    assert s.chroma_host == "chroma.internal" and s.top_k == 3


def test_serve_config_args_override_the_environment(monkeypatch):
    monkeypatch.setenv("ECHORAG_TOP_K", "3")
    monkeypatch.setenv("FINETUNE_BATCH_SIZE", "7")
    s = load_settings(top_k=9, finetune_batch_size=50)
    assert s.top_k == 9 and s.finetune_batch_size == 50


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"chunk_size": 100, "chunk_overlap": 100}, {"embedder": "bert"}, {"temperature": -1}])
def test_nonsense_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        load_settings(**bad)
