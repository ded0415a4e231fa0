"""Worst-case memory of one HTTP request under the server's default limits (README "Limits and security").

    python benchmarks/request_memory.py [--bundle DIR]

Starts ``dcclip serve`` (one worker) on loopback and measures the server's resident memory (peak and after) for:
the largest request the limits accept (images decoding to ``max_request_pixels`` in total, RGBA PNGs, the costliest
per pixel), three of them at once, and issue 27's attack (16 uniform 6000x6600 PNGs, 2 MiB of body). The peak is the
kernel's high-water mark (VmHWM), reset between phases through /proc/PID/clear_refs.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import markdown_table, stop, write_result
from PIL import Image
from serve_load import export_demo_bundle, start_server, wait_ready

MIB = 1024 * 1024


def png(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A uniform PNG: a few KB on the wire, ``width * height`` pixels once decoded."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (90, 120, 200, 255)[: len(mode)]).save(buffer, format="PNG")
    return buffer.getvalue()


def status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def post(url: str, images: list[bytes]) -> int:
    import httpx

    files = [("images", (f"i{n}.png", data, "image/png")) for n, data in enumerate(images)]
    return httpx.post(f"{url}/v1/classify", files=files, data={"labels": "cat,dog"}, timeout=300).status_code


def phase(name: str, pid: int, url: str, requests: list[list[bytes]]) -> dict[str, Any]:
    """Send ``requests`` at once; the server's peak and resident memory during and 5 s after."""
    before = status(pid, "VmRSS")
    reset_peak(pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        codes = list(pool.map(lambda images: post(url, images), requests))
    seconds = time.perf_counter() - started
    peak = status(pid, "VmHWM")
    time.sleep(5)
    return {
        "phase": name,
        "statuses": ",".join(map(str, codes)),
        "body_kib": round(sum(len(i) for r in requests for i in r) / 1024, 1),
        "rss_before_mib": round(before / MIB),
        "peak_mib": round(peak / MIB),
        "peak_over_idle_mib": round((peak - before) / MIB),
        "rss_5s_after_mib": round(status(pid, "VmRSS") / MIB),
        "seconds": round(seconds, 2),
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scenarios() -> list[tuple[str, list[list[bytes]]]]:
    """(name, requests sent at once) under the default limits (40 MP per image, 64 MP per request)."""
    largest = [png(6000, 6600), png(4800, 5000)]  # 39.6 + 24.0 = 63.6 MP of RGBA: the most one request may decode
    attack = [png(6000, 6600, "RGB")] * 16  # issue 27: 2 MiB of body, 634 MP decoded
    return [
        ("largest accepted request", [largest]),
        ("3 largest at once", [largest] * 3),
        ("16 x 6000x6600 PNG (issue 27)", [attack]),
        ("3 x that at once", [attack] * 3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: the demo student)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = args.bundle or export_demo_bundle(root)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(bundle, port, 1, root / "server.log")
        try:
            wait_ready(url, process, root / "server.log")
            post(url, [png(64, 64)])  # warm-up: first inference allocates the session's buffers
            rows = [phase(name, process.pid, url, requests) for name, requests in scenarios()]
        finally:
            stop(process)
    columns = list(rows[0])
    table = markdown_table(rows, columns)
    print(table)
    command = "python benchmarks/request_memory.py" + (f" --bundle {args.bundle}" if args.bundle else "")
    write_result("request_memory", {"rows": rows}, table, command)


if __name__ == "__main__":
    sys.exit(main())
