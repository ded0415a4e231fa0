"""Reading multipart requests strictly: UTF-8 text fields only, bounded counts and sizes, each refusal with its code.

Starlette's parser decodes a text field that is not valid UTF-8 as Latin-1 without a word; a label would then be
silently wrong, so text fields are decoded strictly here. Counting files and fields as the parser meets them refuses
a request with 10,000 parts before they are all buffered.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from dcclip.runtime.classifier import default_templates
from dcclip.runtime.labels import split_labels
from dcclip.runtime.prompts import PLACEHOLDER
from dcclip.serve.errors import ApiError
from dcclip.serve.limits import ServeLimits

__all__ = [
    "ClassifyQuery",
    "PartLimits",
    "StrictMultiPartParser",
    "parse_classify",
    "read_form",
    "read_images",
]

URL_PREFIXES = (b"http://", b"https://", b"ftp://", b"file://", b"data:")
EXTRA_FIELDS = 8  # lang, top_k and a little slack beside labels and templates
DEFAULT_LANG = "en"
DEFAULT_TOP_K = 5
MAX_TOP_K_DIGITS = 9
MAX_LANG_CHARS = 35  # the longest BCP 47 tags in use are far shorter


@dataclass(frozen=True)
class PartLimits:
    """How many file and text parts a form may hold, how large a text part may be, and limits per field name."""

    max_files: int
    max_fields: int
    max_field_bytes: int
    per_name: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # name -> (most parts, error code)

    @classmethod
    def classify(cls, limits: ServeLimits) -> PartLimits:
        """A classify form: the images, every label and template as its own field at most, and a few more fields."""
        per_name = {
            "labels": (limits.max_labels, "too_many_labels"),
            "templates": (limits.max_templates, "too_many_templates"),
        }
        fields = limits.max_labels + limits.max_templates + EXTRA_FIELDS
        return cls(limits.max_images, fields, limits.max_field_bytes, per_name)

    @classmethod
    def images(cls, limits: ServeLimits) -> PartLimits:
        """An image-embedding form: the images and nothing much else."""
        return cls(limits.max_images, EXTRA_FIELDS, limits.max_field_bytes)


class StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser with strict decoding of text fields and limits that raise ApiError."""

    def __init__(self, request: Request, limits: PartLimits) -> None:
        super().__init__(
            request.headers,
            request.stream(),
            max_files=math.inf,
            max_fields=math.inf,
            max_part_size=limits.max_field_bytes,
        )
        self.limits = limits
        self.files_seen = self.fields_seen = 0
        self.seen_by_name: Counter[str] = Counter()

    def on_headers_finished(self) -> None:
        """Count the part that starts here as a file or a field, refusing one past the limit."""
        super().on_headers_finished()
        limits, name = self.limits, self._current_part.field_name
        self.seen_by_name[name] += 1
        if name in limits.per_name and self.seen_by_name[name] > limits.per_name[name][0]:
            most, code = limits.per_name[name]
            raise ApiError(code, f"more than {most} {name!r} parts")
        if self._current_part.file is not None:
            self.files_seen += 1
            if self.files_seen > limits.max_files:
                raise ApiError("too_many_images", f"more than {limits.max_files} files; max_images={limits.max_files}")
        else:
            self.fields_seen += 1
            if self.fields_seen > limits.max_fields:
                raise ApiError("too_many_fields", f"more than {limits.max_fields} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        """Refuse a text field larger than the limit with its own code (files are bounded by the body limit)."""
        part = self._current_part
        most = self.limits.max_field_bytes
        if part.file is None and len(part.data) + (end - start) > most:
            raise ApiError("field_too_large", f"form field {part.field_name!r} exceeds max_field_bytes={most}")
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        """Keep a finished part; a text field must decode in the declared charset (UTF-8 by default)."""
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        try:
            value = bytes(part.data).decode(self._charset)
        except UnicodeDecodeError as exc:
            raise ApiError("invalid_encoding", f"form field {part.field_name!r} is not valid {self._charset}") from exc
        self.items.append((part.field_name, value))


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_form(request: Request, limits: PartLimits) -> FormData:
    """Parse a multipart/form-data body; 415 for any other media type, 400 for a malformed one."""
    found = media_type(request)
    if found != "multipart/form-data":
        raise ApiError("unsupported_media_type", f"expected multipart/form-data, got {found or 'no Content-Type'}")
    parser = StrictMultiPartParser(request, limits)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise ApiError("invalid_multipart", f"malformed multipart body: {exc.message}") from exc


def text_values(form: FormData, name: str) -> list[str]:
    """Every value of a text field; a file uploaded under a text field's name is a validation error."""
    values = form.getlist(name)
    for value in values:
        if not isinstance(value, str):
            raise ApiError("validation_error", f"{name} must be a text field, not a file")
    return values  # type: ignore[return-value]


def looks_like_url(data: bytes | str) -> bool:
    """Whether an image field holds a URL (or data URI) instead of image bytes."""
    head = (data.encode("utf-8", "replace") if isinstance(data, str) else data)[:16].lstrip().lower()
    return head.startswith(URL_PREFIXES)


@dataclass(frozen=True)
class ImageUpload:
    """The bytes of one uploaded image and the name it came with."""

    filename: str
    data: bytes


async def read_images(form: FormData, limits: ServeLimits) -> list[ImageUpload]:
    """The uploaded ``images`` files, in order; URLs and text fields are refused, nothing is fetched."""
    items = form.getlist("images")
    if not items:
        raise ApiError("missing_images", "upload one or more image files in the multipart field 'images'")
    if len(items) > limits.max_images:
        raise ApiError("too_many_images", f"{len(items)} images exceed max_images={limits.max_images}")
    uploads = []
    for index, item in enumerate(items):
        where = f"images[{index}]"
        if not isinstance(item, UploadFile):
            if looks_like_url(item):
                raise ApiError("url_not_allowed", f"{where} is a URL; the server never fetches URLs, upload the bytes")
            raise ApiError("invalid_image", f"{where} is a text field; upload the image as a file part")
        data = await item.read()
        if looks_like_url(data):
            raise ApiError("url_not_allowed", f"{where} holds a URL; the server never fetches URLs, upload the bytes")
        uploads.append(ImageUpload(item.filename or where, data))
    return uploads


@dataclass(frozen=True)
class ClassifyQuery:
    """A parsed, limit-checked classify request."""

    images: list[ImageUpload]
    labels: list[str]
    lang: str
    top_k: int
    templates: list[str] | None


def _json_list(value: str, name: str, code: str) -> list[str]:
    """A field holding a JSON list of strings."""
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise ApiError("invalid_json", f"{name} starts with '[' but is not a valid JSON list: {exc}") from exc
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        raise ApiError(code, f"{name} must be a JSON list of strings")
    return parsed


def _check_lengths(items: list[str], name: str, limits: ServeLimits) -> None:
    """No item longer than max_text_chars characters."""
    for index, item in enumerate(items):
        if len(item) > limits.max_text_chars:
            message = f"{name}[{index}] has {len(item)} characters, over max_text_chars={limits.max_text_chars}"
            raise ApiError("text_too_long", message)


def parse_labels(values: list[str], limits: ServeLimits) -> list[str]:
    """Labels from one string (split by dcclip.runtime.labels: commas of any script, newlines), one JSON list, or one
    label per repeated field; blanks dropped."""
    if len(values) == 1:
        single = values[0].strip()
        raw = _json_list(single, "labels", "invalid_label") if single.startswith("[") else split_labels(single)
    else:
        raw = values
    labels = [label.strip() for label in raw if label.strip()]
    if not labels:
        raise ApiError("empty_labels", "give at least one label: labels=cat,dog or repeated labels fields")
    if len(labels) > limits.max_labels:
        raise ApiError("too_many_labels", f"{len(labels)} labels exceed max_labels={limits.max_labels}")
    _check_lengths(labels, "labels", limits)
    return labels


def parse_templates(values: list[str], limits: ServeLimits) -> list[str] | None:
    """Templates from repeated fields or one JSON list; None (the language's defaults) when absent."""
    if not values:
        return None
    single = values[0].strip() if len(values) == 1 else ""
    templates = _json_list(single, "templates", "invalid_template") if single.startswith("[") else values
    if len(templates) > limits.max_templates:
        raise ApiError("too_many_templates", f"{len(templates)} templates exceed max_templates={limits.max_templates}")
    _check_lengths(templates, "templates", limits)
    return templates


def parse_single(values: list[str], name: str, default: str) -> str:
    """A field given at most once."""
    if len(values) > 1:
        raise ApiError("validation_error", f"{name} was given {len(values)} times; give it once")
    return values[0].strip() if values else default


def parse_lang(values: list[str]) -> str:
    """A language code (default en); whether the bundle knows it is the classifier's check."""
    lang = parse_single(values, "lang", DEFAULT_LANG)
    if not lang or len(lang) > MAX_LANG_CHARS:
        raise ApiError("unknown_language", f"lang must be a language code such as 'en', got {lang[:40]!r}")
    return lang


def parse_top_k(values: list[str]) -> int:
    """A positive integer (default 5); the classifier caps it at the number of labels."""
    raw = parse_single(values, "top_k", str(DEFAULT_TOP_K))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_TOP_K_DIGITS) or int(raw) < 1:
        raise ApiError("validation_error", f"top_k must be a positive integer, got {raw[:40]!r}")
    return int(raw)


async def parse_classify(form: FormData, limits: ServeLimits) -> ClassifyQuery:
    """Every field of a classify request, checked against the limits before any image is decoded."""
    labels = parse_labels(text_values(form, "labels"), limits)
    templates = parse_templates(text_values(form, "templates"), limits)
    lang = parse_lang(text_values(form, "lang"))
    check_prompt_budget(labels, templates if templates is not None else default_templates(lang), limits)
    top_k = parse_top_k(text_values(form, "top_k"))
    images = await read_images(form, limits)
    return ClassifyQuery(images, labels, lang, top_k, templates)


def check_prompt_budget(labels: list[str], templates: Sequence[str], limits: ServeLimits) -> None:
    """The prompts a request makes (every label in every template) stay within max_prompt_chars characters."""
    label_chars = sum(len(label) for label in labels)
    template_chars = sum(len(template) - len(PLACEHOLDER) for template in templates)
    total = len(templates) * label_chars + len(labels) * template_chars
    if total > limits.max_prompt_chars:
        raise ApiError(
            "too_many_prompt_chars",
            f"{len(labels)} labels x {len(templates)} templates make {total} characters of prompts, over "
            f"max_prompt_chars={limits.max_prompt_chars}; send fewer or shorter labels or templates",
        )
