"""What parity is measured on: drawn images, shard or eval-set images, captions in many languages (the shards', else
the eval sets' class names, else a built-in everyday set in ten languages; never the toy world's grammar), and the
zero-shot sets whose top-1 decisions int8 must keep. ``prepare_inputs`` gathers them for export/validate.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dcclip.runtime.preprocess import Preprocess
from dcclip.runtime.prompts import fill_templates

from .errors import ExportError

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 32
DEFAULT_EVAL_IMAGES = 128  # 128 images x every language: one changed image moves agreement by under 1%
EVAL_SET_CAPTIONS = 8  # per language: the first class names in the first template, when captions come from eval sets
# The last resort when neither shards nor an eval set are given (the manifest then says "built-in"), and the trace and
# timing texts: everyday captions in ten languages and their scripts, independent of any demo data.
BUILT_IN_CAPTIONS = {
    "en": ["a photo of a dog running on the grass", "a red car parked in front of a house",
           "two people walking on a beach at sunset", "a bowl of fruit on a wooden table"],
    "zh": ["一只狗在草地上奔跑的照片", "一辆红色汽车停在房子前面", "日落时两个人在海滩上散步", "木桌上的一碗水果"],
    "ja": ["芝生の上を走る犬の写真", "家の前に停まっている赤い車", "夕暮れの浜辺を歩く二人",
           "木のテーブルの上の果物の入ったボウル"],
    "ko": ["잔디 위를 달리는 개의 사진", "집 앞에 주차된 빨간 자동차", "해질녘 해변을 걷는 두 사람",
           "나무 탁자 위의 과일 한 그릇"],
    "fr": ["une photo d'un chien qui court sur l'herbe", "une voiture rouge garée devant une maison",
           "deux personnes qui marchent sur une plage au coucher du soleil", "un bol de fruits sur une table en bois"],
    "de": ["ein Foto eines Hundes, der über das Gras rennt", "ein rotes Auto, das vor einem Haus parkt",
           "zwei Menschen, die bei Sonnenuntergang am Strand spazieren", "eine Schüssel Obst auf einem Holztisch"],
    "es": ["una foto de un perro corriendo por el césped", "un coche rojo aparcado delante de una casa",
           "dos personas caminando por la playa al atardecer", "un cuenco de fruta sobre una mesa de madera"],
    "ru": ["фотография собаки, бегущей по траве", "красная машина, припаркованная перед домом",
           "два человека гуляют по пляжу на закате", "миска с фруктами на деревянном столе"],
    "ar": ["صورة كلب يركض على العشب", "سيارة حمراء متوقفة أمام منزل", "شخصان يمشيان على الشاطئ عند الغروب",
           "وعاء من الفاكهة على طاولة خشبية"],
    "hi": ["घास पर दौड़ते कुत्ते की तस्वीर", "एक घर के सामने खड़ी लाल कार", "सूर्यास्त के समय समुद्र तट पर टहलते दो लोग",
           "लकड़ी की मेज़ पर फलों का एक कटोरा"],
}  # fmt: skip


def probe_captions() -> dict[str, list[str]]:
    """The built-in captions per language (a copy): trace and timing texts, and parity's last resort."""
    return {lang: list(texts) for lang, texts in BUILT_IN_CAPTIONS.items()}


@dataclass
class ZeroShotSet:
    """A sample of a zero-shot classification set: preprocessed images, labels, class names and templates per lang."""

    pixels: np.ndarray
    labels: np.ndarray | None
    classnames: dict[str, list[str]]
    templates: dict[str, list[str]]
    source: str


@dataclass
class ValidationInputs:
    """What parity is measured on: preprocessed images, captions (with languages) and any zero-shot sets."""

    pixels: np.ndarray
    captions: list[str]
    caption_langs: list[str]
    image_source: str
    zero_shot_sets: list[ZeroShotSet] = field(default_factory=list)
    caption_source: str = "given"  # "given" (shards), "eval_set" or "built-in"

    @property
    def zero_shot(self) -> ZeroShotSet | None:
        """The first zero-shot set, or None when there is none."""
        return self.zero_shot_sets[0] if self.zero_shot_sets else None


