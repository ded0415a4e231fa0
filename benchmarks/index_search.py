"""Image index search: exact numpy against approximate search (faiss IVF, usearch HNSW) at 10k and 1M vectors.

    python benchmarks/index_search.py [--sizes 10000 1000000] [--dim 256] [--queries 200] [--build-budget 150]

The vectors are synthetic but clustered like image embeddings (topics, clusters of varied spread inside them,
normalised), stored as float16 the way ``dcclip index build`` stores them; queries are fresh points of the same
distribution. Exact and faiss rows go through dcclip itself: an index directory is written, opened with
``ImageIndex.open`` and searched with ``ImageIndex.search`` (``exact=True`` for numpy); the faiss IVF is what
``dcclip index build --ann`` builds (``dcclip.runtime.index.build_ann``). usearch (HNSW over float16, its default
graph settings) is the other candidate. Recall@10 is against exact search over the same vectors; latency is one query
at a time (p50/p99). A build that runs past ``--build-budget`` seconds stops: its row gives the rate it reached, the
projected full build time (a lower bound: a graph gets slower to grow as it grows), and recall and latency over the
vectors it did index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result

COLUMNS = ["vectors", "method", "build_s", "built", "recall_at_10", "p50_ms", "p99_ms", "ann_mb", "load_avg_1m", "note"]
K = 10
FAISS = "faiss IVF (dcclip --ann)"


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, topics: int = 100) -> np.ndarray:
    """``n`` normalised float16 vectors: clusters of about 50 around centres drawn near a few topics, with a spread
    that varies per cluster (tight near-duplicates to loose themes), generated in blocks to bound memory."""
    clusters = max(n // 50, 20)
    topic = rng.standard_normal((topics, dim), dtype=np.float32)
    centres = topic[rng.integers(0, topics, clusters)] + rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.5, 1.5, clusters).astype(np.float32) / np.float32(np.sqrt(dim))
    out = np.empty((n, dim), np.float16)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        which = rng.integers(0, clusters, size)
        block = centres[which] + rng.standard_normal((size, dim), dtype=np.float32) * spread[which, None]
        out[start : start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def write_index(root: Path, rows: np.ndarray, ann: bool) -> float:
    """A dcclip index directory over ``rows`` (no images); returns the seconds the approximate index took."""
    from dcclip.runtime.index import INDEX_FORMAT, INDEX_VERSION
    from dcclip.search.build import write_ann, write_jsonl, write_npy

    root.mkdir(parents=True)
    write_npy(root / "embeddings.npy", rows)
    write_jsonl(root / "items.jsonl", ({"id": i, "key": f"v{i}", "source": f"v{i}"} for i in range(len(rows))))
    started = time.perf_counter()
    entry = write_ann(root, rows) if ann else None
    seconds = time.perf_counter() - started
    manifest = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, "bundle_digest": "0" * 64, "skipped": 0}
    manifest.update(embed_dim=rows.shape[1], precision="fp32", count=len(rows), ann=entry)
    (root / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    return seconds


def latencies(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 in ms of one query at a time (after one warm-up call)."""
    search(queries[0])
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of the exact top-10 found."""
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def row(n: int, method: str, **figures: Any) -> dict[str, Any]:
    return {"vectors": n, "method": method, "load_avg_1m": round(os.getloadavg()[0], 2), **figures}


def dcclip_rows(rows: np.ndarray, queries: np.ndarray, timed: np.ndarray, work: Path) -> tuple[list[dict], np.ndarray]:
    """Exact numpy and faiss IVF through ImageIndex; returns the rows and the exact top-10 (the ground truth)."""
    from dcclip.runtime.index import ImageIndex

    n = len(rows)
    seconds = write_index(work / f"index-{n}", rows, ann=find_spec("faiss") is not None)
    index = ImageIndex.open(work / f"index-{n}")
    truth = np.array([[hit.id for hit in hits] for hits in index.search(queries, K, exact=True)])
    p50, p99 = latencies(lambda q: index.search(q, K, exact=True), timed)
    exact = row(n, "exact (numpy, float32 BLAS)", build_s=0.0, built=n, recall_at_10=1.0, p50_ms=p50, p99_ms=p99)
    if index.ann_kind is None:
        return [exact, row(n, FAISS, note="faiss-cpu not installed (pip install 'dcclip[index]')")], truth
    found = [[hit.id for hit in hits] for hits in index.search(queries, K)]
    p50, p99 = latencies(lambda q: index.search(q, K), timed)
    entry = index.manifest["ann"]
    ann_mb = (work / f"index-{n}" / "ann.faiss").stat().st_size / 2**20
    note = f"IVF fp16 nlist={entry['nlist']} nprobe={entry['nprobe']} (chosen)"
    faiss_row = row(n, FAISS, build_s=seconds, built=n, recall_at_10=recall(found, truth))
    faiss_row.update(p50_ms=p50, p99_ms=p99, ann_mb=ann_mb, note=note)
    return [exact, faiss_row], truth


def usearch_row(rows: np.ndarray, queries: np.ndarray, timed: np.ndarray, truth: np.ndarray, budget: float) -> dict:
    """usearch HNSW over float16, built in blocks until done or past the budget."""
    from usearch.index import Index

    from dcclip.runtime.index import exact_top_k

    n, dim = rows.shape
    index = Index(ndim=dim, metric="ip", dtype="f16")
    started, built, block = time.perf_counter(), 0, 10_000
    while built < n and time.perf_counter() - started < budget:
        index.add(np.arange(built, min(built + block, n)), rows[built : built + block], threads=os.cpu_count() or 1)
        built = min(built + block, n)
    seconds = time.perf_counter() - started
    if built < n:  # compare with exact search over what was indexed
        part = np.ascontiguousarray(rows[:built], dtype=np.float32)
        truth = np.array([ids for ids, _ in exact_top_k(part, queries, K)])
    found = [list(map(int, index.search(q, K).keys)) for q in queries]
    p50, p99 = latencies(lambda q: index.search(q, K), timed)
    note = "HNSW f16, default graph" if built == n else f"stopped at {built} after {seconds:.0f} s; figures for those"
    projected = seconds * n / built
    result = row(n, "usearch HNSW", build_s=projected, built=built, recall_at_10=recall(found, truth))
    result.update(p50_ms=p50, p99_ms=p99, ann_mb=index.memory_usage / 2**20, note=note)
    return result


def measure(n: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every method at one collection size."""
    rng = np.random.default_rng(args.seed)
    data = clustered_vectors(n + args.queries, args.dim, rng)
    rows, queries = data[:n], data[n:].astype(np.float32)
    timed = queries[: args.timed_queries]
    results, truth = dcclip_rows(rows, queries, timed, work)
    try:
        results.append(usearch_row(rows, queries, timed, truth, args.build_budget))
    except ImportError:
        results.append(row(n, "usearch HNSW", note="usearch not installed"))
    for result in results:
        print(json.dumps(result), flush=True)
    return results


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for package in ("faiss-cpu", "usearch", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200, help="queries for recall@10")
    parser.add_argument("--timed-queries", type=int, default=100, help="single queries timed for p50/p99")
    parser.add_argument("--build-budget", type=float, default=150.0, help="seconds a usearch build may run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dcclip-index-bench-") as tmp:
        for n in args.sizes:
            results += measure(n, args, Path(tmp))
    command = "python benchmarks/index_search.py" + "".join(f" {a}" for a in sys.argv[1:])
    payload = {"results": results, "settings": vars(args), "libraries": versions()}
    payload["seconds"] = round(time.perf_counter() - started, 1)
    write_result("index_search", payload, markdown_table(results, COLUMNS), command)
    print(markdown_table(results, COLUMNS))


if __name__ == "__main__":
    main()
