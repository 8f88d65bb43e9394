"""Unit fixtures around the tiny model, which ``tests/conftest.py`` builds once per session
(offline: that file sets HF_HUB_OFFLINE=1 and a throwaway HF_HOME before anything imports)."""

from pathlib import Path

import pytest

from tests.unit.loop_helpers import make, receiver  # noqa: F401  (the learning-loop fixtures)


@pytest.fixture(scope="session")
def models_dir(tiny_model_path: Path) -> Path:
    """A models directory that already holds the tiny model, so ``auto`` never rebuilds it."""
    from echorag.models.tiny_model import tiny_model_dir

    assert tiny_model_dir(tiny_model_path.parent) == tiny_model_path
    return tiny_model_path.parent


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model is all per-op overhead: extra threads only add contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
