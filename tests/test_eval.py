"""Evaluation: metrics on constructed cases with known answers, dataset readers, and the report (fake models)."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcclip.eval.alignment import alignment_scores, evaluate_alignment
from dcclip.eval.datasets import ClassificationDataset, DatasetError, RetrievalDataset, open_dataset
from dcclip.eval.report import chart_filename, console_report, draw_chart, run_eval
from dcclip.eval.retrieval import evaluate_retrieval, recall_at_k
from dcclip.eval.stats import wilson_interval
from dcclip.eval.zeroshot import classification_metrics, evaluate_zeroshot, zeroshot_classifier

# --------------------------------------------------------------------------------------------------------------------
# Helpers: images that carry their index, fake models, datasets written in the clip_benchmark layout
# --------------------------------------------------------------------------------------------------------------------


def index_png(index: int, size: int = 8) -> bytes:
    """A lossless PNG whose pixels encode ``index``, so a fake model can recognise the image."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (index % 256, index // 256, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_index(image: Image.Image) -> int:
    """The index a test image carries."""
    red, green, _ = image.convert("RGB").getpixel((0, 0))
    return red + 256 * green


def unit(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class FakeModel:
    """An EmbeddingModel whose embeddings are chosen by the test: images by their carried index, texts by content."""

    def __init__(self, name: str, image_fn: Callable[[int], np.ndarray], text_fn: Callable[[str], np.ndarray]):
        self.name = name
        self.image_fn = image_fn
        self.text_fn = text_fn
        self.image_calls = 0

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        self.image_calls += 1
        return unit(np.stack([self.image_fn(image_index(im)) for im in images]))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return unit(np.stack([self.text_fn(t) for t in texts]))


def hashed_vector(text: str, dim: int = 16) -> np.ndarray:
    """A random but stable vector per text."""
    return np.random.default_rng(zlib.crc32(text.encode("utf-8"))).standard_normal(dim)


def write_wds(split_dir: Path, samples: list[dict[str, bytes]], shard_size: int = 4) -> None:
    """clip_benchmark shards 0.tar..n-1.tar plus nshards.txt."""
    split_dir.mkdir(parents=True, exist_ok=True)
    shards = [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
    for n, shard in enumerate(shards):
        with tarfile.open(split_dir / f"{n}.tar", "w") as tar:
            for i, fields in enumerate(shard, start=n * shard_size):
                for ext, data in sorted(fields.items()):
                    info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (split_dir / "nshards.txt").write_text(f"{len(shards)}\n")


def write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")


# The known-answer zero-shot case: 8 classes, 10 images; the rank of each image's true class is chosen.
LABELS = [0, 0, 1, 1, 2, 2, 3, 4, 5, 6]  # class 7 has no image
TRUE_RANKS = [0, 1, 0, 4, 0, 0, 0, 0, 0, 6]  # 7 right at top-1; ranks 1 and 4 are top-5 hits, rank 6 is a miss
N_CLASSES = 8


def ranked_image_vector(index: int) -> np.ndarray:
    """Class scores of image ``index`` with its true class at position TRUE_RANKS[index] (scores 8, 7, ... 1)."""
    label, rank = LABELS[index], TRUE_RANKS[index]
    others = [c for c in range(N_CLASSES) if c != label]
    order = [*others[:rank], label, *others[rank:]]
    scores = np.zeros(N_CLASSES)
    scores[order] = np.arange(N_CLASSES, 0, -1)
    return scores


def class_text_vector(text: str) -> np.ndarray:
    """One-hot of the class id written in a prompt (``c3`` -> e3)."""
    return np.eye(N_CLASSES)[int(re.search(r"c(\d)", text).group(1))]


def ranked_model(name: str = "ranked") -> FakeModel:
    return FakeModel(name, ranked_image_vector, class_text_vector)


def write_classification_set(root: Path, langs: tuple[str, ...] = ("en", "fr")) -> Path:
    """The known-answer set in clip_benchmark layout: English in .txt, every language in the JSON files."""
    write_wds(root / "test", [{"png": index_png(i), "cls": str(y).encode()} for i, y in enumerate(LABELS)])
    names = {lang: [f"{lang}-c{c}" for c in range(N_CLASSES)] for lang in langs}
    templates = {lang: [f"{lang} photo of {{c}}.", f"{lang} drawing of {{c}}."] for lang in langs}
    (root / "classnames.txt").write_text("\n".join(names["en"]) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates["en"]) + "\n")
    write_json(root / "classnames.json", {k: v for k, v in names.items() if k != "en"})
    write_json(root / "templates.json", {k: v for k, v in templates.items() if k != "en"})
    return root


# Retrieval: 6 images; captions per language; sample 5 has no German caption.
RETRIEVAL_LANGS = ("en", "fr", "de")


def retrieval_captions(i: int) -> dict[str, list[str]]:
    """Two English captions and one caption in each other language (none in German for sample 5)."""
    caps = {"en": [f"en image {i} first", f"en image {i} second"], "fr": [f"fr image {i}"], "de": [f"de image {i}"]}
    if i == 5:
        del caps["de"]
    return caps


def write_retrieval_set(root: Path, n: int = 6) -> Path:
    samples = []
    for i in range(n):
        caps = retrieval_captions(i)
        meta = {"captions": {lang: texts[0] for lang, texts in caps.items()}}
        samples.append({"jpg": index_png(i), "txt": "\n".join(caps["en"]).encode(), "json": json.dumps(meta).encode()})
    write_wds(root / "test", samples, shard_size=4)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def caption_index(text: str) -> int:
    return int(re.search(r"image (\d+)", text).group(1))


def oracle_retrieval_model(name: str = "oracle", dim: int = 16) -> FakeModel:
    """Images and every caption of the same sample share one embedding: perfect retrieval in every language."""
    table = unit(np.random.default_rng(0).standard_normal((64, dim)))
    return FakeModel(name, lambda i: table[i], lambda t: table[caption_index(t)])


# --------------------------------------------------------------------------------------------------------------------
# Zero-shot
# --------------------------------------------------------------------------------------------------------------------


def test_zeroshot_breaks_top1_down_by_class_attributes(tmp_path):
    root = write_classification_set(tmp_path / "cls")
    parity = ["even" if c % 2 == 0 else "odd" for c in range(N_CLASSES)]
    half = ["low" if c < 4 else "high" for c in range(N_CLASSES)]
    write_json(root / "class_attributes.json", {"parity": parity, "half": half})
    results = evaluate_zeroshot(ranked_model(), open_dataset(root), ["en"])["en"]
    # wrong top-1s: image 1 (0 -> 1), image 3 (1 -> 0), image 9 (6 -> 0)
    assert results["top1"] == pytest.approx(0.7) and results["n"] == 10
    assert results["top1_parity"] == pytest.approx(0.8) and results["top1_half"] == pytest.approx(0.9)
    low, high = results["top1_half_ci95"]
    assert low < 0.9 < high
    write_json(root / "class_attributes.json", {"parity": parity[:-1]})
    with pytest.raises(DatasetError, match=r"class_attributes\.json.*'parity'.*8 strings"):
        open_dataset(root)
    (root / "class_attributes.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"class_attributes\.json"):
        open_dataset(root)


def test_zeroshot_known_answer(tmp_path):
    ds = open_dataset(write_classification_set(tmp_path / "cls"))
    assert isinstance(ds, ClassificationDataset) and ds.langs == ["en", "fr"]
    model = ranked_model()
    results = evaluate_zeroshot(model, ds, ["en", "fr"], batch_size=3)
    per_class = [1 / 2, 1 / 2, 1, 1, 1, 1, 0]  # class 7 has no image and does not count
    for lang in ("en", "fr"):
        assert results[lang]["top1"] == pytest.approx(0.7, abs=1e-12)
        assert results[lang]["top5"] == pytest.approx(0.9, abs=1e-12)
        assert results[lang]["mean_per_class_recall"] == pytest.approx(np.mean(per_class), abs=1e-12)
        assert results[lang]["n"] == 10
    assert model.image_calls == 4  # 10 images in batches of 3, embedded once for both languages


def test_classification_metrics_ties_count_against_the_model():
    logits = np.zeros((4, 6))
    metrics = classification_metrics(logits, np.array([0, 1, 2, 3]))
    assert metrics["top1"] == 0.0 and metrics["top5"] == 0.0 and metrics["mean_per_class_recall"] == 0.0


def test_zeroshot_classifier_is_normalised_mean_of_normalised_templates():
    vectors = {
        "a cat": np.array([3.0, 0.0, 0.0]),
        "the cat": np.array([0.0, 1.0, 0.0]),
        "a dog": np.array([0.0, 0.0, 5.0]),
        "the dog": np.array([0.0, 2.0, 2.0]),
    }
    raw = FakeModel("raw", lambda i: np.ones(3), lambda t: vectors[t])
    raw.embed_texts = lambda texts: np.stack([vectors[t] for t in texts])  # unnormalised on purpose
    classes = zeroshot_classifier(raw, ["cat", "dog"], ["a {c}", "the {c}"])
    expected = unit(
        np.stack(
            [
                unit(vectors["a cat"]) + unit(vectors["the cat"]),
                unit(vectors["a dog"]) + unit(vectors["the dog"]),
            ]
        )
    )
    np.testing.assert_allclose(classes, expected, atol=1e-6)
    # Averaging the raw vectors would give a different direction: the test can tell the two recipes apart.
    assert not np.allclose(unit(vectors["a cat"] + vectors["the cat"]), expected[0], atol=1e-3)


# --------------------------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------------------------


def test_recall_at_k_hand_computed():
    similarity = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # text 0 -> image 0: rank 0
            [0.1, 0.5, 0.3, 0.0],  # text 1 -> image 0: rank 2
            [0.2, 0.8, 0.1, 0.0],  # text 2 -> image 1: rank 0
            [0.7, 0.6, 0.0, 0.0],  # text 3 -> image 1: rank 1
            [0.3, 0.3, 0.3, 0.0],  # text 4 -> image 2: three-way tie, counted as rank 2
        ]
    )
    # Image 3 has no caption: a candidate for text->image, not a query for image->text.
    out = recall_at_k(similarity, [0, 0, 1, 1, 2], ks=(1, 2, 3))
    assert out["t2i_R@1"] == pytest.approx(2 / 5)
    assert out["t2i_R@2"] == pytest.approx(3 / 5)
    assert out["t2i_R@3"] == pytest.approx(5 / 5)
    # image 0: best caption 0.9, no other caption as high -> rank 0; image 1: best 0.8 -> rank 0;
    # image 2: its caption scores 0.3 and text 1 also scores 0.3 -> rank 1.
    assert out["i2t_R@1"] == pytest.approx(2 / 3)
    assert out["i2t_R@2"] == pytest.approx(1.0)
    assert out["i2t_R@3"] == pytest.approx(1.0)


