"""The built-in toy world: determinism, the clip_benchmark eval layout, training shards, and caption grammar."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcclip.data import world
from dcclip.data.shards import iter_samples, iter_tar_samples, parse_meta
from dcclip.data.world import (
    COLOURS,
    LANGS,
    SHAPES,
    Thing,
    class_names,
    class_templates,
    describe_digit,
    describe_shapes,
    generate_world,
    noun_phrase,
)
from dcclip.data.world import render as world_render
from dcclip.data.world import write as world_write

ARGS = {"train_samples": 60, "seed": 3, "eval_samples": 100, "image_size": 64, "shard_size": 25}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small world shared by the layout tests."""
    out = tmp_path_factory.mktemp("world")
    generate_world(out, **ARGS)
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _eval_samples(root: Path) -> list[dict]:
    """All samples of an eval set, in shard order, after checking nshards.txt against the tar files."""
    test = root / "test"
    nshards = int((test / "nshards.txt").read_text(encoding="ascii").strip())
    assert sorted(p.name for p in test.glob("*.tar")) == sorted(f"{i}.tar" for i in range(nshards))
    return [s for i in range(nshards) for s in iter_tar_samples(test / f"{i}.tar")]


# ---------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs(world_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_world(again, **ARGS)
    first, second = _files(world_dir), _files(again)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs with the same seed"

    other = tmp_path / "other"
    generate_world(other, **{**ARGS, "seed": 4})
    third = _files(other)
    for name in (
        "train/shard-000000.tar",
        "eval/shapes/test/0.tar",
        "eval/digits/test/0.tar",
        "eval/retrieval/test/0.tar",
    ):
        assert first[name] != third[name], f"{name} is the same for seeds 3 and 4"


def test_worker_processes_write_the_same_bytes(world_dir: Path, tmp_path: Path) -> None:
    """Rendering in two worker processes (any language registered here included) gives the one-process world."""
    generate_world(tmp_path / "two", **ARGS, workers=2)
    first, second = _files(world_dir), _files(tmp_path / "two")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between one and two worker processes"


def test_samples_do_not_depend_on_generation_order(world_dir: Path) -> None:
    samples = list(iter_samples(world_dir / "train"))
    for index in (41, 7, 0):
        image, meta = world_write._train_sample(ARGS["seed"], index, ARGS["image_size"])
        assert samples[index]["jpg"] == image
        assert parse_meta(samples[index]) == meta


def test_world_json_is_the_summary_without_time_or_absolute_paths(world_dir: Path, tmp_path: Path) -> None:
    summary = generate_world(tmp_path, **ARGS)
    stored = json.loads((tmp_path / "world.json").read_text(encoding="utf-8"))
    assert "seconds" not in stored and summary["seconds"] >= 0
    assert str(tmp_path) not in (tmp_path / "world.json").read_text(encoding="utf-8")
    assert stored["paths"]["eval_shapes"] == "eval/shapes"
    assert Path(summary["paths"]["eval_shapes"]) == tmp_path / "eval" / "shapes"
    assert stored["counts"]["train"] == ARGS["train_samples"]
    assert stored["counts"]["train_shapes"] + stored["counts"]["train_digits"] == ARGS["train_samples"]
    assert stored["languages"] == list(LANGS) and stored["colours"] == list(COLOURS)


