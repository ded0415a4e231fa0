"""Samples of each split (training shards and the three eval sets) and writing them to disk: ``generate_world``."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.data.shards import ShardSetWriter, write_shard
from dcclip.data.world.grammar import (
    class_attributes,
    class_names,
    class_templates,
    describe_digit,
    describe_shapes,
    shape_classes,
)
from dcclip.data.world.registry import COLOURS, SHAPES, Thing, language, language_codes
from dcclip.data.world.render import (
    _EVAL_DIGITS,
    _EVAL_RETRIEVAL,
    _EVAL_SHAPES,
    _PAIR_SIZES,
    _PLAN,
    _TRAIN,
    DIGIT_FRACTION,
    _digits,
    _object_meta,
    _plan_pair,
    _plan_single,
    _random_class,
    _render_digit,
    _render_shapes,
    _rng,
    _things,
)
from dcclip.io import write_json_atomic

WORLD_FORMAT = "dcclip-world"
WORLD_VERSION = 1
# Below this many images one process is quicker than starting workers.
PARALLEL_MIN_IMAGES = 2000


def _pick_langs(rng: np.random.Generator) -> list[str]:
    """Languages a training sample carries: English always, the others with their own probability."""
    codes = language_codes()
    draws = rng.random(len(codes))
    return [lang for lang, u in zip(codes, draws, strict=True) if u < language(lang).prob]


def _captions(rng: np.random.Generator, langs: list[str], describe: Callable[[str, int], str]) -> dict[str, str]:
    """Captions for ``langs``, each with its own randomly chosen template."""
    picks = rng.integers(0, 1 << 30, size=len(langs))
    return {lang: describe(lang, int(k)) for lang, k in zip(langs, picks, strict=True)}


# ----------------------------------------------------------------------------------------------------------------
# Samples of each split
# ----------------------------------------------------------------------------------------------------------------


def _train_shapes(rng: np.random.Generator, size: int) -> tuple[bytes, dict[str, Any], list[Thing]]:
    """A training shape scene: one object (60%) or two; sizes and positions mentioned when true and drawn to be."""
    if rng.random() < 0.6:
        objects = [_plan_single(rng, size, *_random_class(rng), ("small", "medium", "large"), placed=True)]
        say_pos = True
    else:
        sizes = _PAIR_SIZES[int(rng.integers(len(_PAIR_SIZES)))]
        objects = _plan_pair(rng, size, [_random_class(rng), _random_class(rng)], sizes, rng.random() < 0.4)
        say_pos = rng.random() < 0.6
    say_size = rng.random() < 0.7
    things = _things(objects, say_size, say_pos)
    if rng.random() < 0.5:  # the order objects are named in is not the drawing order
        things = things[::-1]
    image, texture = _render_shapes(rng, objects, size, 20.0, float(rng.uniform(0, 8)), _maybe_strokes(rng, 0.2, 3))
    meta = {"kind": "shapes", "objects": _object_meta(objects, size), "background": texture}
    return image, meta, things


def _maybe_strokes(rng: np.random.Generator, p: float, most: int) -> int:
    """How many clutter strokes to draw: none with probability 1 - p, else 1..most."""
    return int(rng.integers(1, most + 1)) if rng.random() < p else 0


def _train_sample(seed: int, index: int, size: int) -> tuple[bytes, dict[str, Any]]:
    """One training sample: image bytes and its metadata, captions in a random subset of languages."""
    rng = _rng(seed, _TRAIN, index)
    langs = _pick_langs(rng)
    if rng.random() < DIGIT_FRACTION:
        images, labels, train_idx, _ = _digits()
        source = int(train_idx[int(rng.integers(len(train_idx)))])
        digit = int(labels[source])
        image, extra = _render_digit(rng, images[source], size, float(rng.uniform(0, 8)), _maybe_strokes(rng, 0.1, 2))
        meta = {"kind": "digits", "digit": digit, "sklearn_index": source, **extra}
        captions = _captions(rng, langs, lambda lang, k: describe_digit(lang, digit, k))
    else:
        image, meta, things = _train_shapes(rng, size)
        captions = _captions(rng, langs, lambda lang, k: describe_shapes(lang, things, k))
    return image, {"captions": captions, "source_lang": "en", **meta}


def _eval_shape_sample(seed: int, index: int, size: int, cls: int) -> bytes:
    """A hard single-object eval image of class ``cls``: often tiny, cluttered, noisy, strongly jittered colours."""
    rng = _rng(seed, _EVAL_SHAPES, index)
    colour, shape = shape_classes()[cls]
    obj = _plan_single(rng, size, colour, shape, ("tiny", "small", "small", "medium", "large"), placed=False)
    image, _ = _render_shapes(rng, [obj], size, 28.0, float(rng.uniform(4, 16)), _maybe_strokes(rng, 0.85, 6))
    return image


def _eval_digit_sample(seed: int, index: int, size: int, source: int) -> bytes:
    """A held-out sklearn digit rendered with eval-stream randomness."""
    rng = _rng(seed, _EVAL_DIGITS, index)
    images, _, _, _ = _digits()
    image, _ = _render_digit(rng, images[source], size, float(rng.uniform(2, 12)), _maybe_strokes(rng, 0.5, 3))
    return image


_RETRIEVAL_SIZES = (("small", "small"), ("small", "large"), ("large", "small"))


def _retrieval_plans(seed: int, count: int) -> np.ndarray:
    """Distinct scene descriptors (two classes, two sizes, layout) so every retrieval caption names one image."""
    n_classes = len(COLOURS) * len(SHAPES)
    space = n_classes * n_classes * len(_RETRIEVAL_SIZES) * 2
    if count > space:
        raise ValueError(f"eval_samples must be <= {space} for distinct retrieval captions; got {count}")
    return _rng(seed, _PLAN, 0).choice(space, size=count, replace=False)


def _retrieval_sample(seed: int, index: int, size: int, plan: int) -> tuple[bytes, dict[str, str]]:
    """A two-object retrieval image and its captions in all languages, sizes and positions always named."""
    rng = _rng(seed, _EVAL_RETRIEVAL, index)
    classes = shape_classes()
    plan, sizes = divmod(int(plan), len(_RETRIEVAL_SIZES))
    plan, vertical = divmod(plan, 2)
    first, second = divmod(plan, len(classes))
    pair = [classes[first], classes[second]]
    objects = _plan_pair(rng, size, pair, _RETRIEVAL_SIZES[sizes], bool(vertical))
    things = _things(objects, say_size=True, say_pos=True)
    if rng.random() < 0.5:
        things = things[::-1]
    image, _ = _render_shapes(rng, objects, size, 24.0, float(rng.uniform(2, 10)), _maybe_strokes(rng, 0.3, 2))
    return image, _captions(rng, list(language_codes()), lambda lang, k: describe_shapes(lang, things, k))


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar when asked for, otherwise a no-op stand-in with the same ``update``/``close``."""
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img")

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Quiet()


