"""What a training worker or the gate's evaluation on another node reads: the active
adapter through the registry URI (not the head's cache), the run's checkpoint on the
shared run storage, the base model by its spec; and where runs are stored by default."""

import json
from pathlib import Path

import pytest

from echorag.config import load_settings


def _adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4}), encoding="utf-8")
    header = json.dumps({}).encode()
    (path / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_run_storage_defaults_beside_shared_adapters_else_in_the_data_dir(tmp_path):
    assert load_settings(data_dir=tmp_path).train_storage_root == tmp_path / "training" / "ray"
    shared = load_settings(data_dir=tmp_path, adapters_uri="s3://bucket/echorag/adapters/")
    assert shared.train_storage_root == "s3://bucket/echorag/adapters/.train-runs"
    explicit = load_settings(adapters_uri="file:///mnt/a", train_storage_uri="gs://b/train")
    assert explicit.train_storage_root == "gs://b/train"


def test_worker_resources_come_from_json_in_the_environment(monkeypatch):
    monkeypatch.setenv("ECHORAG_FINETUNE_WORKER_RESOURCES", '{"echorag_train": 1}')
    assert load_settings().finetune_worker_resources == {"echorag_train": 1.0}


def test_the_active_version_is_read_through_the_registry_uri_on_each_node(tmp_path, monkeypatch):
    from deployments.training import RegistryVersion, adapter_here
    from echorag.learning.registry import AdapterRegistry

    uri = f"file://{tmp_path}/shared/adapters"
    AdapterRegistry(uri, cache_dir=tmp_path / "head-cache").add(_adapter(tmp_path / "trained"))
    # Another node: its own temp dir, so its own cache; the head's cache is not there.
    (tmp_path / "node-tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    found = adapter_here(RegistryVersion(uri, "v1"), tmp_path / "scratch")
    assert found.is_relative_to(tmp_path / "node-tmp") and (found / "adapter_config.json").is_file()
    assert adapter_here(None) is None
    assert adapter_here(str(tmp_path / "trained")) == tmp_path / "trained"


def test_a_checkpoint_is_read_in_place_when_local_and_downloaded_otherwise(tmp_path):
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from deployments.training import adapter_here

    local = _adapter(tmp_path / "run" / "adapter")
    assert adapter_here(Checkpoint.from_directory(str(local))) == local
    # A file system that is not local to this node (a SubTreeFileSystem stands in for S3).
    remote = Checkpoint(path="run/adapter", filesystem=pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    copied = adapter_here(remote, tmp_path / "scratch" / "adapter")
    assert copied == tmp_path / "scratch" / "adapter" and (copied / "adapter_config.json").is_file()


def test_the_base_model_is_resolved_again_where_the_head_path_is_missing(tmp_path, monkeypatch):
    import deployments.training as training

    assert training.base_here("kakaocorp/kanana", None) == "kakaocorp/kanana"
    assert training.base_here(str(tmp_path), {"spec": "auto", "models_dir": "x"}) == str(tmp_path)
    calls = []

    class Resolved:
        path = "/node/models/tiny-ko"

    monkeypatch.setattr(training, "resolve_generator", lambda spec, models: calls.append((spec, models)) or Resolved)
    assert training.base_here("/head/models/tiny-ko", {"spec": "auto", "models_dir": "/node/models"}) == Resolved.path
    assert calls == [("auto", Path("/node/models"))]


@pytest.mark.parametrize("uri", [False, True])
def test_a_finished_run_is_deleted_from_the_run_storage(tmp_path, uri):
    from deployments.training import delete_run

    (tmp_path / "echorag-run-1" / "adapter").mkdir(parents=True)
    (tmp_path / "echorag-run-1" / "adapter" / "x").write_text("x")
    (tmp_path / "echorag-run-2").mkdir()
    delete_run(f"file://{tmp_path}" if uri else tmp_path, "echorag-run-1")
    assert not (tmp_path / "echorag-run-1").exists() and (tmp_path / "echorag-run-2").exists()
    delete_run(tmp_path, "no-such-run")  # logged, not raised