def synthetic_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Drawn scenes (shapes on gradients, assorted sizes) for when no real images are at hand."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(48, 160, size=2))
        ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * rng.uniform(0, 255, size=(1, 1, 3))
        base = np.broadcast_to(ramp + rng.uniform(0, 128, size=(1, 1, 3)), (height, width, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
            box = (x0, y0, x0 + int(rng.integers(8, width)), y0 + int(rng.integers(8, height)))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images.append(image)
    return images


def load_zero_shot_set(
    path: Path, preprocess: Preprocess, max_images: int = DEFAULT_EVAL_IMAGES, langs: Sequence[str] | None = None
) -> ZeroShotSet:
    """A sample of a zero-shot classification set, read by the evaluation's own reader (clip_benchmark layout or
    ImageFolder); undecodable images are skipped and logged."""
    from dcclip.eval.datasets import ClassificationDataset, DatasetError, open_dataset

    path = Path(path)
    try:
        dataset = open_dataset(path, max_samples=max_images)
        if not isinstance(dataset, ClassificationDataset):
            raise ExportError(f"{path}: a retrieval set; int8 agreement is measured on a classification set")
        pairs = [(preprocess(image), label) for image, label in dataset.samples(skip_undecodable=True)]
    except DatasetError as exc:
        raise ExportError(f"{path}: not a usable zero-shot set: {exc}") from exc
    if not pairs:
        raise ExportError(f"{path}: no decodable images in the eval set")
    wanted = [lang for lang in dataset.langs if not langs or lang in langs] or dataset.langs
    return ZeroShotSet(
        pixels=np.stack([pixels for pixels, _ in pairs]).astype(np.float32),
        labels=np.asarray([label for _, label in pairs]),
        classnames={lang: dataset.classnames[lang] for lang in wanted},
        templates={lang: dataset.templates[lang] for lang in wanted},
        source=str(path),
    )


def shard_captions(source: str | Path, limit: int = 64) -> list[tuple[str, str]]:
    """Up to ``limit`` (lang, caption) pairs from a shard source, every language of a sample taken in turn."""
    from dcclip.data.shards import iter_samples

    found: list[tuple[str, str]] = []
    for sample in iter_samples(source):
        try:
            captions = json.loads(sample.get("json", b"{}")).get("captions", {})
        except (ValueError, AttributeError):
            continue
        found.extend((str(lang), text) for lang, text in captions.items() if isinstance(text, str) and text.strip())
        if len(found) >= limit:
            break
    return found[:limit]


def eval_set_captions(sets: Sequence[ZeroShotSet], per_lang: int = EVAL_SET_CAPTIONS) -> list[tuple[str, str]]:
    """(lang, caption) pairs from zero-shot sets: per language, the first class names in the first template."""
    pairs: list[tuple[str, str]] = []
    for zs in sets:
        for lang, names in zs.classnames.items():
            templates = zs.templates.get(lang) or ["{c}"]
            pairs.extend((lang, text) for text in fill_templates(names[:per_lang], templates[:1]))
    return pairs


def _parity_captions(
    captions: Sequence[tuple[str, str]] | None, sets: Sequence[ZeroShotSet]
) -> tuple[list[tuple[str, str]], str]:
    """The captions parity is measured on and where they came from: given (shards), else eval sets, else built-in."""
    if captions:
        return list(captions), "given"
    from_sets = eval_set_captions(sets)
    if from_sets:
        return from_sets, "eval_set"
    return [(lang, text) for lang, texts in BUILT_IN_CAPTIONS.items() for text in texts], "built-in"


def eval_set_paths(eval_set: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """One eval set, several, or none, as a list of paths."""
    if eval_set is None:
        return []
    if isinstance(eval_set, str | Path):
        return [Path(eval_set)]
    return [Path(item) for item in eval_set]


def prepare_inputs(
    preprocess: Preprocess,
    images: Sequence[Image.Image] | None = None,
    captions: Sequence[tuple[str, str]] | None = None,
    eval_set: Path | Sequence[Path] | None = None,
    langs: Sequence[str] | None = None,
    n_images: int = DEFAULT_IMAGES,
    image_source: str = "given",
) -> ValidationInputs:
    """Images (given, else drawn), captions (given, else from the eval sets, else built-in) and the eval set(s)."""
    source = image_source if images else "synthetic"
    chosen = list(images)[:n_images] if images else synthetic_images(n_images)
    sets = [load_zero_shot_set(path, preprocess, langs=langs) for path in eval_set_paths(eval_set)]
    pairs, caption_source = _parity_captions(captions, sets)
    return ValidationInputs(
        pixels=preprocess.batch(chosen).astype(np.float32),
        captions=[text for _, text in pairs],
        caption_langs=sorted({lang for lang, _ in pairs}),
        image_source=source,
        zero_shot_sets=sets,
        caption_source=caption_source,
    )
