"""Offline answer evaluation (``echorag eval-answers``): the service's own code in one
process: chunking, e5, Chroma + BM25 retrieval, the answer selector and ``ChatPipeline``
over ``LocalServices``, so what it measures is what ``/chat`` answers.

Queries carry ``answer`` (a sentence) and/or ``answers`` (short acceptable strings); one
with ``"relevant_ids": []`` is unanswerable and should be declined.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from echorag.answering.extractive import ExtractiveGenerator
from echorag.answering.prompts import NO_ANSWER, build_messages
from echorag.answering.selector import AnswerSelector
from echorag.config import Settings
from echorag.evaluation.answer_metrics import abstained, citation_precision, contains, strip_citations, token_f1
from echorag.evaluation.retrieval import RetrievalBench
from echorag.retrieval.embedding import document_embedder
from echorag.serving.memory import SessionMemory
from echorag.serving.pipeline import ChatPipeline
from echorag.serving.routing import Answerer
from echorag.serving.schemas import ChatRequest
from echorag.serving.services import LocalServices
from echorag.types import Analysis, SearchResult

BACKENDS = ("extractive", "local", "openai")


def references(query: dict) -> list[str]:
    """Acceptable answers: the short spans, then the reference sentence."""
    refs = list(query.get("answers") or [])
    if query.get("answer"):
        refs.append(query["answer"])
    return refs


def containment_references(query: dict) -> list[str]:
    """What containment looks for: the short spans when there are, else the sentence."""
    return list(query.get("answers") or []) or ([query["answer"]] if query.get("answer") else [])


def select_split(queries: list[dict], split: str) -> list[dict]:
    """Queries of one half ("dev"/"test"); a query without a ``split`` is in every half."""
    if split == "all":
        return queries
    return [q for q in queries if q.get("split", split) == split]


def make_generator(backend: str, settings: Settings, model: str | None):
    if backend == "extractive":
        return ExtractiveGenerator.from_settings(settings)
    if backend == "local":  # what the service would run it on (echorag.models.engine)
        from echorag.models.engine import local_generator
        from echorag.models.resolution import resolve_generator

        return local_generator(resolve_generator(model or settings.generator_model, settings.models_dir), settings)
    if backend == "openai":
        from echorag.models.generation import OpenAIGenerator

        return OpenAIGenerator(settings.openai_api_key, settings.openai_base_url, model or settings.openai_model)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


@dataclass
class Case:
    """One query as retrieval left it: what every answering configuration starts from."""

    query: dict
    vector: np.ndarray
    results: list[SearchResult]
    analysis: Analysis
    messages: list[dict]
    retrieval_ms: float

    @property
    def answerable(self) -> bool:
        return bool(self.query.get("relevant_ids"))


def score(query: dict, results: list[SearchResult], text: str) -> dict:
    """Per-query metrics of one answer to ``query`` from these passages (``[n]`` = position)."""
    row = {"id": query.get("id"), "answer": text, "abstained": abstained(text)}
    if query.get("relevant_ids"):
        doc_ids = [r.metadata.get("doc_id") for r in results]
        row["contains"] = contains(text, containment_references(query))
        row["token_f1"] = token_f1(text, references(query))
        row["citation_precision"] = citation_precision(text, doc_ids, query["relevant_ids"])
    return row


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def summarise(rows: list[dict], latencies: list[float], retrieval: list[float]) -> dict:
    answerable = [r for r in rows if "contains" in r]
    unanswerable = [r for r in rows if "contains" not in r]
    answered = [r for r in answerable if not r["abstained"]]
    lengths = [len(strip_citations(r["answer"])) for r in answered]
    return {
        "answerable": {
            "contains": _mean([float(r["contains"]) for r in answerable]),
            "token_f1": _mean([r["token_f1"] for r in answerable]),
            # Over the answers that cite something.
            "citation_precision": _mean([r["citation_precision"] for r in answerable]),
            "abstained": _mean([float(r["abstained"]) for r in answerable]),
            "answer_chars": statistics.median(lengths) if lengths else None,
        },
        "unanswerable": {"abstained": _mean([float(r["abstained"]) for r in unanswerable])},
        # The answering stage (evidence gate + backend); retrieval (query embedding + search) apart.
        "latency_ms": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95)},
        "retrieval_ms": {"p50": _percentile(retrieval, 50), "p95": _percentile(retrieval, 95)},
        "queries": {"answerable": len(answerable), "unanswerable": len(unanswerable), "total": len(rows)},
    }


class AnswerBench:
    """Index a corpus once (as ``RetrievalBench``), then ask questions through the service's
    pipeline (``ask``), or retrieve and analyse them for benches that compare answerers or
    selectors on the same retrieval (``prepare``)."""

    def __init__(self, corpus: list[dict], settings: Settings, progress: bool = True, embedder=None,
                 generator=None, selector: AnswerSelector | None = None) -> None:
        self.settings = settings
        self.embedder = embedder or document_embedder(settings)
        self.retrieval = RetrievalBench(corpus, settings, progress, embedder=self.embedder)
        self.retriever = self.retrieval.retriever
        if selector is not None:
            self.retriever.selector = selector
        self.generator = generator or ExtractiveGenerator.from_settings(settings)
        services = LocalServices(settings, self.embedder, self.retriever, self.generator)
        self.pipeline = ChatPipeline(services, SessionMemory(settings.memory_turns),
                                     Answerer(self.generator.name, self.generator.kind))

    def ask(self, queries: list[dict], progress: bool = True) -> dict:
        """Each query as a new user's first message through ``ChatPipeline``; the report of
        ``summarise`` with every row."""

        async def answer_all() -> list:
            answers = []
            for i, query in enumerate(tqdm(queries, desc=f"asking ({self.generator.kind})", unit="q",
                                           disable=not progress)):
                answers.append(await self.pipeline.chat(
                    ChatRequest(message=query["query"], user_id=f"eval-{i}", session_id=f"eval-{i}")))
            await self.pipeline.remembered()
            return answers

        rows, latencies, retrieval = [], [], []
        for query, response in zip(queries, asyncio.run(answer_all())):
            rows.append(score(query, response.search_results, response.response))
            latencies.append((response.timing.generation or 0.0) * 1000)
            retrieval.append((response.timing.embedding + response.timing.retrieval) * 1000)
        report = summarise(rows, latencies, retrieval)
        report["rows"] = rows
        return report

    def prepare(self, queries: list[dict], progress: bool = True) -> list[Case]:
        """Each query's retrieval and analysis, as the pipeline's retriever call gives them."""
        s, cases = self.settings, []
        for query in tqdm(queries, desc="retrieving", unit="q", disable=not progress, leave=False):
            t0 = time.perf_counter()
            vector = self.embedder.embed_queries([query["query"]])[0]
            context = self.retriever.answer_context(query["query"], vector, "eval", s)
            elapsed = (time.perf_counter() - t0) * 1000
            messages = build_messages(query["query"], context.results, [])
            cases.append(Case(query, vector, context.results, context.analysis, messages, elapsed))
        return cases

    def run(self, cases: list[Case], generator, progress: bool = True) -> dict:
        """Answer prepared cases with another backend, as the pipeline would: ``NO_ANSWER``
        where the selector abstains, else the backend."""
        rows, latencies = [], []
        for case in tqdm(cases, desc=f"answering ({generator.kind})", unit="q", disable=not progress):
            t0 = time.perf_counter()
            if case.analysis.abstain:
                text = NO_ANSWER
            else:
                out = generator.generate([case.messages], max_new_tokens=self.settings.max_new_tokens,
                                         temperature=self.settings.temperature, analyses=[case.analysis])[0]
                text = out.text.strip()
            latencies.append((time.perf_counter() - t0) * 1000)
            rows.append(score(case.query, case.results, text))
        report = summarise(rows, latencies, [c.retrieval_ms for c in cases])
        report["rows"] = rows
        return report

    def close(self) -> None:
        self.retrieval.close()
        if hasattr(self.generator, "close"):  # an engine's processes (echorag.models.engine)
            self.generator.close()
