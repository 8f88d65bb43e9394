import json
import struct
import threading
from pathlib import Path

import pytest

from echorag.learning import BASE, AdapterRegistry, InvalidAdapterError, VersionExistsError


def saved_adapter(path: Path, value: float = 1.0) -> Path:
    """What peft's save_pretrained leaves behind: a config and safetensors weights."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    header = json.dumps({"lora_A": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (path / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + struct.pack("<2f", value, value)
    )
    return path


@pytest.fixture
def registry(tmp_path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters")


def test_versions_are_numbered_and_carry_metadata(registry, tmp_path):
    assert registry.next_version() == "v1" and registry.active == BASE
    v1 = registry.add(saved_adapter(tmp_path / "run1"), data_watermark=100, samples=95,
                      metrics={"holdout_loss": 1.2}, timings={"train_s": 3.5})
    assert (v1.version, v1.parent, v1.status) == ("v1", BASE, "candidate")
    on_disk = json.loads((registry.root / "v1" / "metadata.json").read_text())
    assert on_disk["data_watermark"] == 100 and on_disk["metrics"] == {"holdout_loss": 1.2}
    registry.promote("v1")
    assert registry.add(saved_adapter(tmp_path / "run2")).parent == "v1"
    assert registry.versions() == ["v1", "v2"] and registry.next_version() == "v3"


def test_an_existing_version_is_never_overwritten(registry, tmp_path):
    registry.add(saved_adapter(tmp_path / "a", value=1.0), version="v1")
    before = (registry.root / "v1" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(VersionExistsError):
        registry.add(saved_adapter(tmp_path / "b", value=2.0), version="v1")
    assert (registry.root / "v1" / "adapter_model.safetensors").read_bytes() == before
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".tmp")]  # no debris


def test_concurrent_adds_get_distinct_versions(registry, tmp_path):
    sources = [saved_adapter(tmp_path / f"run{i}") for i in range(6)]
    threads = [threading.Thread(target=registry.add, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.versions() == [f"v{i}" for i in range(1, 7)]


def test_active_pointer_is_atomic_and_persisted(registry, tmp_path):
    registry.add(saved_adapter(tmp_path / "run1"))
    registry.promote("v1")
    pointer = json.loads((registry.root / "active.json").read_text())
    assert pointer["version"] == "v1" and pointer["previous"] == BASE
    assert AdapterRegistry(registry.root).active == "v1"  # a new process (replica) sees it
    assert [p.name for p in registry.root.iterdir() if p.is_file()] == ["active.json"]  # no temp files left


def test_promote_archives_the_previous_version(registry, tmp_path):
    for i in (1, 2):
        registry.add(saved_adapter(tmp_path / f"run{i}"))
    registry.promote("v1")
    registry.promote("v2")
    assert [(i.version, i.status) for i in registry.history()] == [("v1", "archived"), ("v2", "active")]


def test_rollback_to_base_and_back(registry, tmp_path):
    registry.add(saved_adapter(tmp_path / "run1"))
    registry.add(saved_adapter(tmp_path / "run2"))
    registry.promote("v1")
    registry.promote("v2")
    assert registry.rollback() == "v1" and registry.active == "v1"  # default: the previous one
    assert registry.rollback(BASE) == BASE and registry.active == BASE
    assert all(i.status != "active" for i in registry.history())
    assert registry.rollback("v2") == "v2" and registry.info("v2").status == "active"
    assert (registry.root / "v1").is_dir()  # rollback moves a pointer, nothing is deleted


def test_reject_keeps_the_version_and_records_why(registry, tmp_path):
    registry.add(saved_adapter(tmp_path / "run1"), metrics={"holdout_loss": 1.5})
    info = registry.reject("v1", {"gate": "held-out loss 1.20 → 1.50"})
    assert info.status == "rejected" and info.metrics == {"holdout_loss": 1.5, "gate": "held-out loss 1.20 → 1.50"}
    assert registry.info("v1").status == "rejected" and registry.active == BASE
    registry.add(saved_adapter(tmp_path / "run2"))
    registry.promote("v2")
    with pytest.raises(ValueError, match="active"):
        registry.reject("v2")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "adapter_config.json").unlink(), "adapter_config.json is missing"),
        (lambda d: (d / "adapter_config.json").write_text("{not json"), "adapter_config.json is unreadable"),
        (lambda d: (d / "adapter_model.safetensors").unlink(), "no weights"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\xff" * 12), "adapter_model.safetensors is unreadable"),
    ],
)
def test_a_corrupted_version_is_refused(registry, tmp_path, damage, message):
    registry.add(saved_adapter(tmp_path / "run1"))
    damage(registry.root / "v1")
    with pytest.raises(InvalidAdapterError, match=message):
        registry.promote("v1")
    assert registry.active == BASE


def test_missing_or_misnamed_versions_are_refused(registry, tmp_path):
    with pytest.raises(InvalidAdapterError, match="no directory"):
        registry.promote("v7")
    with pytest.raises(InvalidAdapterError, match="invalid version name"):
        registry.path("../etc")
    with pytest.raises(InvalidAdapterError, match="adapter_config.json is missing"):
        registry.add(tmp_path)  # not an adapter directory
    assert registry.versions() == []


def test_backup_active(registry, tmp_path):
    assert registry.backup_active(tmp_path / "backups") is None  # base model serves
    registry.add(saved_adapter(tmp_path / "run1"))
    registry.promote("v1")
    copy = registry.backup_active(tmp_path / "backups")
    assert copy.name.startswith("adapter-v1-") and (copy / "adapter_model.safetensors").is_file()