def _key_width(count: int) -> int:
    """Zero-padding so keys sort in sample order."""
    return max(6, len(str(max(count - 1, 0))))


def _in_order(fn: Callable[..., Any], arguments: Iterable[tuple], pool: Executor | None) -> Iterator[Any]:
    """``fn(*args)`` for each argument tuple, in order: rendered by the worker pool when there is one.

    Every sample is a pure function of its arguments (seeded per index), so the bytes do not depend on the pool."""
    columns = list(zip(*arguments, strict=True))
    if not columns:
        return iter(())
    return pool.map(fn, *columns, chunksize=32) if pool is not None else map(fn, *columns)


@contextlib.contextmanager
def _render_pool(workers: int | None, images: int) -> Iterator[Executor | None]:
    """Worker processes that render samples (forked, so languages registered in this process come along)."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if images >= PARALLEL_MIN_IMAGES else 1
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool


def _write_train(
    out: Path, count: int, seed: int, size: int, shard_size: int, progress: bool, pool: Executor | None = None
) -> tuple[dict[str, Any], Counter]:
    """Training shards through the shared writer; returns the shard-set manifest and the count of each kind."""
    for stale in out.glob("shard-*.tar"):
        stale.unlink()  # a smaller rerun must not leave earlier shards beside the new manifest
    width, bar, kinds = _key_width(count), _progress(count, "world train", progress), Counter()
    samples = _in_order(_train_sample, ((seed, index, size) for index in range(count)), pool)
    with ShardSetWriter(out, max_count=shard_size) as writer:
        for index, (image, meta) in enumerate(samples):
            writer.add(f"train_{index:0{width}d}", {"jpg": image}, meta)
            kinds[meta["kind"]] += 1
            bar.update()
    bar.close()
    return json.loads((out / "manifest.json").read_text(encoding="utf-8")), kinds


def _write_wds(split_dir: Path, samples: Iterator[dict[str, bytes]], count: int, shard_size: int) -> int:
    """clip_benchmark shards ``0.tar``, ``1.tar``, ... plus ``nshards.txt``; members sorted by name within a shard."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob("*.tar"):
        stale.unlink()
    width, nshards = _key_width(count), math.ceil(count / shard_size)
    for shard in range(nshards):
        indices = range(shard * shard_size, min(count, (shard + 1) * shard_size))
        write_shard(split_dir / f"{shard}.tar", ((f"{index:0{width}d}", next(samples)) for index in indices))
    (split_dir / "nshards.txt").write_text(f"{nshards}\n", encoding="ascii")
    return nshards


