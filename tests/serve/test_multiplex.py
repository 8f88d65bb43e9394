"""Adapters chosen per request through Serve model multiplexing."""

import concurrent.futures
import uuid

import pytest

pytestmark = pytest.mark.serve


def _make_adapter(base_path, out_dir, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)


@pytest.fixture(scope="module")
def adapters(data_dir, tiny_model_path, tmp_path_factory):
    """Two random LoRA adapters registered as new versions (as a training run would)."""
    from echorag.learning.registry import AdapterRegistry

    registry = AdapterRegistry(data_dir / "adapters")
    versions = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"adapter-{seed}")
        _make_adapter(tiny_model_path, out, seed)
        versions.append(registry.add(out).version)
    return versions


def _ask(client, version):
    # A fresh user and session each time, so no memory makes the prompts differ.
    fresh = uuid.uuid4().hex
    body = {"message": "한글은 누가 만들었나요?", "user_id": fresh, "adapter_version": version}
    r = client.post("/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["adapter_version"] == version
    return r.json()["response"]


def test_each_request_gets_its_own_adapter_under_concurrency(client, adapters):
    versions = [*adapters, "base"]
    alone = {v: _ask(client, v) for v in versions}
    assert len(set(alone.values())) == 3, alone  # three different models answer differently

    # Mixed concurrent traffic: every answer equals that version's answer when asked alone.
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        together = list(pool.map(lambda v: (v, _ask(client, v)), versions * 3))
    for version, answer in together:
        assert answer == alone[version], version


def test_unknown_adapter_version_is_a_clear_error(client):
    r = client.post("/chat", json={"message": "안녕하세요", "adapter_version": "v999"})
    assert r.status_code == 404
    assert "v999" in r.json()["error"]
