"""HTTP serving load: req/s and p50/p99 latency of POST /v1/classify at concurrency 8 vs in-process classify.

    python benchmarks/serve_load.py [--bundle DIR] [--duration 15] [--max-requests 20000] [--concurrency 8]

Without --bundle, the demo student (untrained, 64 px) is exported to a temporary fp32 bundle first. The server is a
subprocess on 127.0.0.1 started through ``dcclip.serve.serve`` (one worker); the load is one JPEG and 10 labels per
request (label embeddings are cached after the first call), sent by httpx from threads, bounded by both time and
request count. The same image and labels through ``ZeroShotClassifier.classify`` in this process give the baseline,
so the table shows what HTTP adds to inference. The server is always killed at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.server_process import free_port, wait_healthy

LABELS = ["cat", "dog", "car", "tree", "house", "red circle", "blue square", "green triangle", "bird", "boat"]
LANGS = ["en", "zh", "ja", "ko", "fr", "de", "es", "ru", "ar", "hi"]
IMAGE_SIZE = 224
STARTUP_SECONDS = 120
COLUMNS = ["mode", "ort_threads", "concurrency", "requests", "errors", "req_per_s", "p50_ms", "p99_ms"]
COLUMNS += ["rss_before_mb", "rss_after_mb", "client_cpu_pct", "load_avg_1m"]


def export_demo_bundle(root: Path) -> Path:
    """Export the demo student with random weights (64 px, embed dim 128) as an fp32 bundle under ``root``."""
    import torch

    from dcclip.export.bundle import export_bundle
    from dcclip.models.students import build_student, save_student_checkpoint
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer
    from dcclip.runtime.classifier import DEFAULT_TEMPLATES

    texts = [t.replace("{c}", label) for label in LABELS for ts in DEFAULT_TEMPLATES.values() for t in ts]
    tok_path = train_tokenizer(texts * 4, 600, root / "tokenizer")
    tok = TextTokenizer.from_path(tok_path)
    torch.manual_seed(0)
    student = build_student("demo-student", embed_dim=128, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    checkpoint = save_student_checkpoint(root / "run", 1, student, tok_path, LANGS, max_text_len=48)
    export_bundle(checkpoint, root / "bundle", precision="fp32")
    return root / "bundle"


def sample_image() -> bytes:
    """A 224x224 JPEG with some structure (what a client would upload)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(bundle: Path, port: int, threads: int | None, log: Path) -> subprocess.Popen:
    """``serve(bundle, port=port, workers=1, threads=threads)`` in a subprocess bound to 127.0.0.1."""
    code = (
        "from pathlib import Path; from dcclip.serve import serve; "
        f"serve(Path({str(bundle)!r}), host='127.0.0.1', port={port}, workers=1, threads={threads!r})"
    )
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll /healthz until it answers (bounded in time), failing fast if the server died."""
    wait_healthy(url, process, log, STARTUP_SECONDS, interval=0.2)


def stop(process: subprocess.Popen) -> None:
    """Terminate the server, killing it if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def run_load(call: Callable[[], bool], concurrency: int, duration: float, max_requests: int) -> dict[str, Any]:
    """Call ``call`` from ``concurrency`` threads until ``duration`` s or ``max_requests`` calls; latency figures."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            with lock:
                if len(latencies) + errors >= max_requests:
                    return
            start = time.perf_counter()
            ok = call()
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1

    load_before = os.getloadavg()[0]
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - wall_start
    lat_ms = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + errors,
        "errors": errors,
        "seconds": round(wall, 2),
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "client_cpu_pct": 100 * (time.process_time() - cpu_start) / wall,
        "load_avg_1m": round(max(load_before, os.getloadavg()[0]), 2),
    }


def in_process(bundle: Path, image: bytes, threads: int | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The baseline: ZeroShotClassifier.classify on the same image and labels, 1 thread and ``concurrency`` threads."""
    from dcclip.runtime.classifier import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_bundle(bundle, threads=threads)
    call = lambda: bool(classifier.classify([image], LABELS, "en", top_k=5))  # noqa: E731
    for _ in range(args.warmup):
        call()
    rows = []
    for concurrency in sorted({1, args.concurrency}):
        row = run_load(call, concurrency, args.duration, args.max_requests)
        rows.append({"mode": "in-process classify", "ort_threads": _threads(threads), **row})
    return rows


def over_http(bundle: Path, image: bytes, threads: int | None, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Start the server, warm it up, load it, read its RSS before and after, stop it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(bundle, port, threads, log)
    try:
        wait_ready(url, process, log)
        local = threading.local()

        def call() -> bool:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(base_url=url, timeout=10.0)
            files = {"images": ("image.jpg", image, "image/jpeg")}
            try:
                response = client.post("/v1/classify", files=files, data={"labels": ",".join(LABELS)})
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        for _ in range(args.warmup):
            call()
        before = rss_mb(process.pid)
        row = run_load(call, args.concurrency, args.duration, args.max_requests)
        after = rss_mb(process.pid)
    finally:
        stop(process)
    return {"mode": "HTTP /v1/classify", "ort_threads": _threads(threads), **row} | {
        "rss_before_mb": before,
        "rss_after_mb": after,
    }


def serving_stack() -> dict[str, str]:
    """Versions of the HTTP stack, and which HTTP parser uvicorn picks ('auto': httptools when installed, else h11)."""
    from importlib import metadata
    from importlib.util import find_spec

    versions = {}
    for package in ("fastapi", "starlette", "uvicorn", "python-multipart", "httpx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    versions["http_parser"] = "httptools" if find_spec("httptools") else "h11"
    versions["event_loop"] = "uvloop" if find_spec("uvloop") else "asyncio"
    return versions


def _parse_threads(text: str) -> int | None:
    """``default`` (onnxruntime decides) or a positive thread count."""
    if text == "default":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"threads must be a positive integer or 'default', got {text!r}")
    return int(text)


def _threads(threads: int | None) -> str:
    """How the onnxruntime thread count reads in the table."""
    return "default" if threads is None else str(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: export the demo student)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per configuration")
    parser.add_argument("--max-requests", type=int, default=20000, help="request cap per configuration")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--threads",
        type=_parse_threads,
        nargs="+",
        default=[1, None],
        help="onnxruntime intra-op threads to compare: integers and/or 'default' (default: 1 default)",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="dcclip-serve-bench-") as tmp:
        start = time.perf_counter()
        bundle = args.bundle or export_demo_bundle(Path(tmp))
        export_s = None if args.bundle else round(time.perf_counter() - start, 1)
        image = sample_image()
        rows = []
        for threads in args.threads:
            rows += in_process(bundle, image, threads, args)
            rows.append(over_http(bundle, image, threads, args, Path(tmp) / f"server-{threads}.log"))

    table = markdown_table(rows, COLUMNS)
    print(table)
    payload = {
        "bundle": str(args.bundle) if args.bundle else "demo-student (untrained, 64 px, fp32), exported here",
        "export_seconds": export_s,
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} JPEG, {len(image)} bytes",
        "labels": len(LABELS),
        "duration_s": args.duration,
        "targets": {"req_per_s": 200, "p99_ms": 25, "concurrency": 8},
        "serving_stack": serving_stack(),
        "rows": rows,
    }
    write_result("serve_load", payload, table, " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
