"""Zero-shot classification over a bundle: labels in any of the student's languages, softmax over the bundle's scale.

A class embedding is the normalised mean of the normalised embeddings of the label in every template (CLIP's prompt
ensembling). Class embeddings are cached (LRU, keyed by language, templates and label) because callers ask about the
same label sets again and again; the cache is guarded by a lock, and onnxruntime sessions are safe to run from many
threads, so one classifier serves concurrent requests.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from dcclip.runtime.bundle import BundleModel, ImageInput
from dcclip.runtime.errors import (
    EmptyLabelsError,
    InvalidInputError,
    InvalidLabelError,
    InvalidTemplateError,
    TooManyLabelsError,
    UnknownLanguageError,
    check_text,
    check_unicode,
    has_visible,
)
from dcclip.runtime.prompts import PLACEHOLDER, checked_templates, class_embeddings, fill_templates

__all__ = ["DEFAULT_TEMPLATES", "LabelCache", "ZeroShotClassifier", "default_templates"]

DEFAULT_MAX_LABELS = 1000
DEFAULT_CACHE_SIZE = 4096
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a photo of a {c}.", "a picture of a {c}.", "an image of a {c}.", "{c}"),
    "zh": ("一张{c}的照片。", "{c}的图片。", "{c}"),
    "ja": ("{c}の写真。", "{c}の画像。", "{c}"),
    "ko": ("{c}의 사진.", "{c}의 이미지.", "{c}"),
    "fr": ("une photo de {c}.", "une image de {c}.", "{c}"),
    "de": ("ein Foto von {c}.", "ein Bild von {c}.", "{c}"),
    "es": ("una foto de {c}.", "una imagen de {c}.", "{c}"),
    "ru": ("фотография: {c}.", "изображение: {c}.", "{c}"),
    "ar": ("صورة {c}.", "صورة فيها {c}.", "{c}"),
    "hi": ("{c} की तस्वीर।", "{c} का चित्र।", "{c}"),
}
FALLBACK_TEMPLATES: tuple[str, ...] = (PLACEHOLDER,)


def default_templates(lang: str) -> tuple[str, ...]:
    """The built-in templates of a language, or just the bare label for languages without any."""
    return DEFAULT_TEMPLATES.get(lang, FALLBACK_TEMPLATES)


class LabelCache:
    """A thread-safe LRU map from (lang, templates, label) to a class embedding, with hit/miss counters."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, tuple[str, ...], str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, tuple[str, ...], str]) -> np.ndarray | None:
        """The cached embedding (marked most recent), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, tuple[str, ...], str], value: np.ndarray) -> None:
        """Store an embedding, evicting the least recently used beyond ``maxsize``."""
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def info(self) -> dict[str, int]:
        """Hits, misses, current size and capacity."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._items), "maxsize": self.maxsize}


