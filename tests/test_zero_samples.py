"""Runs that do nothing fail and say why; a dry-run feature cache trains on exactly the samples it covers (issue 29)."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers.data import write_shard_set
from helpers.images import jpeg_bytes
from helpers.serve_bundles import onnx_bundle

from dcclip.cli import main
from dcclip.cli.common import INPUT_EXIT
from dcclip.config import DataConfig
from dcclip.data.features import FeatureMismatchError
from dcclip.data.pipeline import ShardLoader
from dcclip.data.shards import add_sample, iter_samples
from dcclip.runtime.preprocess import Preprocess

PRE = Preprocess(image_size=32)
CAPTION = json.dumps({"captions": {"en": "a red circle"}, "source_lang": "en"}).encode()


def empty_tar(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tarfile.open(path, "w").close()
    return path


def corrupt_shard(path: Path, n: int = 3) -> Path:
    """A shard whose samples all fail: two with images that do not decode, the rest with no image at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            fields = {"jpg": b"not a jpeg " + bytes([i])} if i < 2 else {"txt.bad": b"x"}
            add_sample(tar, f"k{i:03d}", {**fields, "json": CAPTION})
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return onnx_bundle(tmp_path_factory.mktemp("zero") / "bundle")


# ------------------------------------------------------------------------------------ runs that do nothing fail


def test_validate_of_an_empty_tar_fails(tmp_path, capsys):
    tar = empty_tar(tmp_path / "empty.tar")
    assert main(["shards", "validate", "--shards", str(tar)]) == INPUT_EXIT
    assert f"{tar}: no usable sample: the 1 shard(s) hold no samples" in capsys.readouterr().out


def test_validate_of_all_corrupt_samples_counts_the_reasons(tmp_path, capsys):
    tar = corrupt_shard(tmp_path / "bad.tar")
    assert main(["shards", "validate", "--shards", str(tar)]) == INPUT_EXIT
    out = capsys.readouterr().out
    assert f"{tar}: no usable sample: all 3 samples would be skipped" in out
    assert "2 × image .jpg does not decode" in out and "1 × no image field" in out


def test_inspect_of_all_corrupt_samples_fails(tmp_path, capsys):
    tar = corrupt_shard(tmp_path / "bad.tar")
    assert main(["shards", "inspect", "--shards", str(tar)]) == INPUT_EXIT
    assert "no usable sample: all 3 samples are unreadable (3 × image does not decode)" in capsys.readouterr().out


def index_args(bundle: Path, images: Path, out: Path) -> list[str]:
    return ["index", "build", "--bundle", str(bundle), "--images", str(images), "--out", str(out), "--no-progress"]


