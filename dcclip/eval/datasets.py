"""Eval dataset readers: the clip_benchmark WebDataset layout (classification and retrieval) and ImageFolder.

clip_benchmark layout, exactly as published::

    ROOT/test/nshards.txt, ROOT/test/0.tar .. ROOT/test/{n-1}.tar
    ROOT/classnames.txt, ROOT/zeroshot_classification_templates.txt    (classification; samples: image + ``cls``)
    ROOT/dataset_type.txt = "retrieval"                                 (retrieval; samples: image + ``txt``)

dcclip adds multilingual ``classnames.json`` / ``templates.json`` keyed by language beside the text files, and for
retrieval a per-sample ``json`` with ``{"captions": {lang: text}}``. English falls back to the .txt files. ImageFolder
is ``ROOT/<class>/*.jpg`` with class names from the folder names or from the same classnames files.

Readers only parse tars with the standard library (no clip_benchmark, no webdataset) and yield PIL images lazily, so
an evaluation streams a large set in batches.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from dcclip.data.shards import iter_tar_samples
from dcclip.data.sources import RemoteOptions, describe, is_local, join, read_bytes
from dcclip.runtime.constants import IMAGE_EXTENSIONS, SHARD_IMAGE_EXTENSIONS
from dcclip.runtime.preprocess import decode_image
from dcclip.runtime.prompts import PLACEHOLDER

log = logging.getLogger(__name__)

__all__ = [
    "CLASSNAMES_JSON",
    "CLASSNAMES_TXT",
    "TEMPLATES_JSON",
    "TEMPLATES_TXT",
    "ClassificationDataset",
    "DatasetError",
    "RetrievalDataset",
    "RetrievalSample",
    "open_dataset",
    "read_classification_text",
]

CLASSNAMES_TXT = "classnames.txt"
TEMPLATES_TXT = "zeroshot_classification_templates.txt"
CLASSNAMES_JSON = "classnames.json"
TEMPLATES_JSON = "templates.json"
DATASET_TYPE = "dataset_type.txt"
NSHARDS = "nshards.txt"
ATTRIBUTES_JSON = "class_attributes.json"  # optional: {attribute: [value of each class]}, e.g. colour, shape
# The shard image fields in clip_benchmark's order of preference (webp, png, jpg, jpeg) when a sample holds several.
_WDS_FIRST = ("webp", "png")
WDS_IMAGE_FIELDS = (*_WDS_FIRST, *(ext for ext in SHARD_IMAGE_EXTENSIONS if ext not in _WDS_FIRST))
IMAGEFOLDER_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTENSIONS)
DEFAULT_TEMPLATES = ("a photo of a {c}.",)  # CLIP's plain prompt, used only when a set ships no templates at all


class DatasetError(ValueError):
    """An eval dataset that cannot be used as asked; the message names the file and, where it matters, the language."""


# --------------------------------------------------------------------------------------------------------------------
# Class names and templates
# --------------------------------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (clip_benchmark's classnames/templates format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_lang_json(path: Path) -> dict[str, list[str]]:
    """A ``{lang: [str, ...]}`` JSON file, checked for shape; errors name the file and the language."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise DatasetError(f"{path}: expected an object keyed by language, got {type(payload).__name__}")
    for lang, values in payload.items():
        if not isinstance(values, list):
            raise DatasetError(f"{path}: language {lang!r} must map to a list of strings")
    return payload


def _lang_table(root: Path, json_name: str, txt_name: str) -> tuple[dict[str, list[Any]], dict[str, Path]]:
    """Entries per language from ``json_name`` plus English from ``txt_name``, and the file each language came from."""
    table: dict[str, list[Any]] = {}
    sources: dict[str, Path] = {}
    if (root / json_name).is_file():
        table = _read_lang_json(root / json_name)
        sources = dict.fromkeys(table, root / json_name)
    if "en" not in table and (root / txt_name).is_file():
        table["en"], sources["en"] = _read_lines(root / txt_name), root / txt_name
    return table, sources


def _check_classnames(names: dict[str, list[Any]], sources: dict[str, Path], n_classes: int | None) -> int:
    """Every language names every class (same count, non-empty strings); returns the class count."""
    if not names:
        return n_classes or 0
    lengths = Counter(len(values) for values in names.values())
    # Without a class count from the data, the most common length (the longest on a tie) is taken as complete.
    expected = n_classes if n_classes is not None else max(lengths, key=lambda n: (lengths[n], n))
    for lang, values in names.items():
        missing = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
        if len(values) != expected or missing:
            detail = f"empty or non-string names at {missing[:5]}" if missing else f"{len(values)} names"
            raise DatasetError(
                f"{sources[lang]}: language {lang!r} is missing class names ({detail}; expected {expected})"
            )
    return expected


