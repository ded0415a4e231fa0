"""Reader throughput: samples/s of the shard reader at 224 px from local files, loopback HTTP and ``pipe:cat``.

    python benchmarks/reader_throughput.py [--world DIR] [--samples 10000] [--batches 60]

Generates a toy world when none is given (and reports how long that took), trains a tokenizer on it, then reads
the same shards in one run: raw tar reading and the full reader (0 and 2 workers) from local files, and raw tar
reading and the 2-worker reader through a loopback HTTP server (``python -m http.server`` in its own process) and
through ``pipe:cat``, each as a ratio to the same reader on local files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_result


def read_raw(source: str, limit: int) -> float:
    """Samples/s of tar reading alone (no decoding): the ceiling of any reader."""
    from dcclip.data.shards import iter_samples

    start, n = time.perf_counter(), 0
    for _ in iter_samples(source):
        n += 1
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


def read_loader(source: str, tokenizer, workers: int, batches: int, batch_size: int, langs: tuple[str, ...]) -> float:
    """Samples/s of the full reader (decode, resize to 224, normalise, tokenise, batch)."""
    from dcclip.config import DataConfig
    from dcclip.data.pipeline import ShardLoader
    from dcclip.runtime.preprocess import Preprocess

    cfg = DataConfig(
        train=source, batch_size=batch_size, workers=workers, caption_sampling="all", epoch_samples=10**9, langs=langs
    )
    loader = ShardLoader(cfg, Preprocess(image_size=224), tokenizer)
    stream = iter(loader)
    next(stream)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(stream)["keys"])
    return n / (time.perf_counter() - start)


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """A static file server over ``root`` on a free loopback port, in its own process; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def pipe_source(shard_dir: Path) -> str:
    """``pipe:cat`` over the shards of a shard-set folder, as one brace pattern."""
    names = [s["name"] for s in json.loads((shard_dir / "manifest.json").read_text())["shards"]]
    last = names[-1].removeprefix("shard-").removesuffix(".tar")
    return f"pipe:cat {shard_dir}/shard-{{000000..{last}}}.tar"


def measure(sources: dict[str, str], tokenizer, n: int, batches: int, batch_size: int) -> list[dict]:
    """Every reader over every source, one after the other in one run; every source reads the same languages."""
    from dcclip.data.shards import read_manifest

    langs = tuple(sorted(read_manifest(sources["local"])["langs"]))  # a brace pattern has no manifest to say them
    rows = [{"reader": "tar only (no decode)", "source": "local", "samples_per_s": read_raw(sources["local"], n)}]
    rows.append({"reader": "ShardLoader, 0 workers", "source": "local",
                 "samples_per_s": read_loader(sources["local"], tokenizer, 0, batches, batch_size, langs)})  # fmt: skip
    for name, source in sources.items():
        rows.append({"reader": "tar only (no decode)", "source": name, "samples_per_s": read_raw(source, n)})
        rows.append({"reader": "ShardLoader, 2 workers", "source": name,
                     "samples_per_s": read_loader(source, tokenizer, 2, batches, batch_size, langs)})  # fmt: skip
    rows = rows[:2] + rows[3:]  # the first local tar-only row is a warm-up of the page cache
    local = {r["reader"]: r["samples_per_s"] for r in rows if r["source"] == "local"}
    for row in rows:
        row["vs_local"] = row["samples_per_s"] / local[row["reader"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=None, help="existing toy world (default: generate one)")
    parser.add_argument("--samples", type=int, default=10000, help="training samples when generating")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from dcclip.data.shards import iter_captions
    from dcclip.data.world import generate_world
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="dcclip-bench-"))
    world = Path(args.world) if args.world else tmp / "world"
    world_seconds = None
    if not args.world:
        start = time.perf_counter()
        generate_world(world, train_samples=args.samples, seed=0, eval_samples=100)
        world_seconds = time.perf_counter() - start
    source = str(world / "train")
    tokenizer = TextTokenizer.from_path(train_tokenizer(iter_captions(source), 4000, tmp / "tok"))
    n = args.batches * args.batch_size
    with http_server(world) as base:
        sources = {"local": source, "loopback HTTP": f"{base}/train/", "pipe:cat": pipe_source(world / "train")}
        rows = measure(sources, tokenizer, n, args.batches, args.batch_size)
    table = markdown_table(rows, ["reader", "source", "samples_per_s", "vs_local"])
    if world_seconds is not None:
        table += f"\n\nToy world generation: {args.samples} training samples in {world_seconds:.1f} s."
    payload = {"rows": rows, "image_size": 224, "batch_size": args.batch_size, "world_generation_s": world_seconds,
               "world_samples": args.samples if world_seconds is not None else None}  # fmt: skip
    write_result(
        "reader_throughput", payload, table, "python benchmarks/reader_throughput.py " + " ".join(sys.argv[1:])
    )
    print(table)


if __name__ == "__main__":
    main()