def test_recall_at_k_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_texts"):
        recall_at_k(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(np.zeros((2, 2)), [0, 2])


def test_retrieval_reads_captions_and_scores_per_language(tmp_path):
    ds = open_dataset(write_retrieval_set(tmp_path / "ret"))
    assert isinstance(ds, RetrievalDataset)
    assert ds.langs == ["en", "fr", "de"]
    samples = list(ds.samples())
    assert samples[0].captions["en"] == ["en image 0 first", "en image 0 second"]  # txt lines, several per image
    assert "de" not in samples[5].captions
    results = evaluate_retrieval(oracle_retrieval_model(), ds, batch_size=4)
    for lang in RETRIEVAL_LANGS:
        assert all(results[lang][m] == 1.0 for m in ("i2t_R@1", "t2i_R@1", "t2i_R@10"))
        assert results[lang]["n_images"] == 6
    assert (results["en"]["n_texts"], results["fr"]["n_texts"], results["de"]["n_texts"]) == (12, 6, 5)
    constant = FakeModel("constant", lambda i: np.ones(4), lambda t: np.ones(4))
    assert evaluate_retrieval(constant, ds, ["fr"])["fr"]["t2i_R@1"] == 0.0


def test_retrieval_max_samples_and_missing_language(tmp_path):
    ds = open_dataset(write_retrieval_set(tmp_path / "ret"), max_samples=3)
    assert len(list(ds.samples())) == 3
    with pytest.raises(DatasetError, match=r"'ja'"):
        evaluate_retrieval(oracle_retrieval_model(), ds, ["ja"])


# --------------------------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------------------------


def test_alignment_perfect_for_translation_invariant_encoder_and_chance_for_random(tmp_path):
    root = tmp_path / "ret"
    samples = []
    for i in range(40):
        caps = {"en": f"en image {i}", "fr": f"fr image {i}", "de": f"de image {i}"}
        samples.append({"jpg": b"not decoded", "json": json.dumps({"captions": caps}).encode()})
    write_wds(root / "test", samples, shard_size=16)
    (root / "dataset_type.txt").write_text("retrieval\n")
    ds = open_dataset(root)
    keyed = FakeModel("keyed", lambda i: np.ones(16), lambda t: hashed_vector(f"sample {caption_index(t)}"))
    aligned = evaluate_alignment(keyed, ds)
    assert sorted(aligned) == ["de", "fr"]
    for figures in aligned.values():
        assert figures["retrieval_acc"] == 1.0 and figures["retrieval_acc_en"] == 1.0
        assert figures["cos_pairs"] == pytest.approx(1.0, abs=1e-6)
        assert figures["gap"] > 0.8 and figures["n"] == 40
    random_model = FakeModel("random", lambda i: np.ones(16), hashed_vector)
    scores = evaluate_alignment(random_model, ds, ["fr"])["fr"]
    assert scores["retrieval_acc"] <= 0.15  # chance is 1/40
    assert abs(scores["gap"]) < 0.2


def test_alignment_scores_constant_encoder_is_zero():
    emb = unit(np.ones((5, 3)))
    figures = alignment_scores(emb, emb)
    assert figures["retrieval_acc"] == 0.0 and figures["gap"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Dataset readers and their errors
# --------------------------------------------------------------------------------------------------------------------


def test_missing_class_name_for_a_language_names_language_and_file(tmp_path):
    root = write_classification_set(tmp_path / "cls")
    names = json.loads((root / "classnames.json").read_text())
    names["fr"] = names["fr"][:-1]
    write_json(root / "classnames.json", names)
    with pytest.raises(DatasetError, match=r"classnames\.json.*'fr'"):
        open_dataset(root)


def test_language_without_templates_or_names_names_language_and_file(tmp_path):
    root = write_classification_set(tmp_path / "cls")
    names = json.loads((root / "classnames.json").read_text())
    write_json(root / "classnames.json", {**names, "de": [f"de-c{c}" for c in range(N_CLASSES)]})
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match=r"templates\.json.*'de'"):
        evaluate_zeroshot(ranked_model(), ds, ["de"])
    with pytest.raises(DatasetError, match=r"classnames\.json.*'ja'"):
        evaluate_zeroshot(ranked_model(), ds, ["ja"])


def test_template_without_placeholder_names_language_and_file(tmp_path):
    root = write_classification_set(tmp_path / "cls")
    write_json(root / "templates.json", {"fr": ["une photo de {c}.", "une photo"]})
    with pytest.raises(DatasetError, match=r"templates\.json.*'fr'"):
        open_dataset(root)
    write_json(root / "templates.json", {"fr": []})
    with pytest.raises(DatasetError, match=r"templates\.json.*'fr'"):
        open_dataset(root)


def test_wds_layout_errors_name_the_file(tmp_path):
    root = write_classification_set(tmp_path / "cls")
    (root / "test" / "1.tar").unlink()
    with pytest.raises(DatasetError, match=r"1\.tar"):
        open_dataset(root)
    (root / "test" / "nshards.txt").unlink()
    with pytest.raises(DatasetError, match=r"nshards\.txt"):
        open_dataset(root)


def test_max_samples_limits_classification(tmp_path):
    ds = open_dataset(write_classification_set(tmp_path / "cls"), max_samples=4)
    assert [label for _, label in ds.samples()] == LABELS[:4]


def test_imagefolder_with_folder_names_and_multilingual_json(tmp_path):
    root = tmp_path / "folder"
    for label, folder in enumerate(["c0_cat", "c1_dog", "c2_bird"]):
        (root / folder).mkdir(parents=True)
        for j in range(2):
            (root / folder / f"{j}.png").write_bytes(index_png(3 * label + j))
    (root / ".cache").mkdir()  # hidden folders are not classes
    ds = open_dataset(root)
    assert isinstance(ds, ClassificationDataset) and ds.layout == "imagefolder"
    assert ds.classnames["en"] == ["c0 cat", "c1 dog", "c2 bird"]
    assert ds.templates["en"] == ["a photo of a {c}."]
    assert [label for _, label in ds.samples()] == [0, 0, 1, 1, 2, 2]
    model = FakeModel("folder", lambda i: np.eye(3)[i // 3], lambda t: np.eye(3)[int(re.search(r"c(\d)", t)[1])])
    assert evaluate_zeroshot(model, ds, ["en"])["en"]["top1"] == 1.0
    write_json(root / "classnames.json", {"fr": ["c0 chat", "c1 chien", "c2 oiseau"]})
    write_json(root / "templates.json", {"fr": ["une photo de {c}."]})
    ds = open_dataset(root)
    assert evaluate_zeroshot(model, ds, ["fr"])["fr"]["top1"] == 1.0
    write_json(root / "classnames.json", {"fr": ["c0 chat", "c1 chien"]})
    with pytest.raises(DatasetError, match=r"classnames\.json.*'fr'"):
        open_dataset(root)


def test_task_needs_the_right_kind_of_dataset(tmp_path):
    cls_root = write_classification_set(tmp_path / "cls")
    with pytest.raises(DatasetError, match="retrieval set"):
        run_eval("retrieval", [oracle_retrieval_model()], cls_root, None, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown eval task"):
        run_eval("captioning", [oracle_retrieval_model()], cls_root, None, tmp_path / "out")


# --------------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------------


PERCENT_CELL = re.compile(r"^([\d.]+)%(?: \[([\d.]+), ([\d.]+)\])?$")


def _parse_cell(cell: str) -> tuple[float, list[float] | None]:
    """A table cell as (value, [low, high] or None): ``63.4% [60.2, 66.5]`` -> (0.634, [0.602, 0.665])."""
    match = PERCENT_CELL.match(cell)
    if match is None:
        return float(cell), None
    value, low, high = match.groups()
    return float(value) / 100, None if low is None else [float(low) / 100, float(high) / 100]


def _markdown_tables(md: str) -> dict[str, dict[str, dict[str, tuple[float, list[float] | None]]]]:
    """Parse report.md's per-metric tables: {metric: {row label: {column header: (value, interval)}}}."""
    tables: dict[str, dict[str, dict[str, tuple[float, list[float] | None]]]] = {}
    metric, header = None, []
    for line in md.splitlines():
        if line.startswith("### "):
            metric, header = line[4:].strip(), []
        elif metric and line.startswith("| "):
            cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
            if not header:
                header = cells
                tables[metric] = {}
            else:
                tables[metric][cells[0]] = {h: _parse_cell(c) for h, c in zip(header[1:], cells[1:], strict=True)}
        elif not line.strip() and header:
            metric = None
    return tables


def test_run_eval_compare_writes_report_markdown_and_charts(tmp_path):
    root = write_classification_set(tmp_path / "cls")
    flat = FakeModel("flat", lambda i: hashed_vector(f"image {i}", N_CLASSES), lambda t: hashed_vector(t, N_CLASSES))
    out = tmp_path / "report"
    report = run_eval("zeroshot", [ranked_model(), flat], root, None, out, batch_size=4, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"] == report["results"]
    assert saved["task"] == "zeroshot" and saved["dataset"]["samples"] == 10 and saved["dataset"]["classes"] == 8
    assert [m["name"] for m in saved["models"]] == ["ranked", "flat"]
    assert saved["results"]["ranked"]["fr"]["top1"] == pytest.approx(0.7)
    assert saved["mean"]["ranked"]["top5"] == pytest.approx(0.9)
    assert set(saved["langs"]) == {"en", "fr"}
    assert all(m["seconds"]["eval"] >= 0 for m in saved["models"])

    # counted rates carry their Wilson interval and count; the mean's interval uses the smallest count
    fr = saved["results"]["ranked"]["fr"]
    assert fr["n"] == 10 and fr["top1_ci95"] == pytest.approx(wilson_interval(7, 10))
    assert fr["top5_ci95"] == pytest.approx(wilson_interval(9, 10))
    assert "mean_per_class_recall_ci95" not in fr  # not a share of counted trials
    assert list(fr) == ["top1", "top1_ci95", "top5", "top5_ci95", "mean_per_class_recall", "n"]
    mean = saved["mean"]["ranked"]
    assert mean["n"] == 10 and mean["top1_ci95"] == pytest.approx(wilson_interval(7, 10))
    assert saved["intervals"]["method"] == "wilson" and saved["intervals"]["metrics"] == {"top1": "n", "top5": "n"}

    tables = _markdown_tables((out / "report.md").read_text())
    assert list(tables) == saved["metrics"]
    for metric, table in tables.items():
        assert list(table) == [*saved["langs"], "mean"]
        for row, cells in table.items():
            if metric != "mean_per_class_recall":
                assert cells["n"] == (10, None)
            for model in ("ranked", "flat"):
                figures = saved["mean"][model] if row == "mean" else saved["results"][model][row]
                value, interval = cells[model]
                assert value == pytest.approx(figures[metric], abs=5e-4)
                if metric == "mean_per_class_recall":
                    assert interval is None
                else:
                    assert interval == pytest.approx(figures[f"{metric}_ci95"], abs=5e-4)

    for metric in saved["metrics"]:
        png = out / chart_filename("zeroshot", metric)
        assert png.is_file() and Image.open(png).format == "PNG"
        heights = [patch.get_height() for patch in draw_chart(saved, metric).axes[0].patches]
        expected = [
            *(saved["results"]["ranked"][lang][metric] for lang in saved["langs"]),
            saved["mean"]["ranked"][metric],
            *(saved["results"]["flat"][lang][metric] for lang in saved["langs"]),
            saved["mean"]["flat"][metric],
        ]
        np.testing.assert_allclose(heights, expected)
    assert not list(out.glob(".*tmp*")), "no temporary files are left behind"


def test_console_report_shows_intervals_and_where_the_files_are(tmp_path):
    report = run_eval("zeroshot", [ranked_model()], write_classification_set(tmp_path / "cls"), ["fr"], tmp_path / "o")
    text = console_report(report)
    low, high = wilson_interval(7, 10)
    assert f"| fr | 10 | 70.0% [{low * 100:.1f}, {high * 100:.1f}] |" in text
    assert "![" not in text and f"Written to {tmp_path / 'o'}" in text


def test_run_eval_retrieval_and_alignment_reports(tmp_path):
    root = write_retrieval_set(tmp_path / "ret")
    models = [oracle_retrieval_model(), FakeModel("random", lambda i: hashed_vector(str(i)), hashed_vector)]
    report = run_eval("retrieval", models, root, ["en", "de"], tmp_path / "r", progress=False)
    assert report["langs"] == ["en", "de"]
    assert report["results"]["oracle"]["de"]["i2t_R@1"] == 1.0
    de = report["results"]["oracle"]["de"]  # sample 5 has no German caption: 5 image queries out of 6 images
    assert (de["n_images"], de["n_i2t"], de["n_texts"]) == (6, 5, 5)
    assert de["i2t_R@1_ci95"] == pytest.approx(wilson_interval(5, 5)) and de["i2t_R@1_ci95"][1] == 1.0
    assert report["results"]["oracle"]["en"]["t2i_R@1_ci95"] == pytest.approx(wilson_interval(12, 12))
    assert report["mean"]["oracle"]["n_i2t"] == 5 and report["mean"]["oracle"]["n_texts"] == 5
    assert (tmp_path / "r" / chart_filename("retrieval", "t2i_R@5")).is_file()
    aligned = run_eval("alignment", models, root, None, tmp_path / "a", progress=False, names=["A", "B"])
    assert aligned["langs"] == ["fr", "de"] and aligned["results"]["A"]["fr"]["retrieval_acc"] == 1.0
    assert aligned["dataset"]["samples"] == 6
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved["metrics"] == ["retrieval_acc", "retrieval_acc_en", "cos_pairs", "cos_random", "gap"]
    assert "retrieval_acc_ci95" in saved["results"]["B"]["fr"] and "gap_ci95" not in saved["results"]["B"]["fr"]
    with pytest.raises(ValueError, match="unique"):
        run_eval("alignment", models, root, None, tmp_path / "b", names=["A", "A"])


def test_report_without_matplotlib_skips_charts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = run_eval("zeroshot", [ranked_model()], write_classification_set(tmp_path / "cls"), ["en"], tmp_path / "o")
    assert report["files"]["charts"] == {} and not list((tmp_path / "o").glob("*.png"))
    assert json.loads((tmp_path / "o" / "report.json").read_text())["results"]["ranked"]["en"]["top1"] == 0.7


def test_each_loaded_model_is_released_before_the_next_and_collected_only_when_in_a_cycle(tmp_path, monkeypatch):
    import gc
    import weakref

    import dcclip.eval.report as report_module

    root = write_classification_set(tmp_path / "cls")
    loaded: list[weakref.ref] = []
    alive_at_load: list[bool] = []
    collections: list[int] = []
    real_collect = gc.collect

    def fake_load_model(ref, name, **kwargs):
        alive_at_load.append(any(previous() is not None for previous in loaded))
        model = ranked_model(name)
        if ref.endswith("cyclic"):
            model.itself = model  # only the cycle collector can free it
        loaded.append(weakref.ref(model))
        return model

    def counting_collect(*args):
        collections.append(1)
        return real_collect(*args)

    monkeypatch.setattr(report_module, "load_model", fake_load_model)
    monkeypatch.setattr(report_module.gc, "collect", counting_collect)
    refs = [str(tmp_path / "plain"), str(tmp_path / "cyclic"), str(tmp_path / "plain2")]
    report = run_eval("zeroshot", refs, root, ["en"], tmp_path / "out", batch_size=4, progress=False)

    assert report["results"]["plain"]["en"]["top1"] == pytest.approx(0.7)
    assert alive_at_load == [False, False, False]  # one model in memory at a time, the cyclic one included
    assert len(collections) == 1  # refcounting freed the acyclic models: no full collection for them
    assert all(ref() is None for ref in loaded)
