"""HTTP serving load: req/s and p50/p99 latency of POST /v1/classify at concurrency 8, server settings side by side.

    python benchmarks/serve_load.py [--student mnv4s050-text4] [--precision auto|fp32|int8] [--bundle DIR]
        [--variants default batch=1 ort=0,batch=1 ...] [--rounds 2] [--rate 40]
        [--duration 12] [--concurrency 8]

Without --bundle, the registered student ``--student`` (random weights, its own image size, embed dim 512 as the real
teachers give it) is exported to a temporary bundle through ``export_bundle``, the path ``dcclip export`` takes;
``--precision auto`` times fp32 and int8 per tower there and the server loads what the manifest recommends.

Every variant is a server started through ``dcclip.serve.serve`` on 127.0.0.1 (a subprocess, killed at the end) with
the settings its spec names, every other one at serve's default (the spec ``default``: all of them): ``ort``
onnxruntime intra-op threads (0: onnxruntime's own choice, every core per session), ``inf`` requests running the model
at once (ServeLimits.max_concurrent_inference), ``proc`` uvicorn worker processes, ``batch``/``wait`` micro-batching
of the image tower (images per call, 1: off; milliseconds of gathering), ``client`` raw or httpx. Variants run in turn,
``--rounds`` times (alternating, so a neighbour's load on a shared machine falls on all of them), each round a fresh
server, the same bundle, image and labels: one JPEG and 10 labels per request (label embeddings cached after the
first call). Load: ``--concurrency`` closed-loop clients for ``--duration`` s (latency = concurrency / throughput
there), and with ``--rate`` also an open loop at that many req/s with at most ``--concurrency`` in flight (latency
counted from each request's scheduled time, so a server that falls behind shows it).

The raw client sends the same prebuilt HTTP/1.1 request over a kept-alive socket per thread and reads the answer
with a few string operations: it costs far less CPU than httpx on the same two cores, so more of them serve. Both
clients' CPU share is measured (process time of this process over the load), and so is the server's (/proc stat).
The server runs with ``server_timing``: every answer carries its stages (parse, queue for a worker thread, decode +
preprocess, label cache, model, JSON), and the table shows their means and what lies outside the handler (uvicorn's
HTTP, waiting for the event loop, the client). In-process ``classify`` on the same image and labels is the baseline.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
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
from _common import markdown_table, stop, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.server_process import free_port, wait_healthy

LABELS = ["cat", "dog", "car", "tree", "house", "red circle", "blue square", "green triangle", "bird", "boat"]
LANGS = ["en", "zh", "ja", "ko", "fr", "de", "es", "ru", "ar", "hi"]
IMAGE_SIZE = 224
EMBED_DIM = 512  # the real students take the teacher's width (ViT-B-32's 512)
STARTUP_SECONDS = 120
STAGES = ("parse", "queue", "decode", "labels", "model", "batch_wait", "image", "batch", "json", "handler")
COLUMNS = ["variant", "load", "round", "requests", "errors", "req_per_s", "p50_ms", "p99_ms", "server_cpu_pct"]
COLUMNS += ["server_cpu_ms_per_req", "client_cpu_ms_per_req", "parse", "queue", "decode", "labels", "model", "batch"]
COLUMNS += ["json", "outside", "load_avg_1m"]
SUMMARY_COLUMNS = ["variant", "load", "rounds", "req_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_req"]
SUMMARY_COLUMNS += ["req_per_s_range", "p99_ms_range", "load_avg_1m"]
VARIANT_KEYS = {"ort": "default", "inf": "default", "proc": "1", "batch": "default", "wait": "default", "client": "raw"}
DEFAULT_VARIANTS = ["ort=0,batch=1", "default", "batch=8,wait=2", "batch=1,inf=4", "batch=1,proc=2"]
DEFAULT_VARIANTS += ["batch=1,client=httpx"]  # docs/serving.md's table (there with --rounds 3 --duration 10 --rate 40)


# --------------------------------------------------------------------------------------------------------------------
# The bundle and the request
# --------------------------------------------------------------------------------------------------------------------


def export_student_bundle(root: Path, student: str, precision: str, embed_dim: int = EMBED_DIM) -> Path:
    """Export the registered ``student`` (random weights, its own image size) as a bundle under ``root``."""
    import torch

    from dcclip.export.bundle import export_bundle
    from dcclip.models.students import build_student, load_student_config, save_student_checkpoint
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer
    from dcclip.runtime.classifier import DEFAULT_TEMPLATES

    texts = [t.replace("{c}", label) for label in LABELS for ts in DEFAULT_TEMPLATES.values() for t in ts]
    tok_path = train_tokenizer(texts * 4, 600, root / "tokenizer")
    tok = TextTokenizer.from_path(tok_path)
    arch, _ = load_student_config(student)
    if arch["embed_dim"] != "teacher":  # an architecture with its own width keeps it
        embed_dim = arch["embed_dim"]
    torch.manual_seed(0)
    model = build_student(student, embed_dim=embed_dim, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    checkpoint = save_student_checkpoint(root / "run", 1, model, tok_path, LANGS, max_text_len=48)
    export_bundle(checkpoint, root / "bundle", precision="both" if precision == "int8" else precision)
    return root / "bundle"


def export_demo_bundle(root: Path) -> Path:
    """The demo student (64 px) as an fp32 bundle under ``root`` (benchmarks/request_memory.py)."""
    return export_student_bundle(root, "demo-student", "fp32", embed_dim=128)


def sample_image() -> bytes:
    """A 224x224 JPEG with some structure (what a client would upload)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def multipart_body(image: bytes) -> tuple[bytes, str]:
    """The classify form (one image, the labels) as a multipart body and its Content-Type."""
    boundary = "dcclip-serve-load-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="image.jpg"\r\n'
    head += "Content-Type: image/jpeg\r\n\r\n"
    tail = f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="labels"\r\n\r\n{",".join(LABELS)}'
    tail += f"\r\n--{boundary}--\r\n"
    return head.encode() + image + tail.encode(), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------------------------------------------------
