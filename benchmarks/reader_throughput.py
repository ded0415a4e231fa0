"""Reader throughput: samples/s of the shard reader at 224 px, 2 workers vs 1 process vs raw tar reading.

    python benchmarks/reader_throughput.py [--world DIR] [--samples 10000] [--batches 60]

Generates a toy world when none is given (and reports how long that took), trains a tokenizer on it, then reads
the same shards three ways in one run so the figures compare directly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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


def read_loader(source: str, tokenizer, workers: int, batches: int, batch_size: int) -> float:
    """Samples/s of the full reader (decode, resize to 224, normalise, tokenise, batch)."""
    from dcclip.config import DataConfig
    from dcclip.data.pipeline import ShardLoader
    from dcclip.runtime.preprocess import Preprocess

    cfg = DataConfig(train=source, batch_size=batch_size, workers=workers, caption_sampling="all", epoch_samples=10**9)
    loader = ShardLoader(cfg, Preprocess(image_size=224), tokenizer)
    stream = iter(loader)
    next(stream)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(stream)["keys"])
    return n / (time.perf_counter() - start)


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
    rows = [
        {"reader": "tar only (no decode)", "samples_per_s": read_raw(source, n)},
        {
            "reader": "ShardLoader, 0 workers",
            "samples_per_s": read_loader(source, tokenizer, 0, args.batches, args.batch_size),
        },
        {
            "reader": "ShardLoader, 2 workers",
            "samples_per_s": read_loader(source, tokenizer, 2, args.batches, args.batch_size),
        },
    ]
    base = rows[1]["samples_per_s"]
    for row in rows:
        row["vs_0_workers"] = row["samples_per_s"] / base
    table = markdown_table(rows, ["reader", "samples_per_s", "vs_0_workers"])
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