# ---------------------------------------------------------------------------------------------------------------
# Eval sets: the clip_benchmark WebDataset layout
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "n_classes"), [("shapes", len(COLOURS) * len(SHAPES)), ("digits", 10)])
def test_classification_layout(world_dir: Path, task: str, n_classes: int) -> None:
    root = world_dir / "eval" / task
    samples = _eval_samples(root)
    assert len(samples) == ARGS["eval_samples"]
    assert len(list((root / "test").glob("*.tar"))) == -(-ARGS["eval_samples"] // ARGS["shard_size"])
    labels = []
    for sample in samples:
        assert {"jpg", "cls"} <= sample.keys(), sample["__key__"]
        assert sample["cls"].decode("ascii").strip().isdigit()
        labels.append(int(sample["cls"]))
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.mode == "RGB" and image.size == (ARGS["image_size"], ARGS["image_size"])
    assert all(0 <= label < n_classes for label in labels)
    counts = Counter(labels)
    if ARGS["eval_samples"] >= n_classes:
        assert len(counts) == n_classes
    assert max(counts.values()) - min(counts.values()) <= 1

    names = json.loads((root / "classnames.json").read_text(encoding="utf-8"))
    templates = json.loads((root / "templates.json").read_text(encoding="utf-8"))
    assert (root / "classnames.txt").read_text(encoding="utf-8").splitlines() == names["en"]
    assert (root / "zeroshot_classification_templates.txt").read_text(encoding="utf-8").splitlines() == templates["en"]
    assert set(names) == set(LANGS) == set(templates)
    assert all(len(names[lang]) == n_classes for lang in LANGS)
    for lang in LANGS:
        assert len(templates[lang]) >= 4
        assert len(set(names[lang])) == n_classes, f"{lang} has duplicate class names"
        assert all(t.count("{c}") == 1 for t in templates[lang]), lang


def test_retrieval_layout(world_dir: Path) -> None:
    root = world_dir / "eval" / "retrieval"
    assert (root / "dataset_type.txt").read_text(encoding="ascii").strip() == "retrieval"
    samples = _eval_samples(root)
    assert len(samples) == ARGS["eval_samples"]
    english = []
    for sample in samples:
        assert {"jpg", "txt", "json"} <= sample.keys()
        captions = json.loads(sample["json"])["captions"]
        assert set(captions) == set(LANGS)
        assert sample["txt"].decode("utf-8") == captions["en"]
        english.append(captions["en"])
    # Templates aside, every caption names a different scene: strip the template frame and compare.
    scenes = {re.sub(r"^(a photo of|a drawing of|an image showing|a picture with) ", "", c) for c in english}
    assert len(scenes) == len(english)


def test_tar_members_are_sorted_with_fixed_metadata(world_dir: Path) -> None:
    with tarfile.open(world_dir / "eval" / "shapes" / "test" / "0.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in members)


def test_eval_images_never_repeat_training_images(world_dir: Path) -> None:
    train = {s["jpg"] for s in iter_samples(world_dir / "train")}
    for task in ("shapes", "digits", "retrieval"):
        assert not train & {s["jpg"] for s in _eval_samples(world_dir / "eval" / task)}


def test_eval_digits_are_held_out_sklearn_digits() -> None:
    _, labels, train, held = world_render._digits()
    assert len(set(train.tolist()) | set(held.tolist())) == len(labels) == 1797
    assert not set(train.tolist()) & set(held.tolist())
    assert 0.25 < len(held) / len(labels) < 0.35
    assert set(labels[held].tolist()) == set(range(10))


@pytest.mark.parametrize("task", ["shapes", "digits"])
def test_every_class_name_fits_every_template(task: str) -> None:
    names, templates = class_names(task), class_templates(task)
    for lang in LANGS:
        for template in templates[lang]:
            for name in names[lang]:
                text = template.format(c=name)
                assert "{" not in text and "  " not in text and text == text.strip()


# ---------------------------------------------------------------------------------------------------------------
# Training shards
# ---------------------------------------------------------------------------------------------------------------


def test_training_shards_read_back_with_every_language(world_dir: Path) -> None:
    manifest = json.loads((world_dir / "train" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["samples"] == ARGS["train_samples"]
    assert len(manifest["shards"]) == -(-ARGS["train_samples"] // ARGS["shard_size"])
    seen: Counter = Counter()
    kinds: Counter = Counter()
    for sample in iter_samples(world_dir / "train"):
        meta = parse_meta(sample)
        assert "." not in sample["__key__"] and sample["__key__"].startswith("train_")
        assert meta["source_lang"] == "en" and "en" in meta["captions"]
        assert set(meta["captions"]) <= set(LANGS)
        assert Image.open(io.BytesIO(sample["jpg"])).size == (ARGS["image_size"], ARGS["image_size"])
        seen.update(meta["captions"].keys())
        kinds[meta["kind"]] += 1
    assert set(seen) == set(LANGS)
    assert seen["en"] == ARGS["train_samples"]
    assert set(kinds) == {"shapes", "digits"}


def test_language_frequencies_differ() -> None:
    rng = np.random.default_rng(0)
    counts = Counter(lang for _ in range(4000) for lang in world_write._pick_langs(rng))
    assert counts["en"] == 4000
    assert counts["zh"] > counts["fr"] > counts["ru"] > counts["hi"] > 0.5 * 4000


def test_digit_captions_match_their_labels(world_dir: Path) -> None:
    found = 0
    for sample in iter_samples(world_dir / "train"):
        meta = parse_meta(sample)
        if meta["kind"] != "digits":
            continue
        found += 1
        digit = meta["digit"]
        _, labels, train, _ = world_render._digits()
        assert labels[meta["sklearn_index"]] == digit and meta["sklearn_index"] in set(train.tolist())
        for lang, caption in meta["captions"].items():
            options = {describe_digit(lang, digit, k) for k in range(len(world.language(lang).digit_templates))}
            assert caption in options, (lang, digit, caption)
    assert found > 0


def test_shape_captions_name_the_drawn_objects(world_dir: Path) -> None:
    for sample in iter_samples(world_dir / "train"):
        meta = parse_meta(sample)
        if meta["kind"] != "shapes":
            continue
        english = meta["captions"]["en"]
        for obj in meta["objects"]:
            assert f"{obj['colour']} {obj['shape']}" in english


def test_captioned_positions_and_sizes_are_true() -> None:
    size = 64
    for index in range(400):
        rng = world_render._rng(99, 1, index)
        _, meta, things = world_write._train_shapes(rng, size)
        objects = {(o["colour"], o["shape"], o["pos"]): o for o in meta["objects"]}
        for thing in things:
            if thing.size == "small":
                assert any(o["r"] <= 0.14 for o in meta["objects"] if o["shape"] == thing.shape)
        if len(meta["objects"]) == 2:
            a, b = meta["objects"]
            assert np.hypot(a["x"] - b["x"], a["y"] - b["y"]) >= a["r"] + b["r"], "objects overlap"
            axis = "x" if a["pos"] == "left" else "y"
            assert a[axis] < b[axis]
        elif len(things) == 1 and things[0].pos:
            obj = objects[(things[0].colour, things[0].shape, things[0].pos)]
            x, y = obj["x"], obj["y"]
            checks = {
                "left": x < 0.35,
                "right": x > 0.65,
                "top": y < 0.35,
                "bottom": y > 0.65,
                "centre": abs(x - 0.5) < 0.07 and abs(y - 0.5) < 0.07,
            }
            assert checks[things[0].pos], (things[0], obj)


def test_jittered_colours_keep_their_label() -> None:
    rng = np.random.default_rng(1)
    for name in COLOURS:
        for _ in range(50):
            assert world_render._nearest_colour(world_render._object_rgb(rng, name, 28.0)) == name


# ---------------------------------------------------------------------------------------------------------------
# Grammar: hand-checked ground truth
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "thing", "case", "expected"),
    [
        ("en", Thing("orange", "circle"), "nom", "an orange circle"),
        ("en", Thing("orange", "circle", "small"), "nom", "a small orange circle"),
        ("fr", Thing("red", "circle"), "nom", "un cercle rouge"),
        ("fr", Thing("red", "star"), "nom", "une étoile rouge"),
        ("fr", Thing("green", "star", "small"), "nom", "une petite étoile verte"),
        ("fr", Thing("white", "cross", "large"), "nom", "une grande croix blanche"),
        ("fr", Thing("purple", "heart", "large"), "nom", "un grand cœur violet"),
        ("de", Thing("red", "circle"), "nom", "ein roter Kreis"),
        ("de", Thing("red", "ellipse"), "nom", "eine rote Ellipse"),
        ("de", Thing("red", "square"), "nom", "ein rotes Quadrat"),
        ("de", Thing("red", "circle", "small"), "acc", "einen kleinen roten Kreis"),
        ("de", Thing("white", "heart", "large"), "dat", "einem großen weißen Herzen"),
        ("de", Thing("blue", "ellipse"), "dat", "einer blauen Ellipse"),
        ("de", Thing("pink", "star", "small"), "nom", "ein kleiner rosa Stern"),
        ("es", Thing("red", "circle"), "nom", "un círculo rojo"),
        ("es", Thing("red", "star"), "nom", "una estrella roja"),
        ("es", Thing("black", "cross", "small"), "nom", "una cruz negra pequeña"),
        ("ru", Thing("red", "circle"), "nom", "красный круг"),
        ("ru", Thing("red", "star"), "nom", "красная звезда"),
        ("ru", Thing("red", "heart"), "nom", "красное сердце"),
        ("ru", Thing("blue", "star", "large"), "acc", "большую синюю звезду"),
        ("ru", Thing("blue", "ring", "small"), "nom", "маленькое синее кольцо"),
        ("ar", Thing("red", "circle"), "nom", "دائرة حمراء"),
        ("ar", Thing("red", "square", "small"), "nom", "مربع أحمر صغير"),
        ("ar", Thing("yellow", "star", "large"), "nom", "نجمة صفراء كبيرة"),
        ("hi", Thing("blue", "circle"), "nom", "एक नीला वृत्त"),
        ("hi", Thing("blue", "ellipse", "small"), "nom", "एक छोटी नीली अंडाकार आकृति"),
        ("hi", Thing("red", "ellipse"), "nom", "एक लाल अंडाकार आकृति"),
        ("zh", Thing("red", "circle"), "nom", "一个红色的圆形"),
        ("zh", Thing("blue", "star", "large"), "nom", "一颗蓝色的大五角星"),
        ("ja", Thing("red", "star", "small"), "nom", "小さな赤い星"),
        ("ko", Thing("blue", "circle", "large"), "nom", "큰 파란 원"),
    ],
)
def test_noun_phrases(lang: str, thing: Thing, case: str, expected: str) -> None:
    assert noun_phrase(lang, thing, case) == expected


def test_two_object_captions() -> None:
    scene = [Thing("red", "star", "small", "left"), Thing("blue", "circle", "large", "right")]
    assert describe_shapes("en", scene, 0) == "a small red star on the left and a large blue circle on the right"
    assert describe_shapes("fr", scene, 0) == "une petite étoile rouge à gauche et un grand cercle bleu à droite"
    assert (
        describe_shapes("de", scene, 2)
        == "ein Foto mit einem kleinen roten Stern links und einem großen blauen Kreis rechts"
    )
    assert (
        describe_shapes("es", scene, 0)
        == "una estrella roja pequeña a la izquierda y un círculo azul grande a la derecha"
    )
    assert (
        describe_shapes("ru", scene, 4)
        == "на фото можно увидеть маленькую красную звезду слева и большой синий круг справа"
    )
    assert describe_shapes("ar", scene, 0) == "نجمة حمراء صغيرة على اليسار ودائرة زرقاء كبيرة على اليمين"
    assert describe_shapes("hi", scene, 2) == "तस्वीर में बाईं ओर एक छोटा लाल तारा और दाईं ओर एक बड़ा नीला वृत्त हैं"
    assert describe_shapes("zh", scene, 0) == "左边有一颗红色的小五角星，右边有一个蓝色的大圆形"
    assert describe_shapes("ja", scene, 0) == "左の小さな赤い星と右の大きな青い円"
    assert describe_shapes("ko", scene, 0) == "왼쪽에 있는 작은 빨간 별과 오른쪽에 있는 큰 파란 원"


def test_number_agreement_and_korean_particles() -> None:
    one, two = [Thing("red", "heart")], [Thing("red", "heart"), Thing("green", "circle")]
    assert describe_shapes("de", one, 5) == "auf dem Bild ist ein rotes Herz"
    assert describe_shapes("de", two, 5) == "auf dem Bild sind ein rotes Herz und ein grüner Kreis"
    assert describe_shapes("hi", one, 2) == "तस्वीर में एक लाल दिल है"
    assert describe_shapes("ko", one, 3) == "빨간 하트가 보이는 사진"
    assert describe_shapes("ko", [Thing("red", "star")], 3) == "빨간 별이 보이는 사진"
    assert describe_shapes("ko", two, 4) == "빨간 하트와 초록색 원이 그려진 그림"
    assert describe_shapes("ja", one, 4) == "赤いハートが一つ描かれた絵"
    assert describe_digit("ko", 2, 3) == "숫자 이를 손으로 쓴 그림"
    assert describe_digit("ko", 3, 3) == "숫자 삼을 손으로 쓴 그림"


def test_digit_captions_and_class_names() -> None:
    assert describe_digit("en", 7, 0) == "a handwritten digit seven"
    assert describe_digit("fr", 7, 1) == "le chiffre sept écrit à la main"
    assert describe_digit("de", 7, 0) == "die handgeschriebene Ziffer Sieben"
    assert describe_digit("ru", 7, 0) == "рукописная цифра семь"
    assert describe_digit("en", 3, 3) == "a handwritten number 3"
    names = class_names("digits")
    assert names["en"][0] == "the digit zero" and names["zh"][9] == "数字九" and names["de"][1] == "die Ziffer Eins"
    shapes = class_names("shapes")
    index = world.shape_classes().index(("red", "star"))
    assert shapes["en"][index] == "red star"
    assert shapes["fr"][index] == "une étoile rouge"
    assert shapes["hi"][index] == "लाल तारा"


def test_every_language_has_enough_templates() -> None:
    for lang in LANGS:
        assert len(world.language(lang).shape_templates) >= 4
        assert len(world.language(lang).digit_templates) >= 4
        for k in range(8):
            for scene in ([Thing("pink", "ring")], [Thing("pink", "ring", "small", "top"), Thing("brown", "cross")]):
                text = describe_shapes(lang, scene, k)
                assert text and "{" not in text and "(" not in text and "  " not in text


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"train_samples": 0}, "train_samples"),
        ({"train_samples": 2.5}, "train_samples"),
        ({"train_samples": True}, "train_samples"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": "128"}, "image_size"),
        ({"eval_samples": 0}, "eval_samples"),
        ({"eval_samples": 10**6}, "eval_samples"),
        ({"shard_size": 0}, "shard_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path: Path, kwargs: dict, name: str) -> None:
    args = {"train_samples": 2, "eval_samples": 2, "image_size": 32, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate_world(tmp_path, **args)
    assert not (tmp_path / "train").exists()


def test_bad_caption_arguments() -> None:
    with pytest.raises(ValueError, match="lang"):
        describe_shapes("xx", [Thing("red", "circle")])
    with pytest.raises(ValueError, match="colour"):
        noun_phrase("en", Thing("teal", "circle"))
    with pytest.raises(ValueError, match="size"):
        describe_shapes("en", [Thing("red", "circle", "huge")])
    with pytest.raises(ValueError, match="pos"):
        describe_shapes("en", [Thing("red", "circle", None, "behind")])
    with pytest.raises(ValueError, match="one or two objects"):
        describe_shapes("en", [])
    with pytest.raises(ValueError, match="digit"):
        describe_digit("en", 12)


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    generate_world(tmp_path, train_samples=3, eval_samples=2, image_size=32, progress=True)
    assert "world train" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Adding a language
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def italian():
    """The 11th language of tests/world_language_it.py, registered for one test."""
    from helpers.world_language_it import LANGUAGE

    world.register(LANGUAGE)
    yield LANGUAGE
    world.unregister(LANGUAGE.code)


def test_an_eleventh_language_is_one_file(italian, tmp_path: Path) -> None:
    assert world.language_codes() == (*LANGS, "it")
    assert (
        describe_shapes("it", [Thing("red", "star", "small", "left")], 1)
        == "una foto di una piccola stella rossa a sinistra"
    )
    generate_world(tmp_path, **ARGS)
    captions = [parse_meta(s)["captions"] for s in iter_samples(tmp_path / "train")]
    assert sum("it" in c for c in captions) > 0.2 * len(captions)
    for task, classes in (("shapes", 90), ("digits", 10)):
        names = json.loads((tmp_path / "eval" / task / "classnames.json").read_text("utf-8"))
        assert len(names["it"]) == classes and len(set(names["it"])) == classes
    assert json.loads((tmp_path / "world.json").read_text("utf-8"))["languages"][-1] == "it"


def test_the_ten_languages_are_unchanged_by_an_added_one(italian) -> None:
    assert class_names("shapes")["fr"][0] == "un cercle rouge"
    assert set(class_templates("digits")) == {*LANGS, "it"}


def test_an_incomplete_language_is_refused_naming_the_gap(italian) -> None:
    from dataclasses import replace

    def no_hearts(t: Thing, case: str) -> str:
        if t.shape == "heart":
            raise KeyError("heart")
        return italian.noun_phrase(t, case)

    with pytest.raises(ValueError, match=r"'xx'.*heart"):
        world.register(replace(italian, code="xx", noun_phrase=no_hearts))
    with pytest.raises(ValueError, match=r"'yy'.*positions"):
        world.register(replace(italian, code="yy", positions={"left": "a sinistra"}))
    with pytest.raises(ValueError, match="already registered"):
        world.register(replace(italian))
    assert "xx" not in world.language_codes() and "yy" not in world.language_codes()


def test_the_shapes_eval_set_names_each_class_colour_and_shape(world_dir: Path) -> None:
    root = world_dir / "eval" / "shapes"
    attributes = json.loads((root / "class_attributes.json").read_text("utf-8"))
    names = json.loads((root / "classnames.json").read_text("utf-8"))["en"]
    assert [f"{c} {s}" for c, s in zip(attributes["colour"], attributes["shape"], strict=True)] == names
    assert not (world_dir / "eval" / "digits" / "class_attributes.json").exists()
