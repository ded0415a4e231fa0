"""Image index: build from a folder or shards, add, refuse another bundle, resume a killed build, search by text.

Everything runs over the tiny real bundle the export and runtime tests share (exported once per session) and images
generated here; the approximate-index test needs faiss (the ``index`` extra) and is skipped without it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.export import shared_bundle
from helpers.images import scene
from PIL import Image

from dcclip.cli import main
from dcclip.runtime import BundleModel, ImageIndex, SearchIndexError, search_text
from dcclip.runtime.bundle import seal_manifest
from dcclip.runtime.errors import InvalidInputError, InvalidTemplateError, InvalidTextError, UnknownLanguageError
from dcclip.runtime.index import INDEX_FORMAT, INDEX_VERSION, bundle_digest
from dcclip.runtime.prompts import class_embeddings, fill_templates
from dcclip.search import add_to_index, build_index
from dcclip.search import build as build_module

N_GOOD = 13


def write_photos(root: Path, seeds: range, corrupt: bool = True) -> Path:
    """Generated images in a folder tree (jpg and png, one nested), plus a corrupt file and a note that is no image."""
    for seed in seeds:
        folder = root / "trip" if seed % 4 == 0 else root
        folder.mkdir(parents=True, exist_ok=True)
        scene(seed, (40 + seed, 36)).save(folder / f"p{seed:03d}.{'png' if seed % 3 else 'jpg'}")
    if corrupt:
        (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        (root / "notes.txt").write_text("not an image", "utf-8")
    return root


def build(bundle: Path, images: Path, out: Path, **options) -> dict:
    """build_index without a progress bar, in small parts so that every test crosses part boundaries."""
    return build_index(bundle, images, out, progress=False, part_inputs=options.pop("part_inputs", 4), **options)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_bundle(tmp_path_factory.getbasetemp())[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return shared_bundle(tmp_path_factory.getbasetemp())[2]


@pytest.fixture(scope="module")
def model(bundle) -> BundleModel:
    return BundleModel(bundle, intra_op_num_threads=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"), range(N_GOOD))


@pytest.fixture(scope="module")
def built(bundle, photos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built") / "index"
    return out, build(bundle, photos, out, batch_size=3)


def brute_force(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every score, stable sort (ties to the lower id), first k."""
    scores = queries @ np.asarray(embeddings, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def image_files(photos: Path) -> list[Path]:
    return sorted((p for p in photos.rglob("p*.*")), key=lambda p: p.relative_to(photos).as_posix())


def resealed_copy(bundle: Path, where: Path) -> Path:
    """The same graphs under a manifest with one more field, sealed again: a valid bundle with another digest."""
    copy = Path(shutil.copytree(bundle, where))
    manifest = json.loads((copy / "manifest.json").read_text("utf-8"))
    (copy / "manifest.json").write_text(json.dumps(seal_manifest({**manifest, "note": "retrained"})), "utf-8")
    return copy


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


def test_build_writes_the_format_with_ids_in_input_order(built, photos, model):
    out, summary = built
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert (manifest["format"], manifest["format_version"]) == (INDEX_FORMAT, INDEX_VERSION)
    assert manifest["bundle_digest"] == bundle_digest(model.manifest) == model.manifest["manifest_sha256"]
    assert (manifest["count"], manifest["embed_dim"], manifest["precision"]) == (N_GOOD, model.embed_dim, "fp32")
    assert summary["count"] == summary["added"] == N_GOOD and summary["images_per_s"] > 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text("utf-8").splitlines()]
    expected = [p.relative_to(photos).as_posix() for p in image_files(photos)]
    assert [row["id"] for row in items] == list(range(N_GOOD))
    assert [row["source"] for row in items] == expected
    assert items[0]["key"] == expected[0].rsplit(".", 1)[0]
    stored = np.load(out / "embeddings.npy")
    assert stored.dtype == np.float16 and stored.shape == (N_GOOD, model.embed_dim)
    reference = model.embed_images([str(p) for p in image_files(photos)])
    np.testing.assert_allclose(stored.astype(np.float32), reference, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(stored.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert not (out / ".parts").exists()


def test_exact_search_equals_brute_force(built, photos, model):
    index = ImageIndex.open(built[0], bundle_digest=bundle_digest(model.manifest))
    queries = model.embed_texts(["a red circle", "un cercle rouge", "一个红色的圆形", "blue"])
    for k in (1, 5, N_GOOD, N_GOOD + 7):
        hits = index.search(queries, k)
        ids, scores = brute_force(index.embeddings, queries, min(k, N_GOOD))
        assert [[hit.id for hit in row] for row in hits] == ids.tolist()
        np.testing.assert_allclose([[hit.score for hit in row] for row in hits], scores, rtol=1e-5, atol=1e-6)
    # against the bundle's own float32 image embeddings: the same images, scores within float16 rounding
    reference = model.embed_images([str(p) for p in image_files(photos)])
    best = index.search(queries, N_GOOD)
    for row, query in zip(best, queries, strict=True):
        np.testing.assert_allclose([hit.score for hit in row], reference[[hit.id for hit in row]] @ query, atol=2e-3)
    assert best[0][0].source == index.items[best[0][0].id]["source"]


def test_ties_resolve_to_the_lower_id_and_bad_queries_are_refused(built, tmp_path):
    rows = clustered(6, 8, 3, np.random.default_rng(1))
    rows[[2, 4]] = rows[0]  # the same image three times
    write_vector_index(tmp_path / "ties", rows, ann=False)
    ties = ImageIndex.open(tmp_path / "ties")
    query = np.asarray(ties.embeddings[0], np.float32)  # a single [d] row is one query
    assert [hit.id for hit in ties.search(query, 3)[0]] == [0, 2, 4]
    assert [hit.id for hit in ties.search(query, 2)[0]] == [0, 2]
    index = ImageIndex.open(built[0])
    first = np.asarray(index.embeddings[0], np.float32)
    with pytest.raises(InvalidInputError, match="k must be a positive int"):
        index.search(first[None], 0)
    with pytest.raises(InvalidInputError, match="shape"):
        index.search(np.zeros((1, index.embed_dim + 1), np.float32), 3)


def test_corrupt_files_are_skipped_and_listed(built):
    out, summary = built
    rows = [json.loads(line) for line in (out / "skipped.jsonl").read_text("utf-8").splitlines()]
    assert summary["skipped"] == 1 and [row["source"] for row in rows] == ["broken.jpg"]
    assert "decode" in rows[0]["reason"] and "0x" not in rows[0]["reason"]


def test_thumbnails_exist_and_only_valid_ids_name_one(built):
    index = ImageIndex.open(built[0])
    for item_id in range(len(index)):
        path = index.thumbnail_path(item_id)
        assert path.parent == built[0] / "thumbs" and path.is_file()
        with Image.open(path) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 160
    assert index.thumbnail_path(np.int64(2)).name == "2.jpg"
    for bad in (-1, len(index), "3", "../manifest.json", True, 1.5, None):
        with pytest.raises(SearchIndexError, match="no item"):
            index.thumbnail_path(bad)


def test_build_refuses_an_existing_index_or_a_foreign_folder(built, bundle, photos, tmp_path):
    with pytest.raises(SearchIndexError, match="already holds an image index"):
        build(bundle, photos, built[0])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(SearchIndexError, match="neither empty"):
        build(bundle, photos, tmp_path / "busy")
    with pytest.raises(SearchIndexError, match="not a dcclip image index"):
        ImageIndex.open(tmp_path / "busy")


def test_a_killed_build_resumes_where_it_stopped(bundle, photos, built, tmp_path, monkeypatch):
    commit, decode = build_module.commit_part, build_module.decode
    decoded: list[str] = []

    def commit_twice(parts_dir, number, part):
        if number == 2:
            raise RuntimeError("killed")
        commit(parts_dir, number, part)

    monkeypatch.setattr(build_module, "commit_part", commit_twice)
    with pytest.raises(RuntimeError, match="killed"):
        build(bundle, photos, tmp_path / "index", batch_size=3)
    assert sorted(p.name for p in (tmp_path / "index" / ".parts").glob("part-*")) == [
        "part-000000.json", "part-000000.npy", "part-000001.json", "part-000001.npy",
    ]  # fmt: skip
    with pytest.raises(SearchIndexError, match="unfinished build"):
        ImageIndex.open(tmp_path / "index")

    monkeypatch.setattr(build_module, "commit_part", commit)
    monkeypatch.setattr(build_module, "decode", lambda model, item: decoded.append(item.source) or decode(model, item))
    summary = build(bundle, photos, tmp_path / "index", batch_size=3)
    assert len(decoded) == N_GOOD + 1 - 8  # two parts of four inputs were done before the kill
    for name in ("embeddings.npy", "items.jsonl", "skipped.jsonl"):
        assert (tmp_path / "index" / name).read_bytes() == (built[0] / name).read_bytes(), name
    thumbs = sorted(p.name for p in (tmp_path / "index" / "thumbs").iterdir())
    assert thumbs == sorted(p.name for p in (built[0] / "thumbs").iterdir())
    assert (summary["count"], summary["resumed"]) == (N_GOOD, 8)


def test_a_resumed_build_takes_files_added_meanwhile_once(bundle, tmp_path, monkeypatch):
    photos = write_photos(tmp_path / "photos", range(6), corrupt=False)
    commit = build_module.commit_part

    def commit_once(parts_dir, number, part):
        if number == 1:
            raise RuntimeError("killed")
        commit(parts_dir, number, part)

    monkeypatch.setattr(build_module, "commit_part", commit_once)
    with pytest.raises(RuntimeError, match="killed"):
        build(bundle, photos, tmp_path / "index")
    scene(50, (30, 30)).save(photos / "a-first.png")  # sorts before everything already embedded
    monkeypatch.setattr(build_module, "commit_part", commit)
    summary = build(bundle, photos, tmp_path / "index")
    sources = [item["source"] for item in ImageIndex.open(tmp_path / "index").items]
    assert summary["resumed"] == 4 and len(sources) == len(set(sources)) == 7 and "a-first.png" in sources


def test_shard_sources_are_indexed_and_a_damaged_shard_is_listed(bundle, shards, model, tmp_path):
    damaged = Path(shutil.copytree(shards, tmp_path / "shards"))
    last = sorted(damaged.glob("*.tar"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    summary = build(bundle, damaged, tmp_path / "index", part_inputs=16)
    index = ImageIndex.open(tmp_path / "index")
    assert 30 <= len(index) < 40 and summary["skipped"] == 1
    assert index.items[0]["source"] == f"{damaged.resolve() / 'shard-000000.tar'}#s00000"
    assert index.items[0]["key"] == "s00000"
    skipped = json.loads((tmp_path / "index" / "skipped.jsonl").read_text("utf-8"))
    assert skipped["source"] == str(last.resolve()) and "truncated or corrupt" in skipped["reason"]
    queries = model.embed_texts(["a red circle", "दायरा"])
    ids, _ = brute_force(index.embeddings, queries, 5)
    assert [[hit.id for hit in row] for row in index.search(queries, 5)] == ids.tolist()


# --------------------------------------------------------------------------------------------------------------------
# Adding, and refusing another bundle
# --------------------------------------------------------------------------------------------------------------------


def test_add_appends_new_images_and_never_renumbers(built, bundle, photos, tmp_path):
    index_dir = Path(shutil.copytree(built[0], tmp_path / "index"))
    before = ImageIndex.open(index_dir)
    old_items, old_rows = list(before.items), np.array(before.embeddings)
    more = write_photos(tmp_path / "more", range(100, 105), corrupt=False)  # same names could not collide: other root
    summary = add_to_index(index_dir, more, progress=False, part_inputs=2)
    assert (summary["added"], summary["count"]) == (5, N_GOOD + 5)
    after = ImageIndex.open(index_dir)
    assert after.items[:N_GOOD] == old_items
    np.testing.assert_array_equal(np.asarray(after.embeddings[:N_GOOD]), old_rows)
    assert [row["id"] for row in after.items[N_GOOD:]] == list(range(N_GOOD, N_GOOD + 5))
    assert all(after.thumbnail_path(i).is_file() for i in range(len(after)))

    scene(7, (50, 50)).save(photos / "p999.jpg")  # the first folder again, with one new image
    try:
        again = add_to_index(index_dir, photos, bundle, progress=False)
    finally:
        (photos / "p999.jpg").unlink()
    assert (again["added"], again["already_indexed"], again["skipped"]) == (1, N_GOOD, 1)
    final = ImageIndex.open(index_dir)
    assert final.items[-1] == {"id": N_GOOD + 5, "key": "p999", "source": "p999.jpg"}
    skipped = (index_dir / "skipped.jsonl").read_text("utf-8").splitlines()
    assert len(skipped) == 1  # the broken file, tried again, is listed once


def test_an_index_from_another_bundle_is_refused(built, bundle, photos, tmp_path):
    other = resealed_copy(bundle, tmp_path / "other-bundle")
    other_model = BundleModel(other)
    assert bundle_digest(other_model.manifest) != ImageIndex.open(built[0]).bundle_digest
    with pytest.raises(SearchIndexError, match="built with bundle 'bundle \\(test-student\\)'") as error:
        ImageIndex.open(built[0], bundle_digest=bundle_digest(other_model.manifest))
    assert str(built[0] / "manifest.json") in str(error.value)
    with pytest.raises(SearchIndexError, match="other-bundle"):
        search_text(other_model, ImageIndex.open(built[0]), "a red circle", "en")
    index_dir = Path(shutil.copytree(built[0], tmp_path / "index"))
    with pytest.raises(SearchIndexError, match=r"not with .*other-bundle"):
        add_to_index(index_dir, photos, other, progress=False)
    with pytest.raises(SearchIndexError, match="holds fp32 embeddings"):
        add_to_index(index_dir, photos, bundle, precision="int8", progress=False)


# --------------------------------------------------------------------------------------------------------------------
# Text search
# --------------------------------------------------------------------------------------------------------------------


def test_search_text_in_two_languages(built, model):
    index = ImageIndex.open(built[0])
    for text, lang in (("a red circle", "en"), ("一个红色的圆形", "zh")):
        hits = search_text(model, index, text, lang, k=5)
        assert len(hits) == 5 and len({hit.id for hit in hits}) == 5
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        query = class_embeddings(model.embed_texts([text]), 1)
        assert [hit.id for hit in hits] == brute_force(index.embeddings, query, 5)[0][0].tolist()
    templates = ["a photo of a {c}.", "{c}"]
    ensembled = search_text(model, index, "red circle", "en", k=3, templates=templates)
    query = class_embeddings(model.embed_texts(fill_templates(["red circle"], templates)), 1)
    assert [hit.id for hit in ensembled] == brute_force(index.embeddings, query, 3)[0][0].tolist()


def test_search_text_checks_its_input_like_the_classifier(built, model):
    index = ImageIndex.open(built[0])
    with pytest.raises(UnknownLanguageError, match="'xx' is not one of"):
        search_text(model, index, "red", "xx")
    with pytest.raises(InvalidTextError, match="non-empty"):
        search_text(model, index, "  ", "en")
    with pytest.raises(InvalidTextError, match="lone surrogate"):
        search_text(model, index, "red \ud800", "en")
    with pytest.raises(InvalidTemplateError, match="templates\\[0\\]"):
        search_text(model, index, "red", "en", templates=["no placeholder"])


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def test_cli_build_search_and_add(bundle, photos, tmp_path, capsys):
    out = str(tmp_path / "index")
    build_args = ["index", "build", "--bundle", str(bundle), "--images", str(photos), "--out", out, "--no-progress"]
    assert main(build_args) == 0
    assert json.loads(capsys.readouterr().out)["count"] == N_GOOD
    assert main(["search", "--index", out, "红色的圆", "--lang", "zh", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and set(hits[0]) == {"id", "key", "source", "score"}
    assert main(["search", "--index", out, "red circle", "-k", "2", "--templates", "default", "--exact"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "id", "source"] and len(table) == 3
    assert main(["index", "add", "--index", out, "--images", str(photos), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["already_indexed"] == N_GOOD
    assert main(["search", "--index", out, "red", "--lang", "xx"]) == 1
    assert "is not one of this bundle's languages" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["index"], ["index", "build"], ["index", "add"], ["search"]])
def test_help_of_the_index_commands(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: dcclip" in capsys.readouterr().out


def test_an_int8_index_adds_in_int8(bundle, photos, tmp_path):
    build(bundle, photos, tmp_path / "index", precision="int8")
    assert ImageIndex.open(tmp_path / "index").manifest["precision"] == "int8"
    more = write_photos(tmp_path / "more", range(300, 302), corrupt=False)
    assert add_to_index(tmp_path / "index", more, progress=False)["added"] == 2  # no precision given: the index's


# --------------------------------------------------------------------------------------------------------------------
# Approximate search (the index extra)
# --------------------------------------------------------------------------------------------------------------------


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Normalised points around random centres: near neighbours exist and are close to each other."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def write_vector_index(out: Path, rows: np.ndarray, ann: bool = True) -> None:
    """An index of ``rows`` in the documented format (no images), with an approximate index, through the builder."""
    out.mkdir(parents=True)
    rows16 = rows.astype(np.float16)
    build_module.write_npy(out / "embeddings.npy", rows16)
    items = ({"id": i, "key": f"v{i}", "source": f"v{i}"} for i in range(len(rows)))
    build_module.write_jsonl(out / "items.jsonl", items)
    entry = build_module.write_ann(out, rows16) if ann else None
    manifest = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, "bundle_digest": "0" * 64}
    manifest.update(embed_dim=rows.shape[1], precision="fp32", count=len(rows), skipped=0, ann=entry)
    (out / "manifest.json").write_text(json.dumps(manifest), "utf-8")


def test_the_approximate_index_finds_the_exact_top_10(tmp_path):
    pytest.importorskip("faiss")
    data = clustered(4050, 32, 40, np.random.default_rng(0))
    rows, queries = data[:4000], data[4000:]
    write_vector_index(tmp_path / "index", rows)
    index = ImageIndex.open(tmp_path / "index")
    assert index.ann_kind == "faiss-ivf" and index.manifest["ann"]["nlist"] > 1
    approximate, exact = index.search(queries, 10), index.search(queries, 10, exact=True)
    recall = np.mean([len({h.id for h in a} & {h.id for h in e}) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall >= 0.9
    for found, truth in zip(approximate, exact, strict=True):  # found by faiss, scored from the stored rows
        by_id = {hit.id: hit.score for hit in truth}
        assert all(hit.score == pytest.approx(by_id.get(hit.id, hit.score), abs=1e-6) for hit in found)


def test_build_with_ann_and_add_keeps_it(bundle, photos, tmp_path, model):
    pytest.importorskip("faiss")
    build(bundle, photos, tmp_path / "index", ann=True)
    index = ImageIndex.open(tmp_path / "index")
    assert index.ann_kind == "faiss-ivf" and (tmp_path / "index" / "ann.faiss").is_file()
    queries = model.embed_texts(["a red circle", "蓝色"])
    expected = brute_force(index.embeddings, queries, 5)[0].tolist()
    assert [[hit.id for hit in row] for row in index.search(queries, 5)] == expected
    more = write_photos(tmp_path / "more", range(200, 203), corrupt=False)
    add_to_index(tmp_path / "index", more, progress=False)
    assert ImageIndex.open(tmp_path / "index").ann_kind == "faiss-ivf"
    add_to_index(tmp_path / "index", more, progress=False, ann=False)
    assert ImageIndex.open(tmp_path / "index").ann_kind is None and not (tmp_path / "index" / "ann.faiss").exists()


def test_a_folder_without_images_is_refused_and_its_tars_named(tmp_path):
    from dcclip.search.build import build_index

    (tmp_path / "set" / "test").mkdir(parents=True)
    (tmp_path / "set" / "test" / "0.tar").write_bytes(b"")
    with pytest.raises(SearchIndexError, match=r"no image files .*test/0\.tar"):
        build_index("unused-bundle", tmp_path / "set", tmp_path / "index")
    assert not (tmp_path / "index").exists()
