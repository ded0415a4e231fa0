"""Single-language shards as img2dataset writes them (KEY.jpg + KEY.txt + KEY.json): read as they are, or re-packed."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from helpers.images import jpeg_bytes

from dcclip.cli import main
from dcclip.config import DataConfig
from dcclip.data.langcodes import normalise_lang
from dcclip.data.pipeline import ShardLoader
from dcclip.data.shards import CaptionFormat, ShardError, add_sample, iter_tar_samples, parse_meta
from dcclip.runtime.preprocess import Preprocess

PRE = Preprocess(image_size=32)
# laion2B-multi style LANGUAGE labels: CLD3 codes, with romanised text, legacy codes and "unknown" among them.
LANGUAGES = ["en", "zh", "fr", "ja-Latn", "und", "zh-Hans", "eng", "iw", "de", "en"]
CAPTION = {"en": "a red circle", "zh": "一个红色的圆形", "fr": "un cercle rouge", "de": "ein roter Kreis"}


def write_img2dataset(out: Path, languages: list[str], per_shard: int = 5) -> Path:
    """Shards laid out exactly as img2dataset writes them: 9-digit keys, jpg + txt + json with its own fields."""
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(languages), per_shard):
        with tarfile.open(out / f"{start // per_shard:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(start, min(start + per_shard, len(languages))):
                label = languages[i]
                text = CAPTION.get(normalise_lang(label) or "", "some caption") + f" {i}"
                meta = {"url": f"https://example.com/{i}.jpg", "key": f"{i:09d}", "status": "success",
                        "caption": text, "width": 48, "height": 48, "LANGUAGE": label}  # fmt: skip
                payload = {"jpg": jpeg_bytes(i), "txt": text.encode(), "json": json.dumps(meta).encode()}
                add_sample(tar, f"{i:09d}", payload)
    return out


@pytest.fixture(scope="module")
def i2d(tmp_path_factory) -> Path:
    return write_img2dataset(tmp_path_factory.mktemp("img2dataset"), LANGUAGES)


def test_language_labels_map_to_dcclip_codes():
    cases = {"en": "en", "EN": "en", "zh-Hans": "zh", "zh_TW": "zh", "eng": "en", "zho": "zh", "cmn": "zh",
             "zho_Hans": "zh", "iw": "he", "pt-BR": "pt", "jpn_Jpan": "ja", "fra": "fr"}  # fmt: skip
    assert {label: normalise_lang(label) for label in cases} == cases
    for unknown in ("und", "", None, "ja-Latn", "ru-Latn", "123", "not a code", 7):
        assert normalise_lang(unknown) is None, unknown


def test_a_txt_caption_needs_its_language_said(i2d):
    sample = next(iter_tar_samples(i2d / "00000.tar"))
    with pytest.raises(ShardError, match=r"data.caption_lang .*data.lang_field"):
        parse_meta(sample)
    meta = parse_meta(sample, CaptionFormat(caption_lang="en"))
    assert meta["captions"] == {"en": "a red circle 0"} and meta["source_lang"] == "en"
    assert meta["url"] == "https://example.com/0.jpg", "the dataset's own fields are kept"


def test_a_fixed_caption_language_trains_every_sample(i2d, tokenizer):
    cfg = DataConfig(train=str(i2d / "{00000..00001}.tar"), caption_lang="en", batch_size=4, workers=0,
                     resampled=False, shuffle_buffer=1, max_text_len=16)  # fmt: skip
    stream = ShardLoader(cfg, PRE, tokenizer)
    batches = list(stream)
    assert stream.langs == ["en"]
    assert sum(len(b["keys"]) for b in batches) == len(LANGUAGES) and stream.skipped_samples == 0
    assert batches[0]["source_texts"] == batches[0]["texts"], "one caption: it is its own source caption"


def test_a_language_field_routes_captions_and_skips_unknown_codes(i2d, tokenizer):
    cfg = DataConfig(train=str(i2d / "{00000..00001}.tar"), lang_field="LANGUAGE", langs=("en", "zh", "de"),
                     batch_size=4, workers=0, resampled=False, shuffle_buffer=1, max_text_len=16)  # fmt: skip
    stream = ShardLoader(cfg, PRE, tokenizer)
    batches = list(stream)
    got = {key: (stream.langs[int(lang)], text) for b in batches
           for key, lang, text in zip(b["keys"], b["lang_ids"], b["texts"], strict=True)}  # fmt: skip
    assert sorted(got) == [f"{i:09d}" for i in (0, 1, 5, 6, 8, 9)]  # en zh zh-Hans eng de en
    assert got["000000005"] == ("zh", "一个红色的圆形 5") and got["000000006"][0] == "en"
    # fr (not a run language), ja-Latn (romanised), und and iw: each skipped and counted, never a crash
    assert stream.skipped_samples == 4


def test_without_a_manifest_a_language_field_needs_the_run_languages(i2d, tokenizer):
    with pytest.raises(ShardError, match=r"set data\.langs"):
        ShardLoader(DataConfig(train=str(i2d / "00000.tar"), lang_field="LANGUAGE"), PRE, tokenizer)


def test_validate_and_inspect_read_img2dataset_shards(i2d, capsys):
    source = str(i2d / "{00000..00001}.tar")
    assert main(["shards", "validate", source, "--lang-field", "LANGUAGE"]) != 0  # und / ja-Latn are reported
    out = capsys.readouterr().out
    assert "'und' is not a language code" in out and "000000004" in out
    assert main(["shards", "inspect", source, "--caption-lang", "en", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["langs"] == {"en": len(LANGUAGES)}


def test_repack_as_dcclip_shards_keeps_metadata_and_lists_unknown_codes(i2d, tmp_path, capsys):
    out = tmp_path / "dcclip"
    args = ["shards", "build", "--from", "wds", str(i2d / "{00000..00001}.tar"), "--out", str(out)]
    assert main([*args, "--lang-field", "LANGUAGE", "--max-count", "4"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 8 and manifest["langs"] == {"de": 1, "en": 3, "fr": 1, "he": 1, "zh": 2}
    assert sorted(s["key"] for s in manifest["skipped"]) == ["000000003", "000000004"]
    assert all("unknown language" in s["reason"] for s in manifest["skipped"])
    assert manifest["caption_format"] == {"txt_lang": "en", "lang_field": "LANGUAGE"}
    sample = next(iter_tar_samples(out / "shard-000000.tar"))
    meta = parse_meta(sample)
    assert meta["captions"] == {"en": "a red circle 0"} and meta["source_meta"]["url"] == "https://example.com/0.jpg"
    assert sample["jpg"] == jpeg_bytes(0), "image bytes go through unchanged"
    assert main(["shards", "validate", str(out)]) == 0


def test_repack_reads_a_pipe_source(i2d, tmp_path):
    out = tmp_path / "from-pipe"
    src = f"pipe:cat {i2d}/{{00000..00001}}.tar"
    assert main(["shards", "build", "--from", "wds", src, "--out", str(out), "--source-lang", "en"]) == 0
    assert json.loads((out / "manifest.json").read_text())["samples"] == len(LANGUAGES)


@pytest.mark.slow
def test_single_caption_shards_train_both_stages(i2d, tmp_path, world_tokenizer_path, saved_teacher_spec):
    from dcclip.config import load_config
    from dcclip.stages.build import run_stage

    common = [f"data.train={i2d / '{00000..00001}.tar'}", "data.caption_lang=en", "data.batch_size=4",
              "data.workers=0", "data.epoch_samples=8", "student.model=test-student",
              f"student.tokenizer={world_tokenizer_path}", f"teacher.spec={saved_teacher_spec}",
              "train.log_every=1", "train.steps=2", "optim.warmup_steps=1"]  # fmt: skip
    run_stage(load_config(None, ["stage=distill", f"train.out_dir={tmp_path / 's1'}", *common]))
    run_stage(
        load_config(None, ["stage=align", f"train.init={tmp_path / 's1'}", f"train.out_dir={tmp_path / 's2'}", *common])
    )
    for run in ("s1", "s2"):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(r["loss"] == r["loss"] and r["skipped_samples"] == 0 for r in records)
