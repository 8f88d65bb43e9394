"""Adapter versions under a storage URI (``file://`` here; S3/GCS go through the same
``pyarrow.fs`` code): written by one process, loaded by another from its own cache."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from echorag.learning import BASE, AdapterRegistry, InvalidAdapterError, VersionExistsError
from echorag.learning.adapter_storage import METADATA_FILE
from tests.conftest import REPO
from tests.unit.test_mlops_registry import saved_adapter


@pytest.fixture
def uri(tmp_path) -> str:
    return (tmp_path / "store" / "adapters").as_uri()  # file:///.../store/adapters


def store_dir(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def lora_adapter(base_path: Path, out: Path) -> dict[str, torch.Tensor]:
    """A LoRA on the tiny model with non-zero B matrices (so it changes the output),
    saved as peft does; returns its weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_an_adapter_written_through_a_uri_is_loaded_by_another_process(tiny_model_path, uri, tmp_path):
    weights = lora_adapter(tiny_model_path, tmp_path / "run1")
    writer = AdapterRegistry(uri, cache_dir=tmp_path / "writer-cache")
    writer.add(tmp_path / "run1", data_watermark=7, samples=5)
    writer.promote("v1")
    torch.save(weights, tmp_path / "expected.pt")
    assert (store_dir(uri) / "v1" / "adapter_model.safetensors").is_file()  # in the store, not a cache

    reader_cache = tmp_path / "reader-cache"
    script = textwrap.dedent(f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from echorag.learning import AdapterRegistry

        registry = AdapterRegistry({uri!r}, cache_dir={str(reader_cache)!r})
        version = registry.active
        path = registry.path(version)
        base = AutoModelForCausalLM.from_pretrained({str(tiny_model_path)!r})
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        with torch.no_grad():
            base_logits = base(ids).logits
            model = PeftModel.from_pretrained(base, path)
            tuned_logits = model(ids).logits
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        loaded = {{n: p for n, p in model.named_parameters() if "lora_" in n}}
        same = sorted(expected) == sorted(loaded) and all(torch.equal(expected[n], loaded[n]) for n in expected)
        print(json.dumps({{
            "version": version, "path": str(path), "same_weights": same,
            "changes_output": not torch.allclose(base_logits, tuned_logits),
            "watermark": registry.info(version).data_watermark, "status": registry.info(version).status,
        }}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["version"] == "v1" and seen["status"] == "active" and seen["watermark"] == 7
    assert Path(seen["path"]).is_relative_to(reader_cache)  # downloaded into the reader's own cache
    assert seen["same_weights"] and seen["changes_output"]


def test_uri_registry_keeps_versions_immutable_and_moves_a_pointer(uri, tmp_path):
    registry = AdapterRegistry(uri, cache_dir=tmp_path / "cache")
    assert registry.versions() == [] and registry.active == BASE
    registry.add(saved_adapter(tmp_path / "a", value=1.0))
    before = (store_dir(uri) / "v1" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(VersionExistsError):
        registry.add(saved_adapter(tmp_path / "b", value=2.0), version="v1")
    assert (store_dir(uri) / "v1" / "adapter_model.safetensors").read_bytes() == before
    registry.add(tmp_path / "b")
    registry.promote("v1")
    registry.promote("v2")
    assert registry.rollback() == "v1"
    other = AdapterRegistry(uri, cache_dir=tmp_path / "other-cache")  # another node
    assert other.active == "v1" and [(i.version, i.status) for i in other.history()] == [
        ("v1", "active"), ("v2", "archived")
    ]
    pointer = json.loads((store_dir(uri) / "active.json").read_text())
    assert pointer["version"] == "v1" and pointer["previous"] == "v2"
    assert sorted(p.name for p in store_dir(uri).iterdir()) == ["active.json", "v1", "v2"]  # no staged files left


def test_an_incomplete_or_damaged_upload_is_never_loaded(uri, tmp_path):
    registry = AdapterRegistry(uri, cache_dir=tmp_path / "cache")
    registry.add(saved_adapter(tmp_path / "run1"))
    registry.add(saved_adapter(tmp_path / "run2"))
    (store_dir(uri) / "v1" / METADATA_FILE).unlink()  # an upload cut before its last file
    with pytest.raises(InvalidAdapterError, match="incomplete"):
        registry.path("v1")
    assert [i.version for i in registry.history()] == ["v2"] and registry.next_version() == "v3"
    (store_dir(uri) / "v2" / "adapter_model.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(InvalidAdapterError, match="unreadable"):
        registry.promote("v2")
    assert registry.active == BASE and not any((tmp_path / "cache").rglob("*.safetensors"))
    with pytest.raises(InvalidAdapterError, match="no directory"):
        registry.path("v9")


def test_a_version_is_downloaded_once_per_cache(uri, tmp_path):
    registry = AdapterRegistry(uri, cache_dir=tmp_path / "cache")
    registry.add(saved_adapter(tmp_path / "run1"))
    first = registry.path("v1")
    (first / "marker").write_text("still the same directory")
    assert registry.path("v1") == first and (first / "marker").is_file()
    assert AdapterRegistry(uri, cache_dir=tmp_path / "cache").path("v1") == first  # a restarted replica