class ZeroShotClassifier:
    """Classify images against free-text labels in any of the bundle's languages; safe to share between threads."""

    def __init__(
        self, model: BundleModel, max_labels: int = DEFAULT_MAX_LABELS, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.model = model
        self.max_labels = max_labels
        self.cache = LabelCache(cache_size)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        precision: str | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        **options: Any,
    ) -> ZeroShotClassifier:
        """Open a bundle (verified) and wrap it; ``threads`` sets onnxruntime's intra-op thread count.

        ``precision`` None loads each tower at the manifest's recommended precision (fp32 when it records none)."""
        max_labels = options.pop("max_labels", DEFAULT_MAX_LABELS)
        cache_size = options.pop("cache_size", DEFAULT_CACHE_SIZE)
        model = BundleModel(path, precision, intra_op_num_threads=threads, providers=providers, **options)
        return cls(model, max_labels=max_labels, cache_size=cache_size)

    @property
    def languages(self) -> list[str]:
        """Languages the bundle was trained for (empty: any language is accepted)."""
        return self.model.languages

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> normalised embeddings [N, D]."""
        return self.model.embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> normalised embeddings [N, D]."""
        return self.model.embed_texts(texts)

    def class_embeddings(
        self, labels: Sequence[str], lang: str = "en", templates: Sequence[str] | None = None
    ) -> np.ndarray:
        """Normalised class embeddings [C, D] for the labels, from the cache where possible."""
        self._check_labels(labels)
        self._check_lang(lang)
        chosen = self._templates(lang, templates)
        keys = [(lang, chosen, label) for label in labels]
        found = {key: self.cache.get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            fresh = self._encode_classes([key[2] for key in missing], chosen)
            for key, value in zip(missing, fresh, strict=True):
                self.cache.put(key, value)
                found[key] = value
        return np.stack([found[key] for key in keys])

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        lang: str = "en",
        templates: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> list[list[tuple[str, float]]]:
        """For every image, the ``top_k`` labels with softmax probabilities, most likely first."""
        _check_top_k(top_k)
        classes = self.class_embeddings(labels, lang, templates)
        return self._rank(self.model.embed_images(images), classes, labels, top_k)

    def classify_pixels(
        self,
        pixels: np.ndarray,
        labels: Sequence[str],
        lang: str = "en",
        templates: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> list[list[tuple[str, float]]]:
        """``classify`` of images already preprocessed to model input [N, 3, S, S] (the server decodes one by one)."""
        _check_top_k(top_k)
        classes = self.class_embeddings(labels, lang, templates)
        return self._rank(self.model.embed_pixels(pixels), classes, labels, top_k)

    def _rank(
        self, image_emb: np.ndarray, classes: np.ndarray, labels: Sequence[str], top_k: int
    ) -> list[list[tuple[str, float]]]:
        """Per image, the ``top_k`` labels by softmax of the scaled cosine similarity, most likely first."""
        probs = softmax(self.model.logit_scale * image_emb @ classes.T)
        k = min(top_k, len(labels))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            results.append([(labels[i], float(row[i])) for i in order])
        return results

    def _encode_classes(self, labels: list[str], templates: tuple[str, ...]) -> np.ndarray:
        """One text-tower pass over every (label, template) text; per label the normalised mean over templates."""
        return class_embeddings(self.model.embed_prompts(fill_templates(labels, templates)), len(labels))

    def _check_labels(self, labels: Sequence[str]) -> None:
        """A non-empty list of distinct non-empty strings, no more than ``max_labels``."""
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise InvalidLabelError(f"labels must be a list of strings, got {type(labels).__name__}")
        if not labels:
            raise EmptyLabelsError("labels is empty: give at least one label")
        if len(labels) > self.max_labels:
            raise TooManyLabelsError(f"{len(labels)} labels exceed the limit of {self.max_labels}")
        seen = set()
        for index, label in enumerate(labels):
            if not isinstance(label, str) or not label.strip():
                raise InvalidLabelError(f"labels[{index}] must be a non-empty string, got {label!r}")
            check_text(label, f"labels[{index}]", self.model.max_text_chars, InvalidLabelError)
            if not has_visible(label):
                raise InvalidLabelError(f"labels[{index}] has no visible character ({_code_points(label)})")
            if label in seen:
                raise InvalidLabelError(f"labels[{index}] {label!r} is a duplicate")
            seen.add(label)

    def _check_lang(self, lang: str) -> None:
        """A string, and one of the bundle's languages when the bundle lists them."""
        if not isinstance(lang, str) or not lang:
            raise UnknownLanguageError(f"lang must be a language code string, got {lang!r}")
        check_unicode(lang, "lang", UnknownLanguageError)
        known = self.model.languages
        if known and lang not in known:
            raise UnknownLanguageError(f"language {lang!r} is not one of this bundle's languages {known}")

    def _templates(self, lang: str, templates: Sequence[str] | None) -> tuple[str, ...]:
        """The given templates (checked) or the language's defaults, as a hashable tuple."""
        chosen = default_templates(lang) if templates is None else checked_templates(templates)
        for index, template in enumerate(chosen):
            check_text(template, f"templates[{index}]", self.model.max_text_chars, InvalidTemplateError)
        return chosen


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidInputError(f"top_k must be a positive int, got {top_k!r}")


def _code_points(text: str) -> str:
    """``U+200B U+FEFF``: what a label of invisible characters holds, for the error message."""
    return " ".join(f"U+{ord(char):04X}" for char in text[:8]) + (" ..." if len(text) > 8 else "")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max subtracted for stability): every row sums to 1."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
