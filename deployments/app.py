"""The EchoRAG application graph: ``serve run serve_config.yaml`` builds it here.

Resources: on a cluster with GPUs the generator (and a ``kanana`` embedder) get a
GPU; on CPU-only machines every deployment asks for a fraction of a CPU so the
whole graph schedules on a 2-core laptop. Where a teacher answers (extractive, openai),
a ``Student`` deployment serves the fine-tuned versions to the canary's sessions. ``serve_config.yaml`` may override any
of these options per deployment.
"""

from __future__ import annotations

import os

import ray
from ray.serve import Application

from deployments.embedder import Embedder
from deployments.generator import Generator
from deployments.ingress import EchoRAGIngress
from deployments.retriever import Retriever
from echorag.config import load_settings
from echorag.models.resolution import has_teacher


def cluster_gpus() -> float:
    return ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0


def build_app(args: dict | None = None) -> Application:
    # Validated once, here: a bad setting fails `serve run`, not a replica, and every
    # replica receives the same typed object. Replicas may start in another working
    # directory: the data dir is pinned now.
    args = dict(args or {})
    args["data_dir"] = str(load_settings(**args).data_dir.resolve())
    settings = load_settings(**args)
    gpus = cluster_gpus() if settings.generator_backend == "local" else 0.0
    generator = Generator.options(
        ray_actor_options={"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": 0.5}
    ).bind(settings)
    threads = str(settings.embedder_threads or os.cpu_count() or 1)  # read when the replica starts
    embedder = Embedder.options(
        ray_actor_options=({"num_cpus": 1, "num_gpus": 0.25} if gpus and settings.embedder == "kanana"
                           else {"num_cpus": 0.25}) | {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads}}}
    ).bind(settings)
    retriever = Retriever.bind(settings, embedder)
    student = None
    if has_teacher(settings):  # the student's versions answer the canary's share of sessions
        student = Generator.options(
            name="Student", ray_actor_options={"num_cpus": 1, "num_gpus": 1} if cluster_gpus() else {"num_cpus": 0.25}
        ).bind(settings, student=True)
    return EchoRAGIngress.bind(settings, embedder, retriever, generator, student)