def test_index_build_of_only_unreadable_images_fails_and_writes_no_index(bundle, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    assert main(index_args(bundle, folder, tmp_path / "i")) == INPUT_EXIT
    err = capsys.readouterr().err
    assert str(folder) in err and "all 2 inputs skipped (2 × InvalidImageError)" in err
    assert not (tmp_path / "i" / "manifest.json").exists() and not (tmp_path / "i" / ".parts").exists()


def test_index_build_of_shards_with_no_usable_sample_fails(bundle, tmp_path, capsys):
    assert main(index_args(bundle, empty_tar(tmp_path / "e" / "empty.tar"), tmp_path / "i")) == INPUT_EXIT
    assert "no images found" in capsys.readouterr().err
    assert main(index_args(bundle, corrupt_shard(tmp_path / "c" / "bad.tar"), tmp_path / "j")) == INPUT_EXIT
    assert "all 3 inputs skipped (2 × InvalidImageError; 1 × sample has no" in capsys.readouterr().err


def test_index_add_of_only_unreadable_images_fails_and_keeps_the_index(bundle, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    (good / "one.jpg").write_bytes(jpeg_bytes(1))
    assert main(index_args(bundle, good, tmp_path / "i")) == 0
    before = (tmp_path / "i" / "manifest.json").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"broken")
    assert main(["index", "add", "--index", str(tmp_path / "i"), "--images", str(bad), "--no-progress"]) == INPUT_EXIT
    assert "the index is unchanged" in capsys.readouterr().err
    assert (tmp_path / "i" / "manifest.json").read_text() == before
    assert main(["index", "add", "--index", str(tmp_path / "i"), "--images", str(good), "--no-progress"]) == 0


def test_cache_teacher_of_only_corrupt_samples_fails_and_caches_nothing(saved_teacher_spec, tmp_path, capsys):
    data = corrupt_shard(tmp_path / "data" / "shard-000000.tar").parent
    args = ["cache-teacher", "--out", str(tmp_path / "f"), f"data.train={data}", f"teacher.spec={saved_teacher_spec}"]
    assert main(args) == INPUT_EXIT
    err = capsys.readouterr().err
    assert "no sample could be encoded in 1 shard(s), all 3 samples skipped" in err and "nothing was cached" in err
    assert not list((tmp_path / "f").glob("*"))


# ------------------------------------------------------------------------------- a dry-run feature cache, then distill


@pytest.fixture(scope="module")
def dry_run_features(toy_world, saved_teacher_spec, tmp_path_factory) -> Path:
    """Teacher features of the first 50 of the toy world's 160 samples (shard 0 whole, shard 1 cut after 10)."""
    out = tmp_path_factory.mktemp("dry") / "features"
    args = ["cache-teacher", "--out", str(out), "--max-samples", "50", f"data.train={toy_world / 'train'}"]
    assert main([*args, f"teacher.spec={saved_teacher_spec}", "teacher.batch_size=16"]) == 0
    return out


def feature_keys(features: Path) -> list[str]:
    return [sample["__key__"] for sample in iter_samples(features)]


def test_the_feature_set_records_what_it_covers(dry_run_features):
    info = json.loads((dry_run_features / "teacher.json").read_text())
    assert info["max_samples"] == 50 and info["samples"] == 50 == len(feature_keys(dry_run_features))
    assert info["shards"] == ["shard-000000.tar", "shard-000001.tar"]


def test_a_dry_run_loader_reads_exactly_the_covered_samples(toy_world, dry_run_features, tokenizer, caplog):
    info = json.loads((dry_run_features / "teacher.json").read_text())
    cfg = DataConfig(train=str(toy_world / "train"), batch_size=8, workers=0, resampled=False, shuffle_buffer=0)
    with caplog.at_level(logging.INFO, logger="dcclip"):
        loader = ShardLoader(
            cfg, PRE, tokenizer, feature_fields=["img_emb.npy"], feature_source=str(dry_run_features), feature_info=info
        )
    assert "features cover 50 of 160 samples in 2 of 4 shards; training on the covered samples" in caplog.text
    keys = [key for batch in loader for key in batch["keys"]]
    assert sorted(keys) == sorted(feature_keys(dry_run_features)) and loader.skipped_samples == 0


def test_distill_on_the_full_shards_with_a_dry_run_cache(
    toy_world, world_tokenizer_path, dry_run_features, saved_teacher_spec, tmp_path, caplog
):
    args = [
        "distill", f"data.train={toy_world / 'train'}", f"data.features={dry_run_features}", "data.augment=none",
        "data.batch_size=8", "data.workers=0", "student.model=test-student",
        f"student.tokenizer={world_tokenizer_path}", f"teacher.spec={saved_teacher_spec}",
        f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="dcclip"):
        assert main(args) == 0
    assert "features cover 50 of 160 samples in 2 of 4 shards" in caplog.text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0


def test_features_of_other_data_are_refused_naming_the_shard(tmp_path, tokenizer, dry_run_features):
    data = write_shard_set(tmp_path / "data", n=6, per_shard=3)
    other = tmp_path / "other"
    shutil.copytree(dry_run_features, other)
    (other / "shard-000001.tar").rename(other / "shard-000042.tar")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["shards"][1]["name"] = "shard-000042.tar"
    (other / "manifest.json").write_text(json.dumps(manifest))
    cfg = DataConfig(train=str(data), batch_size=6, workers=0, resampled=False, shuffle_buffer=0)
    with pytest.raises(FeatureMismatchError, match=r"feature shard shard-000042\.tar has no data shard"):
        ShardLoader(cfg, PRE, tokenizer, feature_fields=["img_emb.npy"], feature_source=str(other), feature_info={})


def test_a_complete_feature_set_missing_shards_is_refused_with_the_fix(toy_world, dry_run_features, tokenizer):
    info = {**json.loads((dry_run_features / "teacher.json").read_text()), "max_samples": None}
    cfg = DataConfig(train=str(toy_world / "train"), batch_size=8, workers=0, resampled=False, shuffle_buffer=0)
    with pytest.raises(FeatureMismatchError, match=r"2 of 4 data shards \(no features for shard-000002\.tar"):
        ShardLoader(
            cfg, PRE, tokenizer, feature_fields=["img_emb.npy"], feature_source=str(dry_run_features), feature_info=info
        )


def test_a_resampled_stream_with_no_usable_sample_fails_instead_of_drawing_forever(tmp_path, tokenizer, monkeypatch):
    import itertools

    import dcclip.data.pipeline as pipeline

    endless = pipeline.shard_pairs
    monkeypatch.setattr(pipeline, "shard_pairs", lambda *a: itertools.islice(endless(*a), 50))  # old code: no hang
    data = corrupt_shard(tmp_path / "data" / "shard-000000.tar", n=6).parent
    cfg = DataConfig(train=str(data), batch_size=4, workers=0, resampled=True, epoch_samples=8, shuffle_buffer=0)
    with pytest.raises(ValueError, match=r"no usable sample in the 1 training shard\(s\) .*4 × no image field"):
        next(iter(ShardLoader(cfg, PRE, tokenizer)))


def test_a_decoder_message_naming_a_buffer_address_is_warned_once():
    from dcclip.data.pipeline import skip_kind

    reason = "cannot identify image file <_io.BytesIO object at 0x{}>"
    assert skip_kind("k001", reason.format("7f01")) == skip_kind("k002", reason.format("7f02")) == reason[:26]


def test_tokenizer_train_with_no_caption_in_the_asked_languages_names_the_shards(tmp_path, capsys):
    shards = write_shard_set(tmp_path / "set", n=4, per_shard=4)
    code = main(
        [
            "tokenizer",
            "train",
            "--shards",
            str(shards),
            "--langs",
            "xx",
            "--vocab-size",
            "400",
            "--out",
            str(tmp_path / "tok"),
        ]
    )
    assert code == INPUT_EXIT
    err = capsys.readouterr().err
    assert str(shards) in err and "no caption to train on" in err and "shards validate" in err
    assert not (tmp_path / "tok").exists()
