"""Shared test setup: offline, no telemetry, one tiny model per test session."""

import os
import tempfile
from pathlib import Path

# Nothing in the tests may reach a model hub, and Ray needs no auth token locally.
_HF_HOME = tempfile.mkdtemp(prefix="echorag-hf-")
os.environ.update(
    # Every application, cluster and offline evaluation of the session embeds the sample
    # documents once, as the applications of one machine do (echorag.retrieval.embedding.VectorCache).
    ECHORAG_DOCUMENT_VECTORS_DIR=tempfile.mkdtemp(prefix="echorag-vectors-"),
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=_HF_HOME,
    ANONYMIZED_TELEMETRY="False",
    TOKENIZERS_PARALLELISM="false",
    RAY_AUTH_MODE="disabled",
    RAY_USAGE_STATS_ENABLED="0",
)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """The project's tiny offline Korean model, built once for the whole session."""
    from echorag.models.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-ko")
