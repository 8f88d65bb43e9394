"""One settings object for the whole service.

Environment names of the original project (``FINETUNE_BATCH_SIZE``, ``LOG_LEVEL``…)
keep working; everything new is ``ECHORAG_<FIELD>``. ``serve_config.yaml`` passes
per-application overrides as keyword arguments (field names).
"""

from __future__ import annotations

from functools import cached_property
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Ray Train's runs beside shared adapter versions (the registry lists only v1, v2, ...).
TRAIN_RUNS_DIR = ".train-runs"


def _env(field: str, *legacy: str) -> AliasChoices:
    """Accept the field name (for serve_config args), the legacy names and ECHORAG_<FIELD>."""
    return AliasChoices(field, *legacy, f"ECHORAG_{field.upper()}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECHORAG_", populate_by_name=True, extra="ignore", frozen=True
    )

    # Storage and access
    data_dir: Path = Field(Path("./data"), validation_alias=_env("data_dir"))
    admin_token: str | None = Field(None, validation_alias=_env("admin_token"))
    # Identity (echorag.identity.access): "open" = no user identity, every session private;
    # "api_keys" = per-user keys issued by the admin; "trusted_header" = an authenticating
    # proxy names the user in `trusted_user_header`, believed only from `trusted_proxies`.
    auth_mode: Literal["open", "api_keys", "trusted_header"] = Field("open", validation_alias=_env("auth_mode"))
    trusted_user_header: str = Field(
        "X-Forwarded-User", min_length=1, max_length=100, validation_alias=_env("trusted_user_header")
    )
    trusted_proxies: tuple[str, ...] = Field(
        (), validation_alias=_env("trusted_proxies"),
        description="Addresses or networks (10.0.0.5, 10.0.0.0/24) of the proxies trusted_header believes",
    )
    session_secret: str | None = Field(
        None, min_length=16, validation_alias=_env("session_secret"), repr=False,
        description="Signs session ids; default: a random one the collector keeps in its database",
    )
    chroma_host: str | None = Field(None, validation_alias=_env("chroma_host"))
    chroma_port: int = Field(8000, validation_alias=_env("chroma_port"))
    adapters_uri: str | None = Field(
        None, validation_alias=_env("adapters_uri"),
        description="Where adapter versions live when not in data_dir/adapters: a shared path or a storage "
        "URI every node reads (file:///mnt/shared/adapters, s3://bucket/adapters, gs://bucket/adapters)",
    )
    train_storage_uri: str | None = Field(
        None, validation_alias=_env("train_storage_uri"),
        description="Ray Train's run storage (checkpoints), a path or URI every node reaches; default: "
        f"<adapters_uri>/{TRAIN_RUNS_DIR} when adapters are shared, else data_dir/training/ray (one machine)",
    )

    # Models. "local": generator_model (auto = KANANA when it loads, else the extractive
    # answerer; "tiny" = the tiny offline model); "extractive": quotes of the documents, no
    # language model; "openai": any OpenAI-compatible server.
    generator_backend: Literal["local", "extractive", "openai"] = Field(
        "local", validation_alias=_env("generator_backend")
    )
    generator_model: str = Field("auto", validation_alias=_env("generator_model"))
    # The local model the learning loop fine-tunes where a teacher (extractive, openai)
    # answers chat: a hub id or a directory, e.g. the small student of
    # `echorag build-tiny-model --size small`. Unset: generator_model's local model
    # (KANANA where it loads, else the tiny model).
    student_model: str | None = Field(None, validation_alias=_env("student_model"))
    openai_api_key: str | None = Field(
        None, validation_alias=_env("openai_api_key", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(None, validation_alias=_env("openai_base_url"))
    openai_model: str = Field("gpt-4o-mini", validation_alias=_env("openai_model"))
    embedder: Literal["e5", "kanana"] = Field("e5", validation_alias=_env("embedder"))
    embedder_model: str = Field("auto", validation_alias=_env("embedder_model"))
    embedder_pooling: Literal["mean", "input_embedding_mean"] = Field(
        "mean", validation_alias=_env("embedder_pooling")
    )
    # OpenMP threads of the embedder replica (e5's C engine; torch for kanana). Ray gives
    # a fractional-CPU replica one thread, which made adding documents 1.7x slower on 2
    # cores. 0: every core of the machine that builds the application.
    embedder_threads: int = Field(0, ge=0, validation_alias=_env("embedder_threads"))
    # Document vectors on disk by text (echorag.retrieval.embedding.VectorCache): adding a document
    # again, after a restart or to another application on the machine, embeds nothing.
    document_vectors_dir: Path | None = Field(
        None, validation_alias=_env("document_vectors_dir"), description="default: data_dir/vectors")
    device: str = Field("auto", validation_alias=_env("device"))
    # Secret orthogonal rotation of every stored and query vector (echorag.retrieval.rotation):
    # retrieval is unchanged, leaked vectors no longer invert. Changing it means re-index.
    vector_rotation_key: str | None = Field(None, validation_alias=_env("vector_rotation_key"), repr=False)
    # What runs local models (echorag.models.engine): "auto" = vLLM where it is installed (continuous
    # batching, one LoRA per version, prefix caching), else transformers.
    engine: Literal["auto", "vllm", "transformers"] = Field("auto", validation_alias=_env("engine"))
    # Adapter versions in one batch (Serve multiplexing keeps 4 models a replica, base among them).
    engine_max_loras: int = Field(4, ge=1, le=64, validation_alias=_env("engine_max_loras"))
    engine_max_lora_rank: int = Field(16, ge=1, le=512, validation_alias=_env("engine_max_lora_rank"))
    engine_max_cpu_loras: int = Field(8, ge=1, le=256, validation_alias=_env("engine_max_cpu_loras"))
    engine_max_model_len: int | None = Field(4096, ge=256, validation_alias=_env("engine_max_model_len"))
    # KV cache: whole GiB of host memory on CPU; the share of GPU memory on GPU (the rest
    # leaves room for a Ray Train worker on a single-GPU machine).
    engine_kv_cache_gib: int = Field(1, ge=1, le=1024, validation_alias=_env("engine_kv_cache_gib"))
    engine_gpu_memory_utilization: float = Field(
        0.6, gt=0, le=0.95, validation_alias=_env("engine_gpu_memory_utilization"))
    max_new_tokens: int = Field(128, ge=1, le=4096, validation_alias=_env("max_new_tokens"))
    temperature: float = Field(0.0, ge=0.0, le=2.0, validation_alias=_env("temperature"))

    # Retrieval
    top_k: int = Field(5, ge=1, le=50, validation_alias=_env("top_k"))
    chunk_size: int = Field(500, ge=50, validation_alias=_env("chunk_size"))
    chunk_overlap: int = Field(100, ge=0, validation_alias=_env("chunk_overlap"))
    # Min-max ("score") fusion of exact BM25 and dense scores of every candidate, BM25 weight
    # 0.4, dense scored half on the chunk and half on its best sentence: the best mean nDCG@10
    # over the three evaluation sets (bench/results/retrieval_tuning.json,
    # `python bench/retrieval_tune.py`). "zscore" standardises instead; "rrf" is weighted RRF.
    fusion: Literal["rrf", "score", "zscore"] = Field("score", validation_alias=_env("fusion"))
    bm25_weight: float = Field(0.4, ge=0.0, validation_alias=_env("bm25_weight"))
    dense_weight: float = Field(0.6, ge=0.0, validation_alias=_env("dense_weight"))
    # Share of the dense score taken by the query's best-matching sentence of a chunk
    # (0 = chunk vector only; the retriever then embeds no sentences at indexing).
    sentence_weight: float = Field(0.5, ge=0.0, le=1.0, validation_alias=_env("sentence_weight"))
    memory_top_k: int = Field(2, ge=0, le=20, validation_alias=_env("memory_top_k"))
    # A retriever replica holds BM25 and a bounded cache of the chunk and sentence vectors its
    # searches read from Chroma (bench/corpus_scale.py); the corpus never has to fit in it.
    retriever_cache_mb: float = Field(256.0, ge=0, validation_alias=_env("retriever_cache_mb"))
    bm25_snapshots_dir: Path | None = Field(
        None, validation_alias=_env("bm25_snapshots_dir"),
        description="Where retriever replicas leave the BM25 index they built, so the next one on this "
        "node (or on any node, on a shared mount) loads it instead of rebuilding; default: data_dir/bm25",
    )

    # Answers. When no retrieved sentence answers the question (the answer selector's own
    # threshold, echorag.answering.selector) no backend is called and the answer is NO_ANSWER.
    # The extractive backend quotes at most this many sentences.
    extractive_max_sentences: int = Field(3, ge=1, le=10, validation_alias=_env("extractive_max_sentences"))

    # Chat limits and short-term memory
    max_message_chars: int = Field(4000, ge=1, validation_alias=_env("max_message_chars"))
    memory_turns: int = Field(5, ge=0, le=100, validation_alias=_env("memory_turns"))

    # HTTP guard rails. The rate limit is per user id (per address and session for
    # anonymous callers) and per ingress replica; 0 turns it off.
    rate_limit_per_minute: float = Field(120.0, ge=0, validation_alias=_env("rate_limit_per_minute"))
    rate_limit_burst: int = Field(30, ge=1, validation_alias=_env("rate_limit_burst"))
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, validation_alias=_env("max_body_bytes"))
    cors_origins: tuple[str, ...] = Field(
        (), validation_alias=_env("cors_origins"),
        description="Origins allowed to call the API from a browser; none beyond the same origin by default",
    )

    # Learning loop (original names first)
    finetune_enabled: bool = Field(
        True, validation_alias=_env("finetune_enabled", "FINETUNE_ENABLED"),
        description="Master switch of fine-tuning (manual runs too).",
    )
    finetune_batch_size: int = Field(
        100, ge=1, le=1_000_000, validation_alias=_env("finetune_batch_size", "FINETUNE_BATCH_SIZE"),
        description="New turns that trigger a run.",
    )
    finetune_auto_trigger: bool = Field(
        True, validation_alias=_env("finetune_auto_trigger", "FINETUNE_AUTO_TRIGGER"),
        description="Start a run by itself when a batch has accumulated.",
    )
    finetune_webhook_url: str | None = Field(
        None, validation_alias=_env("finetune_webhook_url", "FINETUNE_WEBHOOK_URL")
    )
    finetune_webhook_format: Literal["auto", "slack", "discord", "generic"] = Field(
        "auto", validation_alias=_env("finetune_webhook_format"),
        description="Payload shape; auto: Slack or Discord by the URL's host, generic JSON otherwise",
    )
    finetune_epochs: int = Field(2, ge=1, le=100, validation_alias=_env("finetune_epochs", "FINETUNE_EPOCHS"))
    conversation_collection_enabled: bool = Field(
        True, validation_alias=_env("conversation_collection_enabled", "CONVERSATION_COLLECTION_ENABLED"),
        description="Store conversations at all.",
    )
    # Training run (the original's defaults: r=16, alpha=32, 2 epochs, lr 1e-4)
    finetune_learning_rate: float = Field(1e-4, gt=0, le=1, validation_alias=_env("finetune_learning_rate"))
    finetune_lora_r: int = Field(16, ge=1, le=1024, validation_alias=_env("finetune_lora_r"))
    finetune_lora_alpha: int = Field(32, ge=1, validation_alias=_env("finetune_lora_alpha"))
    finetune_lora_dropout: float = Field(0.05, ge=0, lt=1, validation_alias=_env("finetune_lora_dropout"))
    finetune_target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), validation_alias=_env("finetune_target_modules")
    )
    finetune_max_length: int = Field(2048, ge=16, validation_alias=_env("finetune_max_length"))
    finetune_train_batch_size: int = Field(4, ge=1, validation_alias=_env("finetune_train_batch_size"))
    finetune_grad_accum: int = Field(1, ge=1, validation_alias=_env("finetune_grad_accum"))
    finetune_replay_fraction: float = Field(
        0.25, ge=0, le=10, validation_alias=_env("finetune_replay_fraction"),
        description="Earlier turns mixed in, per new turn.",
    )
    finetune_holdout_fraction: float = Field(
        0.2, ge=0, lt=1, validation_alias=_env("finetune_holdout_fraction"),
        description="New turns kept out of training for the gate (0: no gate).",
    )
    finetune_gate_tolerance: float = Field(
        0.0, gt=-1, le=10, validation_alias=_env("finetune_gate_tolerance"),
        description="Relative: 0.02 promotes a candidate up to 2 % worse on held-out turns.",
    )
    # Which labels train (echorag.learning.dataset): "teacher" = a teacher's answers, 👍 and
    # corrections; "rated" = 👍 and corrections; "corrected"; "all" = the student's own too.
    finetune_train_on: Literal["teacher", "rated", "corrected", "all"] = Field(
        "teacher", validation_alias=_env("finetune_train_on"),
        description="Which labels train: teacher (a teacher's answers, 👍, corrections), rated, corrected, all.",
    )
    finetune_correction_weight: int = Field(3, ge=1, le=100, validation_alias=_env("finetune_correction_weight"))
    # The gate: candidate vs active on the newest `pool_size` turns of the evaluation pool,
    # by loss on the labels and by agreement (token F1) of greedy answers with them; no
    # promotion with fewer than `min_examples` pool turns.
    finetune_gate_pool_size: int = Field(64, ge=1, le=10_000, validation_alias=_env("finetune_gate_pool_size"))
    finetune_gate_min_examples: int = Field(
        20, ge=1, le=1_000_000, validation_alias=_env("finetune_gate_min_examples"),
        description="No promotion with fewer evaluation-pool turns.",
    )
    finetune_gate_agreement_tolerance: float = Field(
        0.02, ge=0, le=1, validation_alias=_env("finetune_gate_agreement_tolerance"),
        description="Absolute: a candidate may agree with the labels this much less than the active version.",
    )
    # Canary (echorag.serving.routing), where a teacher answers: this share of sessions (sticky) goes
    # to the student's newest promoted version until `POST /mlops/promote` moves it; a
    # promoted version whose gate agreement reaches `canary_graduate_at` takes all traffic.
    canary_fraction: float = Field(0.0, ge=0, le=1, validation_alias=_env("canary_fraction"))
    canary_graduate_at: float | None = Field(None, ge=0, le=1, validation_alias=_env("canary_graduate_at"))
    finetune_max_attempts: int = Field(
        3, ge=1, le=20, validation_alias=_env("finetune_max_attempts"),
        description="Tries per slice of data, the first included.",
    )
    finetune_retry_backoff_s: float = Field(
        30.0, ge=0, le=86_400, validation_alias=_env("finetune_retry_backoff_s"),
        description="Delay before the first retry (doubles).",
    )
    finetune_seed: int = Field(0, ge=0, validation_alias=_env("finetune_seed"))
    # Train workers: GPUs only where serving does not hold them; CPU workers otherwise.
    finetune_num_workers: int = Field(1, ge=1, validation_alias=_env("finetune_num_workers"))
    # Half a CPU, so a training worker still schedules beside the serving replicas on 2 cores.
    finetune_worker_cpus: float = Field(0.5, gt=0, validation_alias=_env("finetune_worker_cpus"))
    finetune_worker_gpus: float = Field(
        -1.0, validation_alias=_env("finetune_worker_gpus"),
        description="GPUs per training worker; -1: one when the cluster has a GPU serving does not hold, else 0",
    )
    finetune_worker_resources: dict[str, float] = Field(
        default_factory=dict, validation_alias=_env("finetune_worker_resources"),
        description='Custom Ray resources each training worker (and the gate\'s evaluation) asks for, as JSON: '
        '{"echorag_train": 1} trains on the nodes started with that resource; none: any node',
    )

    # Operations
    log_level: str = Field("INFO", validation_alias=_env("log_level", "LOG_LEVEL"))
    monitoring_export_metrics: bool = Field(
        True, validation_alias=_env("monitoring_export_metrics", "MONITORING_EXPORT_METRICS")
    )

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        try:
            networks = [ip_network(p.strip(), strict=False) for p in self.trusted_proxies]
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None
        if self.engine_max_lora_rank < self.finetune_lora_r:
            raise ValueError(f"engine_max_lora_rank ({self.engine_max_lora_rank}) must hold the adapters training "
                             f"writes (finetune_lora_r {self.finetune_lora_r})")
        if self.auth_mode == "trusted_header" and not networks:
            raise ValueError("auth_mode trusted_header needs trusted_proxies (the proxies' addresses)")
        return self

    @cached_property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @cached_property
    def document_vectors_root(self) -> Path:
        return self.document_vectors_dir or self.data_dir / "vectors"

    @cached_property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @cached_property
    def bm25_snapshots_root(self) -> Path:
        return self.bm25_snapshots_dir or self.data_dir / "bm25"

    @cached_property
    def adapters_root(self) -> str | Path:
        """The adapter registry's root: ``adapters_uri`` when set, else ``data_dir/adapters``."""
        return self.adapters_uri or self.adapters_dir

    @cached_property
    def train_storage_root(self) -> str | Path:
        """Where Ray Train keeps a run's checkpoints: ``train_storage_uri``; else beside the
        shared adapters (every node already reaches them); else, on one machine, the data dir."""
        if self.train_storage_uri:
            return self.train_storage_uri
        if self.adapters_uri:
            return f"{self.adapters_uri.rstrip('/')}/{TRAIN_RUNS_DIR}"
        return self.data_dir / "training" / "ray"

    @cached_property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"  # the conversation database's backups

    @cached_property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"  # exported training sets

    @cached_property
    def sqlite_path(self) -> Path:
        return self.data_dir / "echorag.sqlite"


def default_of(setting: str) -> Any:
    """A setting's default, for the plain configs built from settings (each default is
    written once, here)."""
    return Settings.model_fields[setting].default


def load_settings(**overrides) -> Settings:
    """Environment first, then explicit overrides (e.g. serve_config.yaml ``args``)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