def _write_text(path: Path, lines: list[str]) -> None:
    """A UTF-8 text file with one entry per line and a final newline."""
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_json(path: Path, payload: Any) -> None:
    """Stable, human-readable JSON (UTF-8, not escaped, fixed key order from the payload)."""
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_classification(
    root: Path, task: str, samples: Iterator[dict[str, bytes]], count: int, shard_size: int
) -> dict[str, Any]:
    """A zero-shot classification set: shards, English classnames/templates, and both keyed by language."""
    root.mkdir(parents=True, exist_ok=True)
    names, templates = class_names(task), class_templates(task)
    nshards = _write_wds(root / "test", samples, count, shard_size)
    _write_text(root / "classnames.txt", names["en"])
    _write_text(root / "zeroshot_classification_templates.txt", templates["en"])
    _write_json(root / "classnames.json", names)
    _write_json(root / "templates.json", templates)
    if class_attributes(task):
        _write_json(root / "class_attributes.json", class_attributes(task))
    return {"samples": count, "shards": nshards, "classes": len(names["en"])}


def _shape_eval_stream(
    seed: int, count: int, size: int, bar: Any, pool: Executor | None = None
) -> Iterator[dict[str, bytes]]:
    """Samples of the shapes eval: classes balanced (counts differ by at most one), order shuffled per seed."""
    n_classes = len(COLOURS) * len(SHAPES)
    order = _rng(seed, _PLAN, 1).permutation(n_classes)
    classes = [int(order[index % n_classes]) for index in range(count)]
    images = _in_order(_eval_shape_sample, ((seed, index, size, classes[index]) for index in range(count)), pool)
    for cls, image in zip(classes, images, strict=True):
        yield {"jpg": image, "cls": str(cls).encode("ascii")}
        bar.update()