# Clients: each ``call()`` returns (ok, Server-Timing header or "")
# --------------------------------------------------------------------------------------------------------------------


class RawClient:
    """One kept-alive socket sending a prebuilt request; reads status, headers and a Content-Length body."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port, self.request = port, request
        self.sock: socket.socket | None = None

    def call(self) -> tuple[bool, str]:
        """Send the request (reconnecting once if the server closed the connection) and read the answer."""
        for _ in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock.sendall(self.request)
                return self._answer()
            except OSError:
                self.close()
        return False, ""

    def _answer(self) -> tuple[bool, str]:
        """Read one response; close the socket if the server asked to."""
        assert self.sock is not None
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            body += chunk
        if headers.get("connection") == "close":
            self.close()
        return lines[0].split(" ", 2)[1] == "200", headers.get("server-timing", "")

    def close(self) -> None:
        """Drop the connection (the next call reconnects)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def client_factory(kind: str, port: int, image: bytes) -> Callable[[], Callable[[], tuple[bool, str]]]:
    """A function that makes one client's ``call`` (one per load thread)."""
    body, content_type = multipart_body(image)
    if kind == "raw":
        head = f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        return lambda: RawClient(port, request).call

    def make() -> Callable[[], tuple[bool, str]]:
        import httpx

        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
        headers = {"content-type": content_type}

        def call() -> tuple[bool, str]:
            try:
                response = client.post("/v1/classify", content=body, headers=headers)
            except httpx.HTTPError:
                return False, ""
            return response.status_code == 200, response.headers.get("server-timing", "")

        return call

    return make


# --------------------------------------------------------------------------------------------------------------------
# Load and its figures
# --------------------------------------------------------------------------------------------------------------------


def run_load(
    make_call: Callable[[], Callable[[], tuple[bool, str]]],
    concurrency: int,
    duration: float,
    max_requests: int,
    rate: float | None = None,
) -> dict[str, Any]:
    """``concurrency`` threads calling until ``duration`` s or ``max_requests``; closed loop, or with ``rate`` an open
    loop (request i is due at i / rate s; its latency counts from then). Latency, throughput, CPU, server stages."""
    latencies: list[float] = []
    timings: list[str] = []
    errors = 0
    lock = threading.Lock()
    issued = 0
    start = time.perf_counter()
    deadline = start + duration

    def next_due() -> float | None:
        nonlocal issued
        with lock:
            if issued >= max_requests:
                return None
            issued += 1
            due = start + (issued - 1) / rate if rate else time.perf_counter()
        return due if due < deadline else None

    def worker() -> None:
        nonlocal errors
        call = make_call()
        while (due := next_due()) is not None and time.perf_counter() < deadline:
            time.sleep(max(0.0, due - time.perf_counter()))
            ok, timing = call()
            elapsed = time.perf_counter() - due
            with lock:
                if ok:
                    latencies.append(elapsed)
                    timings.append(timing)
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
        "client_cpu_ms_per_req": 1000 * (time.process_time() - cpu_start) / max(1, len(latencies)),
        "load_avg_1m": round(max(load_before, os.getloadavg()[0]), 2),
        **stage_means(timings, lat_ms),
    }


