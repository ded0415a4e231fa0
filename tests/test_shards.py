"""Shard sets: writer round trip and atomicity, building from folder/CSV/JSONL with bad inputs, validate, inspect."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers.images import random_image_bytes
from PIL import Image

from dcclip.data.shard_build import build_shards
from dcclip.data.shard_inspect import format_inspect, inspect_shards
from dcclip.data.shard_validate import validate_shards
from dcclip.data.shards import (
    MANIFEST_NAME,
    ShardError,
    ShardSetWriter,
    iter_captions,
    iter_samples,
    iter_tar_samples,
    parse_meta,
    read_manifest,
    shard_paths,
)

CAPTIONS = {
    "en": "a red circle on grass",
    "zh": "草地上的红色圆圈",
    "ar": "دائرة حمراء على العشب",
    "ru": "красный круг на траве",
    "hi": "घास पर लाल वृत्त",
    "ja": "芝生の上の赤い円",
}


def write_image(path: Path, seed: int, **kwargs) -> bytes:
    """Write an image file (format from the suffix) and return its bytes."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[path.suffix.lstrip(".").lower()]
    data = random_image_bytes(seed, fmt=fmt, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def samples_by_key(source: Path) -> dict[str, dict]:
    """Every raw sample of a shard set, by key."""
    return {s["__key__"]: s for s in iter_samples(source)}


def skipped_reasons(manifest: dict) -> dict[str, str]:
    """Skipped samples of a manifest: key -> reason."""
    return {s["key"]: s["reason"] for s in manifest["skipped"]}


def no_partials(directory: Path) -> bool:
    """True when no temporary shard or manifest is left in a directory."""
    return not [p for p in directory.iterdir() if p.name.endswith(".partial") or ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------------------- writer


def test_writer_round_trips_every_field(tmp_path):
    emb = np.arange(8, dtype=np.float16)
    npy = io.BytesIO()
    np.save(npy, emb)
    jpg, png = random_image_bytes(1), random_image_bytes(2, fmt="PNG")
    with ShardSetWriter(tmp_path) as writer:
        writer.add(
            "a", {"jpg": jpg, "img_emb.npy": npy.getvalue(), "cls": b"3"}, {"captions": CAPTIONS, "source_lang": "en"}
        )
        writer.add("b", {"png": png}, {"captions": {"zh": CAPTIONS["zh"]}, "source_lang": "zh", "note": "extra"})

    samples = samples_by_key(tmp_path)
    assert set(samples) == {"a", "b"}
    a, b = samples["a"], samples["b"]
    assert a["jpg"] == jpg and b["png"] == png
    assert a["cls"] == b"3"
    assert np.array_equal(np.load(io.BytesIO(a["img_emb.npy"])), emb)
    assert parse_meta(a) == {"captions": CAPTIONS, "source_lang": "en"}
    assert parse_meta(b) == {"captions": {"zh": CAPTIONS["zh"]}, "source_lang": "zh", "note": "extra"}
    assert sorted(iter_captions(tmp_path, ["zh"])) == [CAPTIONS["zh"], CAPTIONS["zh"]]
    manifest = read_manifest(tmp_path)
    assert manifest["samples"] == 2
    assert manifest["langs"] == {**{lang: 1 for lang in CAPTIONS}, "zh": 2}
    assert no_partials(tmp_path)


def test_writer_rolls_shards_by_count_and_counts_languages(tmp_path):
    with ShardSetWriter(tmp_path, max_count=3) as writer:
        for i in range(7):
            captions = {"en": f"x {i}", **({"zh": f"图 {i}"} if i % 2 == 0 else {})}
            writer.add(f"k{i}", {"jpg": random_image_bytes(i)}, {"captions": captions, "source_lang": "en"})

    manifest = read_manifest(tmp_path)
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 1]
    assert [s["langs"] for s in manifest["shards"]] == [{"en": 3, "zh": 2}, {"en": 3, "zh": 1}, {"en": 1, "zh": 1}]
    assert manifest["samples"] == 7 and manifest["langs"] == {"en": 7, "zh": 4}
    assert [len(list(iter_tar_samples(p))) for p in shard_paths(tmp_path)] == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [s["name"] for s in manifest["shards"]]


def test_writer_rolls_shards_by_size_and_never_exceeds_it(tmp_path):
    max_size_mb = 0.1
    payload = os.urandom(20_000)  # five fit in 100 KiB only if tar headers and padding are ignored
    with ShardSetWriter(tmp_path, max_size_mb=max_size_mb) as writer:
        for i in range(12):
            writer.add(f"k{i}", {"bin": payload}, {"captions": {"en": "x"}})

    manifest = read_manifest(tmp_path)
    assert len(manifest["shards"]) > 2
    assert sum(s["samples"] for s in manifest["shards"]) == 12
    for shard in manifest["shards"]:
        size = (tmp_path / shard["name"]).stat().st_size
        assert size == shard["bytes"]
        assert size <= max_size_mb * 1024 * 1024
    assert manifest["bytes"] == sum(s["bytes"] for s in manifest["shards"])


def test_writer_gives_an_oversized_sample_its_own_shard(tmp_path):
    with ShardSetWriter(tmp_path, max_size_mb=0.01) as writer:
        for i in range(3):
            writer.add(f"k{i}", {"bin": os.urandom(30_000)})
    assert [s["samples"] for s in read_manifest(tmp_path)["shards"]] == [1, 1, 1]


def test_exception_inside_writer_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ShardSetWriter(tmp_path, max_count=2) as writer:
        for i in range(3):
            writer.add(f"k{i}", {"jpg": random_image_bytes(i)}, {"captions": {"en": "x"}})
        raise RuntimeError("boom")

    # the finished shard only, no manifest, and the marker that tells readers the set is unfinished
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build-unfinished", "shard-000000.tar"]
    assert len(list(iter_tar_samples(tmp_path / "shard-000000.tar"))) == 2


def test_writer_rejects_bad_samples_before_writing_and_closes_once(tmp_path):
    with ShardSetWriter(tmp_path) as writer:
        writer.add("a", {"jpg": random_image_bytes(0)}, {"captions": {"en": "x"}})
        with pytest.raises(ShardError, match="duplicate"):
            writer.add("a", {"jpg": random_image_bytes(1)})
        with pytest.raises(ShardError, match="must be non-empty"):
            writer.add("a.b", {"jpg": random_image_bytes(1)})
        with pytest.raises(ShardError, match="must be bytes"):
            writer.add("b", {"jpg": random_image_bytes(1), "txt": "not bytes"})  # type: ignore[dict-item]
        first = writer.close(extra={"source": "here"})
    assert read_manifest(tmp_path) == first and first["source"] == "here"  # __exit__ did not overwrite the extra
    assert [s["__key__"] for s in iter_samples(tmp_path)] == ["a"]  # nothing of "b" reached the tar
    with pytest.raises(ShardError, match="closed"):
        writer.add("c", {"jpg": random_image_bytes(2)})
    assert no_partials(tmp_path)


def test_truncated_tar_raises_instead_of_ending_early(tmp_path):
    with ShardSetWriter(tmp_path) as writer:
        for i in range(4):
            writer.add(f"k{i}", {"bin": os.urandom(1000)})
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmember("k2.bin").offset  # a cut at a header boundary: tarfile alone stops silently here
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(ShardError, match=r"truncated or corrupt after member 'k1\.bin'"):
        list(iter_tar_samples(shard))


# ----------------------------------------------------------------------------------------------------------- build


def test_build_from_folder_pairs_json_and_txt(tmp_path, caplog):
    src = tmp_path / "src"
    a = write_image(src / "a.jpg", 1)
    b = write_image(src / "sub" / "b.png", 2)
    c = write_image(src / "c.webp", 3)
    write_image(src / "d.jpeg", 4)  # no caption file
    (src / "a.json").write_text(json.dumps({"captions": {"de": "ein Kreis", "zh": "圆"}, "source_lang": "de"}))
    (src / "sub" / "b.json").write_text(json.dumps({"en": "a square", "ru": "квадрат", "url": "http://x"}))
    (src / "c.txt").write_text("  a triangle \n", encoding="utf-8")

    with caplog.at_level(logging.INFO, logger="dcclip.data.shard_build"):
        manifest = build_shards("folder", src, tmp_path / "out", progress=False)

    samples = samples_by_key(tmp_path / "out")
    assert set(samples) == {"a", "sub_b", "c"}
    assert samples["a"]["jpg"] == a and samples["sub_b"]["png"] == b and samples["c"]["webp"] == c
    assert parse_meta(samples["a"]) == {"captions": {"de": "ein Kreis", "zh": "圆"}, "source_lang": "de"}
    assert parse_meta(samples["sub_b"]) == {"captions": {"en": "a square", "ru": "квадрат"}, "source_lang": "en"}
    assert parse_meta(samples["c"]) == {"captions": {"en": "a triangle"}, "source_lang": "en"}
    assert list(skipped_reasons(manifest)) == ["d"]
    assert "no caption" in skipped_reasons(manifest)["d"] and "d.json" in skipped_reasons(manifest)["d"]
    assert manifest["source_kind"] == "folder" and manifest["langs"] == {"de": 1, "en": 2, "ru": 1, "zh": 1}
    assert "built 3 samples in 1 shards, skipped 1: 1 no caption" in caplog.text


def test_build_from_folder_skips_bad_caption_files(tmp_path):
    src = tmp_path / "src"
    for name in ["good", "badjson", "latin1", "empty", "nosource", "notext"]:
        write_image(src / f"{name}.jpg", len(name))
    (src / "good.txt").write_text("fine")
    (src / "badjson.json").write_text('{"en": "unclosed')
    (src / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (src / "empty.txt").write_text("   \n")
    (src / "nosource.json").write_text(json.dumps({"fr": "un chat"}))
    (src / "notext.json").write_text(json.dumps({"captions": {"en": 5}}))

    manifest = build_shards("folder", src, tmp_path / "out", progress=False)

    reasons = skipped_reasons(manifest)
    assert set(samples_by_key(tmp_path / "out")) == {"good"}
    assert reasons["badjson"].startswith("malformed JSON")
    assert reasons["latin1"].startswith("not UTF-8")
    assert reasons["empty"].startswith("no caption")
    assert reasons["nosource"].startswith("no source-language caption") and "'en'" in reasons["nosource"]
    assert reasons["notext"].startswith("bad caption")


def test_build_from_csv_detects_language_columns(tmp_path):
    write_image(tmp_path / "img" / "one.jpg", 1)
    write_image(tmp_path / "img" / "two.png", 2)
    absolute = tmp_path / "elsewhere" / "three.jpg"
    write_image(absolute, 3)
    table = tmp_path / "data.csv"
    table.write_text(
        "image,key,url,id,en,pt-BR,zh_Hant,source_lang\n"
        "img/one.jpg,first,http://a,7,a dog,um cão,一隻狗,\n"
        'img/two.png,,http://b,8,"a cat, sleeping",,一隻貓,\n'
        f"{absolute},third,http://c,9,,um pássaro,,pt-BR\n",
        encoding="utf-8",
    )

    manifest = build_shards("csv", table, tmp_path / "out", progress=False)

    samples = samples_by_key(tmp_path / "out")
    assert set(samples) == {"first", "img_two", "third"}
    assert parse_meta(samples["first"])["captions"] == {"en": "a dog", "pt-BR": "um cão", "zh_Hant": "一隻狗"}
    assert parse_meta(samples["img_two"])["captions"] == {"en": "a cat, sleeping", "zh_Hant": "一隻貓"}
    assert parse_meta(samples["third"]) == {"captions": {"pt-BR": "um pássaro"}, "source_lang": "pt-BR"}
    assert "png" in samples["img_two"]
    assert manifest["skipped"] == []
    assert manifest["langs"] == {"en": 2, "pt-BR": 2, "zh_Hant": 2}


def test_build_from_csv_with_explicit_languages_and_image_column(tmp_path):
    write_image(tmp_path / "x.jpg", 1)
    table = tmp_path / "data.csv"
    table.write_text("path,en,de,fr\nx.jpg,a dog,ein Hund,un chien\n", encoding="utf-8")
    build_shards("csv", table, tmp_path / "out", langs=["en", "de"], image_column="path", progress=False)
    assert parse_meta(next(iter_samples(tmp_path / "out")))["captions"] == {"en": "a dog", "de": "ein Hund"}
    with pytest.raises(ValueError, match="'image' column"):
        build_shards("csv", table, tmp_path / "out2", progress=False)
    with pytest.raises(ValueError, match="'ja'"):
        build_shards("csv", table, tmp_path / "out3", langs=["ja"], image_column="path", progress=False)


def test_build_from_jsonl(tmp_path):
    write_image(tmp_path / "a.jpg", 1)
    write_image(tmp_path / "b.jpg", 2)
    write_image(tmp_path / "c.jpg", 3)
    lines = [
        json.dumps({"image": "a.jpg", "key": "A", "en": "a house", "ko": "집"}, ensure_ascii=False),
        "",
        json.dumps({"image": "b.jpg", "captions": {"es": "un árbol"}, "source_lang": "es"}, ensure_ascii=False),
        '{"image": "c.jpg", "en": ',
        "[1, 2]",
    ]
    table = tmp_path / "data.jsonl"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")

    manifest = build_shards("jsonl", table, tmp_path / "out", progress=False)

    samples = samples_by_key(tmp_path / "out")
    assert parse_meta(samples["A"]) == {"captions": {"en": "a house", "ko": "집"}, "source_lang": "en"}
    assert parse_meta(samples["b"]) == {"captions": {"es": "un árbol"}, "source_lang": "es"}
    sources = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert sources[f"{table}:4"].startswith("malformed JSON")
    assert sources[f"{table}:5"].startswith("bad row")
    assert len(sources) == 2


def test_build_skips_exactly_the_bad_csv_rows(tmp_path, caplog):
    img = tmp_path / "img"
    for name in ["g1", "g2", "g3", "caption_empty", "dup"]:
        write_image(img / f"{name}.jpg", len(name))
    (img / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (img / "zero.jpg").write_bytes(b"")
    truncated = write_image(img / "cut.jpg", 9, size=(64, 64))
    (img / "cut.jpg").write_bytes(truncated[: len(truncated) // 2])
    write_image(img / "latin.jpg", 10)
    rows = [
        b"key,image,en,zh",
        b"g1,img/g1.jpg,one,\xe4\xb8\x80",
        b"corrupt,img/corrupt.jpg,bad bytes,",
        b"zero,img/zero.jpg,zero bytes,",
        b"missing,img/missing.jpg,not there,",
        b"g2,img/g2.jpg,two,",
        b"caption_empty,img/caption_empty.jpg,,",
        b"g1,img/dup.jpg,same key as the first row,",
        b"latin,img/latin.jpg,caf\xe9 cr\xe8me,",
        b"cut,img/cut.jpg,half a jpeg,",
        b"g3,img/g3.jpg,three,",
    ]
    table = tmp_path / "data.csv"
    table.write_bytes(b"\r\n".join(rows) + b"\r\n")

    with caplog.at_level(logging.INFO, logger="dcclip.data.shard_build"):
        manifest = build_shards("csv", table, tmp_path / "out", max_count=2, progress=False)

    assert sorted(samples_by_key(tmp_path / "out")) == ["g1", "g2", "g3"]
    assert manifest["samples"] == 3 and len(manifest["shards"]) == 2
    reasons = {(s["key"], s["source"]): s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {
        ("corrupt", f"{table}:3"),
        ("zero", f"{table}:4"),
        ("missing", f"{table}:5"),
        ("caption_empty", f"{table}:7"),
        ("g1", f"{table}:8"),
        ("latin", f"{table}:9"),
        ("cut", f"{table}:10"),
    }
    assert reasons["corrupt", f"{table}:3"].startswith("unreadable image")
    assert reasons["zero", f"{table}:4"].startswith("empty image")
    assert (
        reasons["missing", f"{table}:5"].startswith("missing image")
        and "missing.jpg" in reasons["missing", f"{table}:5"]
    )
    assert reasons["caption_empty", f"{table}:7"].startswith("no caption")
    assert reasons["g1", f"{table}:8"].startswith("duplicate key") and f"{table}:2" in reasons["g1", f"{table}:8"]
    assert reasons["latin", f"{table}:9"].startswith("not UTF-8") and "en" in reasons["latin", f"{table}:9"]
    assert reasons["cut", f"{table}:10"].startswith("unreadable image")
    assert "built 3 samples in 2 shards, skipped 7" in caplog.text
    assert validate_shards(tmp_path / "out", progress=False).ok
    assert no_partials(tmp_path / "out")


def test_build_resizes_to_max_side(tmp_path):
    src = tmp_path / "src"
    write_image(src / "wide.jpg", 1, size=(300, 200))
    write_image(src / "tall.png", 2, size=(50, 400))
    small = write_image(src / "small.webp", 3, size=(40, 30))
    write_image(src / "rotated.jpg", 4, size=(300, 200), exif_orientation=6)  # displayed 200 wide, 300 high
    for name in ["wide", "tall", "small", "rotated"]:
        (src / f"{name}.txt").write_text(name)

    build_shards("folder", src, tmp_path / "out", max_side=100, progress=False)

    samples = samples_by_key(tmp_path / "out")

    def opened(key: str, ext: str) -> Image.Image:
        return Image.open(io.BytesIO(samples[key][ext]))

    assert opened("wide", "jpg").size == (100, 67) and opened("wide", "jpg").format == "JPEG"
    assert opened("tall", "png").size == (12, 100) and opened("tall", "png").format == "PNG"
    assert samples["small"]["webp"] == small  # already small: original bytes kept
    assert opened("rotated", "jpg").size == (67, 100)  # upright before resizing


def test_build_rejects_missing_source_and_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="does-not-exist"):
        build_shards("folder", tmp_path / "does-not-exist", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="parquet"):
        build_shards("parquet", tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_build_from_empty_folder_writes_an_empty_manifest(tmp_path):
    (tmp_path / "src").mkdir()
    manifest = build_shards("folder", tmp_path / "src", tmp_path / "out", progress=False)
    assert manifest["samples"] == 0 and manifest["shards"] == [] and list((tmp_path / "out").glob("*.tar")) == []


# -------------------------------------------------------------------------------------------------------- validate


def built_set(tmp_path: Path, n: int = 6, per_shard: int = 3) -> Path:
    """A small shard set built through the writer: ``n`` JPEGs with English and Chinese captions."""
    out = tmp_path / "set"
    with ShardSetWriter(out, max_count=per_shard) as writer:
        for i in range(n):
            captions = {"en": f"sample number {i}", "zh": "样本" * (i + 1)}
            writer.add(
                f"s{i}", {"jpg": random_image_bytes(i, size=(40 + i, 30))}, {"captions": captions, "source_lang": "en"}
            )
    return out


def test_validate_good_set_is_ok(tmp_path):
    report = validate_shards(built_set(tmp_path), progress=False)
    assert report.ok and report.shards == 2 and report.samples == 6
    assert report.format_table() == "checked 2 shards, 6 samples: all OK"


def test_validate_reports_a_corrupt_image_inside_a_tar(tmp_path):
    out = built_set(tmp_path)
    shard = out / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        member = tar.getmember("s4.jpg")
    data = bytearray(shard.read_bytes())
    start = member.offset_data + 200  # keep the JPEG header, garble the entropy-coded data and its end marker
    data[start : member.offset_data + member.size] = np.random.default_rng(1).bytes(member.size - 200)
    shard.write_bytes(bytes(data))

    report = validate_shards(out, progress=False)

    assert not report.ok and report.samples == 6
    assert [(p.shard, p.key) for p in report.problems] == [(str(shard), "s4")]
    assert "does not decode" in report.problems[0].reason
    table = report.format_table()
    assert str(shard) in table and "s4" in table and table.endswith("checked 2 shards, 6 samples: 1 problem(s)")


def test_validate_reports_bad_captions(tmp_path):
    out = tmp_path / "set"
    with ShardSetWriter(out) as writer:
        writer.add("good", {"jpg": random_image_bytes(0)}, {"captions": {"en": "x"}, "source_lang": "en"})
        writer.add("nosrc", {"jpg": random_image_bytes(1)}, {"captions": {"en": "x"}, "source_lang": "de"})
        writer.add("noimg", {"json": b"not json"})
    report = validate_shards(out, progress=False)
    reasons = {p.key: p.reason for p in report.problems}
    assert "source_lang 'de'" in reasons["nosrc"]
    assert set(reasons) == {"nosrc", "noimg"} and len(report.problems) == 3  # noimg: no image and bad JSON


def test_validate_reports_a_truncated_tar(tmp_path):
    out = built_set(tmp_path)
    shard = out / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:2500])  # cut inside the first sample's data

    report = validate_shards(out, progress=False)

    assert not report.ok
    shard_problems = [p for p in report.problems if p.shard == str(shard)]
    assert any("truncated or corrupt" in p.reason for p in shard_problems)
    assert any("manifest lists 3 samples" in p.reason for p in shard_problems)
    assert report.samples == 3  # the intact shard still got checked


# --------------------------------------------------------------------------------------------------------- inspect


def test_inspect_stats_and_contact_sheet(tmp_path):
    out = built_set(tmp_path, n=5, per_shard=2)
    sheet = tmp_path / "sheets" / "sheet.png"

    stats = inspect_shards(out, contact_sheet=sheet, n=4, seed=3)

    assert stats["samples"] == 5 and stats["shards"] == 3
    assert stats["bytes"] == sum(p.stat().st_size for p in out.glob("*.tar"))
    assert stats["langs"] == {"en": 5, "zh": 5}
    assert stats["caption_chars"]["en"] == {"min": 15, "mean": 15.0, "max": 15}
    assert stats["caption_chars"]["zh"] == {"min": 2, "mean": 6.0, "max": 10}
    assert stats["caption_words"] == {"en": {"min": 3, "mean": 3.0, "max": 3}}  # no word counts for Chinese
    assert stats["image_width"] == {"min": 40, "mean": 42.0, "max": 44}
    assert stats["image_height"] == {"min": 30, "mean": 30.0, "max": 30}
    assert stats["image_formats"] == {"JPEG": 5}
    assert stats["unreadable"] == 0 and stats["errors"] == []

    with Image.open(sheet) as img:
        img.load()
        assert img.format == "PNG" and img.width >= 2 * 224 and img.height > 2 * 224
    assert no_partials(sheet.parent)
    again = tmp_path / "again.png"
    inspect_shards(out, contact_sheet=again, n=4, seed=3)
    assert again.read_bytes() == sheet.read_bytes()  # same seed, same picks

    text = format_inspect(stats)
    assert "3 shards, 5 samples" in text and "JPEG 5" in text
    assert any(line.split()[:2] == ["zh", "5"] for line in text.splitlines())


def test_inspect_survives_broken_samples(tmp_path):
    out = tmp_path / "set"
    long_caption = "word " * 200
    with ShardSetWriter(out) as writer:
        writer.add("ok", {"jpg": random_image_bytes(0)}, {"captions": {"en": long_caption, "ja": "長い" * 100}})
        writer.add("broken", {"jpg": b"garbage"}, {"captions": {"en": "x"}})
    stats = inspect_shards(out, contact_sheet=tmp_path / "sheet.png", n=16)
    assert stats["samples"] == 2 and stats["unreadable"] == 1
    assert Image.open(tmp_path / "sheet.png").size[0] > 0
    assert "unreadable" in format_inspect(stats)


def test_manifest_is_the_shard_list(tmp_path):
    out = built_set(tmp_path)
    assert [Path(p).name for p in shard_paths(out)] == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads((out / MANIFEST_NAME).read_text())["samples"] == 6


def test_build_refuses_a_degenerate_strip_naming_why(tmp_path):
    src = tmp_path / "src"
    write_image(src / "ok.png", 1)
    Image.new("L", (200_000, 1)).save(src / "strip.png", optimize=True)
    for name in ("ok", "strip"):
        (src / f"{name}.txt").write_text("a caption", encoding="utf-8")
    manifest = build_shards("folder", src, tmp_path / "out", progress=False)
    assert set(samples_by_key(tmp_path / "out")) == {"ok"}
    assert "longer than wide" in skipped_reasons(manifest)["strip"]


def test_a_rebuild_killed_half_way_leaves_no_lying_manifest(tmp_path, monkeypatch):
    from dcclip.data import shard_build
    from dcclip.data.shards import BUILDING_MARKER, MANIFEST_NAME, ShardError, shard_paths

    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(12):
        write_image(src / f"{i:02d}.png", i)
        (src / f"{i:02d}.txt").write_text(f"caption {i}", encoding="utf-8")
    build_shards("folder", src, out, max_count=3, progress=False)
    assert len(shard_paths(out)) == 4

    real, calls = shard_build._build_one, []

    def killed_after_five(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt("kill -9")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(shard_build, "_build_one", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        build_shards("folder", src, out, max_count=2, progress=False)
    assert not (out / MANIFEST_NAME).exists() and (out / BUILDING_MARKER).exists()
    with pytest.raises(ShardError, match="did not finish"):
        shard_paths(out)
    monkeypatch.undo()
    manifest = build_shards("folder", src, out, max_count=2, progress=False)
    assert manifest["samples"] == 12 and not (out / BUILDING_MARKER).exists()


def test_every_folder_file_is_used_or_listed_with_its_reason(tmp_path):
    src = tmp_path / "src"
    write_image(src / "a.png", 1)
    Image.new("RGB", (20, 20), "red").save(src / "b.gif")
    Image.new("RGB", (20, 20), "blue").save(src / "c.bmp")
    (src / "d.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (src / "orphan.txt").write_text("a caption with no image")
    (src / ".DS_Store").write_bytes(b"\0")
    for name in ("a", "b", "c", "d"):
        (src / f"{name}.txt").write_text(f"caption {name}", encoding="utf-8")
    manifest = build_shards("folder", src, tmp_path / "out", progress=False)
    samples = samples_by_key(tmp_path / "out")
    assert set(samples) == {"a", "b", "c"} and "jpg" in samples["b"] and "jpg" in samples["c"]
    reasons = skipped_reasons(manifest)
    assert reasons["d_svg"].startswith("not an image") and ".svg" in reasons["d_svg"]
    assert reasons["d_txt"].startswith("no image") and reasons["orphan_txt"].startswith("no image")
    assert set(reasons) == {"d_svg", "d_txt", "orphan_txt"}  # hidden files are not inputs


def test_a_csv_row_naming_an_svg_is_refused_like_a_folder_file(tmp_path):
    (tmp_path / "x.svg").write_text("<svg/>")
    (tmp_path / "pairs.csv").write_text("image,en\nx.svg,a drawing\n", encoding="utf-8")
    manifest = build_shards("csv", tmp_path / "pairs.csv", tmp_path / "out", progress=False)
    assert manifest["samples"] == 0 and next(iter(skipped_reasons(manifest).values())).startswith("not an image")
