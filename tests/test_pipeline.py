"""The streaming reader: coverage per rank and worker, equal batches, corrupt samples, caption sampling, resume."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from helpers.data import CAPTIONS, write_shard_set

from dcclip.config import DataConfig
from dcclip.data.pipeline import ShardLoader, choose_captions, language_weights
from dcclip.runtime.preprocess import Preprocess

PRE = Preprocess(image_size=32)


def loader(tokenizer, train, rank=0, world=1, **overrides) -> ShardLoader:
    """A small streaming loader; only the worker-coverage test forks DataLoader workers (a fork from the long-lived
    test process, which holds other tests' threads, is where a worker can inherit a held lock)."""
    settings = {"train": str(train), "batch_size": 4, "workers": 0, "shuffle_buffer": 8, "max_text_len": 16}
    settings.update(overrides)
    return ShardLoader(DataConfig(**settings), PRE, tokenizer, rank=rank, world_size=world, seed=3)


def test_batch_fields(small_shards, tokenizer):
    batch = next(iter(loader(tokenizer, small_shards, workers=0, caption_sampling="all")))
    b, t = len(batch["keys"]), len(batch["texts"])
    assert batch["pixels"].shape == (b, 3, 32, 32)
    assert t == b * len(CAPTIONS)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == t
    assert batch["lang_ids"].shape == (t,) and batch["caption_image"].max().item() == b - 1
    assert all(text.startswith(CAPTIONS["en"]) for text in batch["source_texts"])


WORKER_COVERAGE = """
import json, sys
from dcclip.config import DataConfig
from dcclip.data.pipeline import ShardLoader
from dcclip.models.tokenizers import TextTokenizer
from dcclip.runtime.preprocess import Preprocess

shards, tokenizer = sys.argv[1], TextTokenizer.from_path(sys.argv[2])
cfg = DataConfig(train=shards, batch_size=4, workers=2, shuffle_buffer=8, max_text_len=16, resampled=False)
keys = []
for rank in range(2):
    for batch in ShardLoader(cfg, Preprocess(image_size=32), tokenizer, rank=rank, world_size=2, seed=3):
        keys.extend(batch["keys"])
print(json.dumps(keys))
"""


def test_two_ranks_two_workers_cover_every_sample_once(small_shards, tmp_path):
    """Two ranks x two DataLoader workers, in a fresh process: forked workers never inherit another test's locks."""
    import json
    import subprocess
    import sys

    from dcclip.models.tokenizers import train_tokenizer

    texts = [f"{text} {i}" for i in range(50) for text in CAPTIONS.values()]
    path = train_tokenizer(texts, 300, tmp_path / "tok")
    run = subprocess.run(
        [sys.executable, "-c", WORKER_COVERAGE, str(small_shards), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    keys = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(keys) == 40
    assert sorted(keys) == [f"s{i:05d}" for i in range(40)]


def test_resampled_ranks_get_equal_batch_counts(tmp_path, tokenizer):
    shards = write_shard_set(tmp_path / "uneven", n=23, per_shard=4)  # last shard is short
    counts = [sum(1 for _ in loader(tokenizer, shards, rank=r, world=2, epoch_samples=40)) for r in range(2)]
    assert counts == [5, 5]


def test_corrupt_image_is_skipped_counted_and_named(tmp_path, tokenizer):
    def corrupt(i):
        return {"jpg": b"\xff\xd8 definitely not a jpeg"} if i == 7 else {}

    shards = write_shard_set(tmp_path / "bad", n=12, per_shard=6, extra_fields=corrupt)
    stream = loader(tokenizer, shards, resampled=False)
    seen, skipped_keys = [], []
    for batch in stream:
        seen.extend(batch["keys"])
        skipped_keys.extend(batch["skipped_keys"])
    assert len(seen) == 11 and "s00007" not in seen
    assert stream.skipped_samples == 1 and skipped_keys == ["s00007"]


def test_an_unreadable_shard_is_counted_even_with_no_batch_after_it(tmp_path, tokenizer):
    from dcclip.data.shard_manifest import ShardError
    from dcclip.engine.loop import forever

    shards = write_shard_set(tmp_path / "set", n=6, per_shard=6)
    (shards / "zz-not-a-tar.tar").write_bytes(b"this is not a tar archive" * 40)
    (shards / "manifest.json").unlink()  # read every tar of the directory, the garbage one last
    stream = loader(tokenizer, shards, resampled=False, batch_size=6)
    assert sum(len(batch["keys"]) for batch in stream) == 6
    assert stream.skipped_samples == 1
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "x.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(ShardError, match=r"no batch in a whole epoch \(1 samples or unreadable shards skipped"):
        next(forever(loader(tokenizer, alone, resampled=False)))


def test_caption_sampling_frequencies():
    langs = ["en", "zh", "fr", "ar"]
    captions = {lang: lang for lang in langs}
    rng = np.random.default_rng(0)
    uniform = language_weights(langs, {}, "uniform", 1.0)
    drawn = Counter(choose_captions(captions, langs, "uniform", uniform, rng)[0][1] for _ in range(8000))
    assert all(abs(drawn[lang] / 8000 - 0.25) < 0.03 for lang in langs)

    counts = {"en": 800, "zh": 100, "fr": 50, "ar": 50}
    for temperature, expected in ((1.0, [0.8, 0.1, 0.05, 0.05]), (0.5, None)):
        weights = language_weights(langs, counts, "temperature", temperature)
        drawn = Counter(choose_captions(captions, langs, "temperature", weights, rng)[0][1] for _ in range(8000))
        freq = np.array([drawn[lang] / 8000 for lang in langs])
        if expected is not None:
            assert np.allclose(freq, expected, atol=0.03)
        else:  # a temperature below 1 flattens the distribution but keeps its order
            assert freq[0] < 0.8 and freq[1] > 0.1 and freq[0] > freq[1] > freq[2]

    only_two = {"en": "a", "ar": "b"}
    assert {c[1] for c in choose_captions(only_two, langs, "all", uniform, rng)} == {"a", "b"}
    assert choose_captions({"de": "x"}, langs, "all", uniform, rng) == []


def test_language_subsets_and_filtering(tmp_path, tokenizer):
    shards = write_shard_set(tmp_path / "sub", n=10, per_shard=5, langs_of=lambda i: ["en"] if i % 2 else ["en", "zh"])
    stream = loader(tokenizer, shards, resampled=False, caption_sampling="all", langs=("zh",), workers=0)
    keys = [k for batch in stream for k in batch["keys"]]
    assert sorted(keys) == [f"s{i:05d}" for i in range(0, 10, 2)]  # samples without zh are filtered out
    assert stream.skipped_samples == 5


def test_resume_continues_the_same_stream(small_shards, tokenizer):
    full = loader(tokenizer, small_shards, epoch_samples=40)
    reference = [batch["keys"] for batch in full]
    first = loader(tokenizer, small_shards, epoch_samples=40)
    taken = []
    for batch in first:
        taken.append(batch["keys"])
        if len(taken) == 3:
            break
    state = first.state_dict()
    resumed = loader(tokenizer, small_shards, epoch_samples=40)
    resumed.load_state_dict(state)
    rest = [batch["keys"] for batch in resumed]
    assert taken + rest == reference


def test_parallel_feature_shards_are_joined(tmp_path, tokenizer):
    def npy(i):
        buffer = io.BytesIO()
        np.save(buffer, np.full(4, i, dtype=np.float16))
        return {"img_emb.npy": buffer.getvalue()}

    data = write_shard_set(tmp_path / "data", n=6, per_shard=3)
    from dcclip.data.shards import ShardSetWriter, iter_samples

    with ShardSetWriter(tmp_path / "feat", max_count=3) as writer:
        for sample in iter_samples(data):
            writer.add(sample["__key__"], npy(int(sample["__key__"][1:])))
    cfg = DataConfig(train=str(data), batch_size=6, workers=0, resampled=False, shuffle_buffer=0)
    stream = ShardLoader(cfg, PRE, tokenizer, feature_fields=["img_emb.npy"], feature_source=str(tmp_path / "feat"))
    batch = next(iter(stream))
    ids = [int(k[1:]) for k in batch["keys"]]
    assert batch["img_emb"].shape == (6, 4)
    assert batch["img_emb"][:, 0].tolist() == [float(i) for i in ids]


def test_too_few_shards_for_ranks_is_an_error(tmp_path, tokenizer):
    shards = write_shard_set(tmp_path / "one", n=3, per_shard=5)
    with pytest.raises(ValueError, match="cannot be split over 2 ranks"):
        loader(tokenizer, shards, rank=0, world=2, resampled=False)