def _check_templates(templates: dict[str, list[Any]], sources: dict[str, Path]) -> None:
    """Every language has templates, each a string with one ``{c}`` placeholder."""
    for lang, values in templates.items():
        if not values:
            raise DatasetError(f"{sources[lang]}: language {lang!r} has no templates")
        for template in values:
            if not isinstance(template, str) or PLACEHOLDER not in template:
                raise DatasetError(
                    f"{sources[lang]}: template {template!r} of language {lang!r} has no {PLACEHOLDER} placeholder"
                )


def read_classification_text(
    root: Path, n_classes: int | None = None
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """Class names and templates per language under ``root``, validated; plus the source file of each table.

    Returns (classnames, templates, sources) where sources maps ``classnames:<lang>`` / ``templates:<lang>`` to files.
    """
    names, name_sources = _lang_table(root, CLASSNAMES_JSON, CLASSNAMES_TXT)
    templates, template_sources = _lang_table(root, TEMPLATES_JSON, TEMPLATES_TXT)
    if not templates and not (root / TEMPLATES_JSON).exists() and "en" in names:
        templates, template_sources = {"en": list(DEFAULT_TEMPLATES)}, {"en": Path("<default CLIP template>")}
    _check_classnames(names, name_sources, n_classes)
    _check_templates(templates, template_sources)
    sources = {f"classnames:{k}": str(v) for k, v in name_sources.items()}
    sources.update({f"templates:{k}": str(v) for k, v in template_sources.items()})
    return names, templates, sources


# --------------------------------------------------------------------------------------------------------------------
# WebDataset shards
# --------------------------------------------------------------------------------------------------------------------


def read_class_attributes(root: Path, n_classes: int) -> dict[str, list[str]]:
    """``class_attributes.json`` ({attribute: [value of class 0, 1, ...]}) if the set has one, checked; else {}.

    With attributes, zero-shot also reports for each one how often the predicted class shares the true class's value
    (``top1_colour``: the colour was right, whatever the shape): a breakdown of what a model gets wrong.
    """
    path = root / ATTRIBUTES_JSON
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(table, dict) or not table:
        raise DatasetError(f"{path}: expected an object {{attribute: [one value per class]}}")
    for name, values in table.items():
        if not isinstance(values, list) or len(values) != n_classes or not all(isinstance(v, str) for v in values):
            raise DatasetError(f"{path}: attribute {name!r} needs a list of {n_classes} strings (one per class)")
    return {str(name): list(values) for name, values in table.items()}


def wds_shards(root: Path, split: str = "test") -> list[Path]:
    """``ROOT/split/0.tar .. {n-1}.tar``, n from ``nshards.txt`` (or, without it, the numbered tars there, which must
    run from 0 without a gap); every shard must exist."""
    nshards_file = root / split / NSHARDS
    if not nshards_file.is_file():
        return _numbered_shards(root / split, nshards_file)
    try:
        count = int(nshards_file.read_text(encoding="ascii").strip())
    except ValueError as exc:
        raise DatasetError(f"{nshards_file}: expected one integer ({exc})") from exc
    shards = [root / split / f"{i}.tar" for i in range(count)]
    missing = [str(p) for p in shards if not p.is_file()]
    if count < 1 or missing:
        raise DatasetError(f"{nshards_file}: says {count} shards but {missing[:3] or 'none'} are missing")
    return shards


def _numbered_shards(split_dir: Path, nshards_file: Path) -> list[Path]:
    """``0.tar .. {n-1}.tar`` found in a split directory that has no ``nshards.txt``."""
    numbers = sorted(int(p.stem) for p in split_dir.glob("*.tar") if p.stem.isdigit())
    if not numbers or numbers != list(range(len(numbers))):
        raise DatasetError(
            f"{nshards_file}: missing, and the tars in {split_dir} are not 0.tar..N-1.tar without a gap "
            f"(found {[f'{n}.tar' for n in numbers[:5]]}); clip_benchmark layout: {NSHARDS} + N.tar shards"
        )
    return [split_dir / f"{n}.tar" for n in numbers]


def _wds_image(sample: dict[str, Any]) -> Image.Image:
    """Decode a sample's image field (webp, png, jpg, jpeg in that order); errors name the shard and key."""
    ext = next((e for e in WDS_IMAGE_FIELDS if e in sample), None)
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"
    if ext is None:
        raise DatasetError(f"{where} has no image field (expected one of {', '.join(WDS_IMAGE_FIELDS)})")
    try:
        return decode_image(sample[ext])
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from exc


def _iter_wds(shards: list[Path], max_samples: int | None) -> Iterator[dict[str, Any]]:
    """Raw samples of the shards in order, stopping after ``max_samples``."""
    count = 0
    for shard in shards:
        for sample in iter_tar_samples(shard):
            if max_samples is not None and count >= max_samples:
                return
            count += 1
            yield sample


def _parse_cls(sample: dict[str, Any], n_classes: int) -> int:
    """The integer label of a sample's ``cls`` field, checked against the class count."""
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"
    raw = sample.get("cls")
    if raw is None:
        raise DatasetError(f"{where} has no cls field")
    try:
        label = int(raw.decode("ascii").strip() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: cls is not an integer ({raw!r})") from exc
    if not 0 <= label < n_classes:
        raise DatasetError(f"{where}: cls {label} is outside the {n_classes} classes")
    return label


# --------------------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ClassificationDataset:
    """A zero-shot classification set: labelled images plus class names and templates per language."""

    root: Path
    layout: str  # "wds" | "imagefolder"
    classnames: dict[str, list[str]]
    templates: dict[str, list[str]]
    sources: dict[str, str]
    max_samples: int | None = None
    shards: list[Path] = field(default_factory=list)
    files: list[tuple[Path, int]] = field(default_factory=list)  # ImageFolder: (image path, label)
    skipped: list[str] = field(default_factory=list)  # images left out (samples(skip_undecodable=True), eval)
    attributes: dict[str, list[str]] = field(default_factory=dict)  # {attribute: value per class} (optional)
    origin: str = ""  # the URL of a remote set (``root`` then holds a local copy of its text files)

    @property
    def n_classes(self) -> int:
        """Number of classes (the same in every language)."""
        return len(next(iter(self.classnames.values()), []))

    @property
    def size_hint(self) -> int | None:
        """Number of samples when known without reading the shards (for progress bars)."""
        if self.layout == "imagefolder":
            return len(self.files[: self.max_samples])
        return self.max_samples

    @property
    def langs(self) -> list[str]:
        """Languages that have both class names and templates, English first."""
        found = [lang for lang in self.classnames if lang in self.templates]
        return sorted(found, key=lambda lang: lang != "en")

    def check_langs(self, langs: list[str]) -> None:
        """Raise DatasetError naming the language and the file when a language lacks class names or templates."""
        for lang in langs:
            if lang not in self.classnames:
                raise DatasetError(
                    f"{self.root / CLASSNAMES_JSON}: no class names for language {lang!r} "
                    f"(has {sorted(self.classnames)})"
                )
            if lang not in self.templates:
                raise DatasetError(
                    f"{self.root / TEMPLATES_JSON}: no templates for language {lang!r} (has {sorted(self.templates)})"
                )

    def samples(self, skip_undecodable: bool = False) -> Iterator[tuple[Image.Image, int]]:
        """(PIL image, label) pairs in dataset order, at most ``max_samples``; an image that does not decode raises
        DatasetError naming it, or with ``skip_undecodable`` is logged, named in ``skipped`` and left out."""
        for open_image, label, where in self.entries():
            try:
                yield open_image(), label
            except DatasetError as exc:
                if not skip_undecodable:
                    raise
                log.warning("skipping %s: %s", where, exc)
                self.skipped.append(where)

    def entries(self) -> Iterator[tuple[Callable[[], Image.Image], int, str]]:
        """(image opener, label, name) of every sample in order, labels checked before any image is decoded; an
        evaluation opens only the images it embeds (under torchrun: only its rank's)."""
        if self.layout == "wds":
            for sample in _iter_wds(self.shards, self.max_samples):
                where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"
                yield partial(_wds_image, sample), _parse_cls(sample, self.n_classes), where
            return
        for path, label in self.files[: self.max_samples]:
            yield partial(_open_file_image, path), label, str(path)

    def info(self) -> dict[str, Any]:
        """What a report records about the set: path, layout, classes, languages and where the texts came from."""
        return {
            "path": self.origin or str(self.root),
            "type": "classification",
            "layout": self.layout,
            "classes": self.n_classes,
            "langs": self.langs,
            "max_samples": self.max_samples,
            "sources": self.sources,
        }


def _open_file_image(path: Path) -> Image.Image:
    """Decode one ImageFolder file; errors name the file."""
    try:
        return decode_image(path.read_bytes())
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def _imagefolder_classes(root: Path) -> list[Path]:
    """Class folders of an ImageFolder root: visible sub-directories, sorted by name like torchvision."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _imagefolder_files(class_dirs: list[Path]) -> list[tuple[Path, int]]:
    """(image path, class index) for every image file, sorted within each class."""
    files = []
    for label, folder in enumerate(class_dirs):
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGEFOLDER_SUFFIXES)
        files.extend((p, label) for p in images)
    return files


def open_imagefolder(root: Path, max_samples: int | None = None) -> ClassificationDataset:
    """An ImageFolder set; English class names are the folder names (``_`` read as a space) unless files give them."""
    class_dirs = _imagefolder_classes(root)
    files = _imagefolder_files(class_dirs)
    if not files:
        raise DatasetError(f"{root}: no images in class folders (ImageFolder layout: ROOT/<class>/*.jpg)")
    names, templates, sources = read_classification_text(root, n_classes=len(class_dirs))
    if "en" not in names:
        names["en"] = [p.name.replace("_", " ") for p in class_dirs]
        sources["classnames:en"] = f"{root}/<folder names>"
        if "en" not in templates and not (root / TEMPLATES_JSON).exists():
            templates["en"], sources["templates:en"] = list(DEFAULT_TEMPLATES), "<default CLIP template>"
    attributes = read_class_attributes(root, len(class_dirs))
    return ClassificationDataset(
        root, "imagefolder", names, templates, sources, max_samples, files=files, attributes=attributes
    )


def open_wds_classification(
    root: Path, max_samples: int | None = None, split: str = "test", shards: list | None = None
) -> ClassificationDataset:
    """A clip_benchmark classification set; class names are required (classnames.txt or classnames.json).

    ``shards`` overrides the tars found under ``root`` (a remote set's URLs).
    """
    shards = shards if shards is not None else wds_shards(root, split)
    names, templates, sources = read_classification_text(root)
    if not names:
        raise DatasetError(f"{root / CLASSNAMES_TXT}: missing (and no {CLASSNAMES_JSON}); zero-shot needs class names")
    attributes = read_class_attributes(root, len(next(iter(names.values()))))
    return ClassificationDataset(
        root, "wds", names, templates, sources, max_samples, shards=shards, attributes=attributes
    )


# --------------------------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalSample:
    """One retrieval sample: its key, encoded image bytes and captions per language (one or more each)."""

    key: str
    image_bytes: bytes
    captions: dict[str, list[str]]
    where: str

    def image(self) -> Image.Image:
        """The decoded PIL image; errors name the shard and key."""
        try:
            return decode_image(self.image_bytes)
        except ValueError as exc:
            raise DatasetError(f"{self.where}: {exc}") from exc


def _as_caption_list(value: Any, where: str, lang: str) -> list[str]:
    """A caption field (string or list of strings) as a list of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise DatasetError(f"{where}: captions for language {lang!r} must be a string or a list of strings")
    return [t.strip() for t in items if t.strip()]


def _sample_captions(sample: dict[str, Any], where: str) -> dict[str, list[str]]:
    """Captions per language: ``txt`` lines are English (clip_benchmark), ``json`` captions add every language."""
    captions: dict[str, list[str]] = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{where}: json field is not valid UTF-8 JSON ({exc})") from exc
        table = meta.get("captions", {}) if isinstance(meta, dict) else {}
        if not isinstance(table, dict):
            raise DatasetError(f"{where}: json 'captions' must be an object keyed by language")
        captions = {lang: _as_caption_list(text, where, lang) for lang, text in table.items()}
    if "txt" in sample:
        lines = [line.strip() for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
        captions["en"] = lines or captions.get("en", [])
    return {lang: texts for lang, texts in captions.items() if texts}


@dataclass
class RetrievalDataset:
    """An image-text retrieval set (clip_benchmark layout) with captions in one or more languages per sample."""

    root: Path
    shards: list[Path]
    max_samples: int | None = None
    _langs: list[str] | None = field(default=None, repr=False)
    skipped: list[str] = field(default_factory=list)  # samples an evaluation left out: their image does not decode
    origin: str = ""  # the URL of a remote set (``root`` then holds a local copy of its text files)

    def samples(self) -> Iterator[RetrievalSample]:
        """Samples in dataset order, at most ``max_samples``; images stay encoded until asked for."""
        for raw in _iter_wds(self.shards, self.max_samples):
            where = f"{raw.get('__url__')}: sample {raw.get('__key__')!r}"
            ext = next((e for e in WDS_IMAGE_FIELDS if e in raw), None)
            if ext is None:
                raise DatasetError(f"{where} has no image field (expected one of {', '.join(WDS_IMAGE_FIELDS)})")
            yield RetrievalSample(raw["__key__"], raw[ext], _sample_captions(raw, where), where)

    @property
    def langs(self) -> list[str]:
        """Languages with at least one caption, English first, then in order of first appearance."""
        if self._langs is None:
            seen: dict[str, None] = {}
            for sample in self.samples():
                seen.update(dict.fromkeys(sample.captions))
            self._langs = sorted(seen, key=lambda lang: (lang != "en", list(seen).index(lang)))
        return self._langs

    def check_langs(self, langs: list[str]) -> None:
        """Raise DatasetError naming the language and the shards when no sample has a caption in it."""
        for lang in langs:
            if lang not in self.langs:
                raise DatasetError(
                    f"{self.root / 'test'}: no captions in language {lang!r} in any sample (has {self.langs})"
                )

    def info(self) -> dict[str, Any]:
        """What a report records about the set."""
        return {
            "path": self.origin or str(self.root),
            "type": "retrieval",
            "layout": "wds",
            "langs": self.langs,
            "max_samples": self.max_samples,
        }


def open_dataset(
    root: str | Path, max_samples: int | None = None, split: str = "test"
) -> ClassificationDataset | RetrievalDataset:
    """Open an eval set by its layout: retrieval (dataset_type.txt), clip_benchmark classification, or ImageFolder.

    ``root`` may be a URL (``https://``, ``s3://``) of a clip_benchmark WebDataset set (see ``open_remote_dataset``).
    """
    if max_samples is not None and max_samples < 1:
        raise DatasetError(f"max_samples must be >= 1, got {max_samples}")
    if not is_local(str(root)):
        return open_remote_dataset(str(root), max_samples, split)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: eval dataset directory does not exist")
    kind_file = root / DATASET_TYPE
    kind = kind_file.read_text(encoding="utf-8").strip().lower() if kind_file.is_file() else "classification"
    if kind == "retrieval":
        return RetrievalDataset(root, wds_shards(root, split), max_samples)
    if kind != "classification":
        raise DatasetError(f"{kind_file}: dataset type {kind!r} is not supported (classification or retrieval)")
    if (root / split / NSHARDS).exists() or any((root / split).glob("*.tar")):
        return open_wds_classification(root, max_samples, split)
    return open_imagefolder(root, max_samples)


# Small text files of a clip_benchmark set; each set has some of them.
_METADATA_FILES = (DATASET_TYPE, CLASSNAMES_TXT, CLASSNAMES_JSON, TEMPLATES_TXT, TEMPLATES_JSON, ATTRIBUTES_JSON)


def open_remote_dataset(
    url: str, max_samples: int | None = None, split: str = "test"
) -> ClassificationDataset | RetrievalDataset:
    """A clip_benchmark WebDataset set on a web server or object store.

    Its small text files are fetched into a temporary folder (removed with the dataset object); the shards
    ``split/0.tar .. {n-1}.tar`` (n from ``split/nshards.txt``, which a remote set must have: a URL cannot be listed)
    are streamed like remote training shards, with the same retries.
    """
    local = Path(tempfile.mkdtemp(prefix="dcclip-evalset-"))
    for name in _METADATA_FILES:
        try:
            (local / name).write_bytes(read_bytes(join(url, name), RemoteOptions(retries=0)))
        except OSError:
            continue  # an optional file this set does not have
    where = f"{describe(url)}/{split}/{NSHARDS}"
    try:
        count = int(read_bytes(join(url, f"{split}/{NSHARDS}")).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        shutil.rmtree(local, ignore_errors=True)
        raise DatasetError(f"{where}: a remote eval set needs this file to list its shards ({exc})") from exc
    shards = [join(url, f"{split}/{i}.tar") for i in range(count)]
    kind_file = local / DATASET_TYPE
    kind = kind_file.read_text(encoding="utf-8").strip().lower() if kind_file.is_file() else "classification"
    if kind == "retrieval":
        ds: ClassificationDataset | RetrievalDataset = RetrievalDataset(local, shards, max_samples)
    else:
        ds = open_wds_classification(local, max_samples, split, shards=shards)
    ds.origin = describe(url)
    weakref.finalize(ds, shutil.rmtree, local, True)
    return ds
