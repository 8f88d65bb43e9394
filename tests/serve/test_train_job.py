"""The real Ray Train path: a TorchTrainer with one CPU worker fine-tunes the tiny model."""

import math
import uuid

import pytest

from echorag.learning import validate_adapter_dir
from echorag.learning.train_config import TrainConfig
from echorag.models.generation import LocalGenerator

pytestmark = pytest.mark.serve

CHATS = [
    [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    for q, a in [
        ("한글은 누가 만들었나요?", "한글은 세종대왕이 만들었습니다."),
        ("김치는 어떤 음식인가요?", "김치는 배추를 소금에 절여 양념한 발효 음식입니다."),
        ("제주도는 어디에 있나요?", "제주도는 한반도 남쪽 바다에 있는 섬입니다."),
        ("태권도는 어디에서 시작되었나요?", "태권도는 한국에서 시작된 무술입니다."),
        ("카드를 잃어버리면 어떻게 하나요?", "바로 카드사에 분실 신고를 해야 합니다."),
        ("서울의 명소는 어디인가요?", "서울에는 경복궁과 남산서울타워가 있습니다."),
    ]
]


def test_torch_trainer_run_saves_a_loadable_adapter_and_reports_every_step(ray_cluster, tiny_model_path, tmp_path):
    import ray

    from deployments.training import fit_lora
    from tests.serve.progress_actor import TrainingProgress

    name = f"test-progress-{uuid.uuid4().hex[:6]}"
    progress = TrainingProgress.options(name=name).remote()  # found by name, as the coordinator's
    run_name = f"test-run-{uuid.uuid4().hex[:6]}"
    config = TrainConfig(epochs=1, learning_rate=5e-3, batch_size=2, max_length=128)
    try:
        fit = fit_lora(tiny_model_path, CHATS, config, tmp_path / "runs", progress_actor=name, run_name=run_name)
        adapter = fit.adapter_dir

        assert adapter.is_dir() and adapter.is_relative_to(tmp_path / "runs" / run_name)
        validate_adapter_dir(adapter)
        generator = LocalGenerator(str(tiny_model_path))
        generator.load_adapter("trained", adapter)
        assert generator.generate([CHATS[0][:1]], adapters=["trained"], max_new_tokens=4)[0].completion_tokens > 0

        steps = ray.get(progress.steps.remote(run_name))
        assert [s.step for s in steps] == [1, 2, 3]  # 6 chats, batch 2, 1 epoch
        assert all(s.total_steps == 3 and s.epoch == 0 and math.isfinite(s.loss) and s.eta_s >= 0 for s in steps)
        assert steps[-1].progress == 1.0
        assert ray.get(progress.get.remote(run_name))["step"] == 3  # the last step, as the UI shows it
        assert fit.metrics["niceness"] == 19  # CPU training yields to serving from its first import
    finally:
        ray.kill(progress)