def _digit_eval_stream(
    seed: int, count: int, size: int, bar: Any, pool: Executor | None = None
) -> Iterator[dict[str, bytes]]:
    """Samples of the digits eval: held-out digits only, classes balanced, each class's digits used in turn."""
    _, labels, _, held = _digits()
    per_class = [held[labels[held] == d] for d in range(10)]
    order = _rng(seed, _PLAN, 2).permutation(10)
    digits = [int(order[index % 10]) for index in range(count)]
    sources = [int(per_class[digit][(index // 10) % len(per_class[digit])]) for index, digit in enumerate(digits)]
    images = _in_order(_eval_digit_sample, ((seed, index, size, sources[index]) for index in range(count)), pool)
    for digit, image in zip(digits, images, strict=True):
        yield {"jpg": image, "cls": str(digit).encode("ascii")}
        bar.update()


def _retrieval_stream(
    seed: int, count: int, size: int, bar: Any, pool: Executor | None = None
) -> Iterator[dict[str, bytes]]:
    """Samples of the retrieval eval: image, English caption (.txt) and all ten captions (.json)."""
    plans = [int(plan) for plan in _retrieval_plans(seed, count)]
    for image, captions in _in_order(_retrieval_sample, ((seed, i, size, plan) for i, plan in enumerate(plans)), pool):
        meta = json.dumps({"captions": captions}, ensure_ascii=False, sort_keys=True).encode("utf-8")
        yield {"jpg": image, "txt": captions["en"].encode("utf-8"), "json": meta}
        bar.update()


def _write_retrieval(
    root: Path, seed: int, count: int, size: int, shard_size: int, bar: Any, pool: Executor | None = None
) -> dict[str, Any]:
    """The retrieval set in clip_benchmark layout, marked by ``dataset_type.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    nshards = _write_wds(root / "test", _retrieval_stream(seed, count, size, bar, pool), count, shard_size)
    (root / "dataset_type.txt").write_text("retrieval\n", encoding="ascii")
    return {"samples": count, "shards": nshards, "languages": list(language_codes())}


def _write_evals(
    out: Path, seed: int, count: int, size: int, shard_size: int, progress: bool, pool: Executor | None = None
) -> dict[str, Any]:
    """The three eval sets under ``out``: shapes, digits, retrieval."""
    bar = _progress(3 * count, "world eval", progress)
    try:
        return {
            "shapes": _write_classification(
                out / "shapes", "shapes", _shape_eval_stream(seed, count, size, bar, pool), count, shard_size
            ),
            "digits": _write_classification(
                out / "digits", "digits", _digit_eval_stream(seed, count, size, bar, pool), count, shard_size
            ),
            "retrieval": _write_retrieval(out / "retrieval", seed, count, size, shard_size, bar, pool),
        }
    finally:
        bar.close()


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer argument within bounds, or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return int(value)


def _summary(args: dict[str, int], manifest: dict[str, Any], kinds: Counter, evals: dict[str, Any]) -> dict[str, Any]:
    """The world description written to world.json: arguments, counts, languages, classes, relative paths."""
    digits = _digits()
    return {
        "format": WORLD_FORMAT,
        "version": WORLD_VERSION,
        **args,
        "languages": list(language_codes()),
        "language_probs": {lang: language(lang).prob for lang in language_codes()},
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "classes": {"shapes": [f"{c} {s}" for c, s in shape_classes()], "digits": list(language("en").digit_words)},
        "counts": {
            "train": manifest["samples"],
            "train_shards": len(manifest["shards"]),
            "train_shapes": kinds["shapes"],
            "train_digits": kinds["digits"],
            "train_langs": manifest["langs"],
            "digit_pool": {"train": len(digits[2]), "held_out": len(digits[3])},
            **{f"eval_{name}": info["samples"] for name, info in evals.items()},
        },
        "eval": evals,
        "paths": {"train": "train", **{f"eval_{name}": f"eval/{name}" for name in evals}},
    }


def generate_world(
    out_dir: Path,
    train_samples: int,
    seed: int = 0,
    eval_samples: int = 500,
    image_size: int = 128,
    shard_size: int = 1000,
    progress: bool = False,
    workers: int | None = None,
) -> dict:
    """Write the toy world (training shards + three eval sets) under ``out_dir``; returns its summary.

    Layout: ``train/`` (dcclip shards + manifest.json), ``eval/shapes/`` and ``eval/digits/`` (clip_benchmark
    classification: ``test/nshards.txt``, ``test/N.tar`` with ``KEY.jpg`` + ``KEY.cls``, ``classnames.txt``,
    ``zeroshot_classification_templates.txt``, plus ``classnames.json``/``templates.json`` keyed by language),
    ``eval/retrieval/`` (``dataset_type.txt`` = retrieval; ``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``) and
    ``world.json``. world.json holds the summary with paths relative to ``out_dir`` and no timing, so the same
    arguments always give the same bytes; the returned dict adds absolute ``paths`` and the wall-clock ``seconds``.
    ``workers`` processes render the images (default: up to 4, one per core, for worlds of 2,000 images or more);
    the bytes are the same for any number.
    """
    args = {
        "seed": _check_int("seed", seed, 0),
        "train_samples": _check_int("train_samples", train_samples, 1),
        "eval_samples": _check_int("eval_samples", eval_samples, 1),
        "image_size": _check_int("image_size", image_size, 32, 1024),
        "shard_size": _check_int("shard_size", shard_size, 1),
    }
    _retrieval_plans(args["seed"], args["eval_samples"])  # reject a too-large eval set before writing anything
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _render_pool(workers, args["train_samples"] + 3 * args["eval_samples"]) as pool:
        manifest, kinds = _write_train(
            out / "train", args["train_samples"], args["seed"], args["image_size"], args["shard_size"], progress, pool
        )
        evals = _write_evals(
            out / "eval", args["seed"], args["eval_samples"], args["image_size"], args["shard_size"], progress, pool
        )
    summary = _summary(args, manifest, kinds, evals)
    write_json_atomic(out / "world.json", summary)
    paths = {name: str(out / rel) for name, rel in summary["paths"].items()}
    return {**summary, "paths": {"root": str(out), **paths}, "seconds": round(time.perf_counter() - start, 3)}