def stage_means(headers: list[str], lat_ms: np.ndarray) -> dict[str, Any]:
    """Mean milliseconds per Server-Timing stage, p99 of the handler, and the mean time outside the handler."""
    values: dict[str, list[float]] = {}
    for header in headers:
        for entry in header.split(", ") if header else []:
            name, _, dur = entry.partition(";dur=")
            values.setdefault(name, []).append(float(dur))
    out: dict[str, Any] = {name: float(np.mean(values[name])) for name in STAGES if name in values}
    if "handler" in values:
        out["handler_p99"] = float(np.percentile(values["handler"], 99))
        out["outside"] = float(np.mean(lat_ms)) - out["handler"]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (uvicorn's worker processes when proc > 1)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *found]


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------------------------------


def parse_variant(spec: str) -> dict[str, str]:
    """``ort=1,inf=2,batch=8,wait=2`` -> every setting (unnamed ones at their defaults); unknown keys refused."""
    settings = dict(VARIANT_KEYS)
    for part in filter(None, spec.split(",") if spec != "default" else []):
        key, sep, value = part.partition("=")
        if not sep or key not in VARIANT_KEYS:
            raise argparse.ArgumentTypeError(f"variant {spec!r}: {part!r} is not one of {sorted(VARIANT_KEYS)}=VALUE")
        settings[key] = value
    if settings["client"] not in ("raw", "httpx"):
        raise argparse.ArgumentTypeError(f"variant {spec!r}: client must be raw or httpx")
    return settings


def start_variant(
    bundle: Path, port: int, precision: str | None, settings: dict[str, str], log: Path
) -> subprocess.Popen:
    """``serve(...)`` with the variant's settings (``default``: serve's own) and Server-Timing on, in a subprocess
    bound to 127.0.0.1; ``ort=0`` is onnxruntime's own thread count (every core per session)."""
    options = [f"workers={int(settings['proc'])}", f"precision={precision!r}", "server_timing=True"]
    chosen = {key: value for key, value in settings.items() if value != "default"}
    if "ort" in chosen:
        options.append(f"threads={int(chosen['ort'])}")
    if "inf" in chosen:
        options.append(f"limits=ServeLimits(max_concurrent_inference={int(chosen['inf'])})")
    if "batch" in chosen:
        options.append(f"batch_max={int(chosen['batch'])}")
    if "wait" in chosen:
        options.append(f"batch_wait_ms={float(chosen['wait'])}")
    code = (
        "from pathlib import Path; from dcclip.serve import serve, ServeLimits; "
        f"serve(Path({str(bundle)!r}), host='127.0.0.1', port={port}, {', '.join(options)})"
    )
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)


def start_server(bundle: Path, port: int, threads: int | None, log: Path) -> subprocess.Popen:
    """``serve(bundle, port=port, threads=threads)`` at the defaults otherwise (benchmarks/request_memory.py)."""
    return start_variant(bundle, port, None, parse_variant(f"ort={threads or 0}"), log)


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll /healthz until it answers (bounded in time), failing fast if the server died."""
    wait_healthy(url, process, log, STARTUP_SECONDS, interval=0.2)


def over_http(bundle: Path, image: bytes, spec: str, args: argparse.Namespace, log: Path) -> list[dict[str, Any]]:
    """Start the variant's server, warm it up, load it (closed loop, then at ``--rate``), stop it."""
    settings = parse_variant(spec)
    port = free_port()
    process = start_variant(bundle, port, args.serve_precision, settings, log)
    rows = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
        make_call = client_factory(settings["client"], port, image)
        warm = make_call()
        for _ in range(args.warmup):
            warm()
        loads = [("closed", None)] + ([(f"{args.rate:g}/s", args.rate)] if args.rate else [])
        for name, rate in loads:
            pids = process_tree(process.pid)
            cpu_before, wall_before = sum(cpu_seconds(p) for p in pids), time.perf_counter()
            row = run_load(make_call, args.concurrency, args.duration, args.max_requests, rate)
            server_cpu = 100 * (sum(cpu_seconds(p) for p in pids) - cpu_before) / (time.perf_counter() - wall_before)
            rss = sum(rss_mb(p) for p in pids)
            per_request = {"server_cpu_ms_per_req": 10 * server_cpu / row["req_per_s"] if row["req_per_s"] else None}
            row |= {"server_cpu_pct": server_cpu, "server_rss_mb": rss, **per_request}
            rows.append({"variant": spec, "load": name, **row})
    finally:
        stop(process)
    return rows


def in_process(bundle: Path, image: bytes, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The baseline: ZeroShotClassifier.classify (1 onnxruntime thread) at concurrency 1 and ``--concurrency``."""
    from dcclip.runtime.classifier import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_bundle(bundle, precision=args.serve_precision, threads=1)
    call = lambda: (bool(classifier.classify([image], LABELS, "en", top_k=5)), "")  # noqa: E731
    for _ in range(args.warmup):
        call()
    rows = []
    for concurrency in sorted({1, args.concurrency}):
        row = run_load(lambda: call, concurrency, args.duration, args.max_requests)
        rows.append({"variant": "in-process classify, ort=1", "load": f"closed c={concurrency}", **row})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and load: medians over rounds, and the spread (min-max) of req/s and p99."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "round" in row:
            groups.setdefault((row["variant"], row["load"]), []).append(row)
    out = []
    for (variant, load), group in groups.items():
        rps, p99 = [r["req_per_s"] for r in group], [r["p99_ms"] for r in group]
        out.append({
            "variant": variant, "load": load, "rounds": len(group), "req_per_s": statistics.median(rps),
            "p50_ms": statistics.median(r["p50_ms"] for r in group), "p99_ms": statistics.median(p99),
            "server_cpu_ms_per_req": statistics.median(r["server_cpu_ms_per_req"] or float("nan") for r in group),
            "load_avg_1m": statistics.median(r["load_avg_1m"] for r in group),
            "req_per_s_range": f"{min(rps):.0f}-{max(rps):.0f}", "p99_ms_range": f"{min(p99):.1f}-{max(p99):.1f}",
        })  # fmt: skip
    return out


def serving_stack() -> dict[str, str]:
    """Versions of the HTTP stack, and which HTTP parser and event loop uvicorn could pick."""
    from importlib import metadata
    from importlib.util import find_spec

    versions = {}
    for package in ("fastapi", "starlette", "uvicorn", "python-multipart", "httpx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    versions["http_parser"] = "h11 (dcclip's protocol with timeouts)"
    versions["event_loop"] = "uvloop" if find_spec("uvloop") else "asyncio"
    return versions


def bundle_facts(bundle: Path, precision: str | None) -> dict[str, Any]:
    """The precisions the server loads per tower and the image size, from the bundle itself."""
    from dcclip.runtime.bundle import BundleModel

    model = BundleModel(bundle, precision)
    return {"tower_precisions": model.tower_precisions, "image_size": model.preprocess.image_size}


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="mnv4s050-text4", help="registered student to export (random weights)")
    parser.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto", help="export + serve")
    parser.add_argument("--bundle", type=Path, default=None, help="serve this bundle instead of exporting --student")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help=f"keys {sorted(VARIANT_KEYS)}")
    parser.add_argument("--rounds", type=int, default=2, help="times every variant runs, alternating")
    parser.add_argument("--rate", type=float, default=None, help="also an open loop at this many req/s")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of load per measurement")
    parser.add_argument("--max-requests", type=int, default=20000, help="request cap per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-process classify rows")
    args = parser.parse_args()
    for spec in args.variants:
        parse_variant(spec)
    args.serve_precision = "int8" if args.precision == "int8" else None  # auto: the manifest's choice
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="dcclip-serve-bench-") as tmp:
        start = time.perf_counter()
        bundle = args.bundle or export_student_bundle(Path(tmp), args.student, args.precision)
        export_s = None if args.bundle else round(time.perf_counter() - start, 1)
        facts = bundle_facts(bundle, args.serve_precision)
        image = sample_image()
        rows = [] if args.no_baseline else in_process(bundle, image, args)
        for round_ in range(1, args.rounds + 1):
            for index, spec in enumerate(args.variants):
                log = Path(tmp) / f"server-{round_}-{index}.log"
                rows += [{**row, "round": round_} for row in over_http(bundle, image, spec, args, log)]
    summary = summarise(rows)
    table = markdown_table(summary, SUMMARY_COLUMNS) + "\n\nEvery run:\n\n" + markdown_table(rows, COLUMNS)
    print(table)
    source = str(args.bundle) if args.bundle else f"{args.student} (random weights), exported here"
    payload = {
        "bundle": source,
        "student": None if args.bundle else args.student,
        "precision": args.precision,
        **facts,
        "export_seconds": export_s,
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} JPEG, {len(image)} bytes",
        "labels": len(LABELS),
        "duration_s": args.duration,
        "targets": {"req_per_s": 200, "p99_ms": 25, "concurrency": 8},
        "serving_stack": serving_stack(),
        "summary": summary,
        "rows": rows,
    }
    write_result("serve_load", payload, table, " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
