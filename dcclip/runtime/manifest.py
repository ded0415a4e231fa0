"""The bundle and index manifests as typed schemas: one definition of their fields, types, ranges and versions.

Export (export/bundle.py, export/card.py) builds a bundle manifest through ``build_bundle_manifest`` and checks it
with ``check_bundle_manifest`` before sealing; the runtime (runtime/bundle.py) checks every manifest it reads with the
same function, so a field edited to the wrong type fails at load with an error naming the field. The index manifest
(written by search/build.py, read by runtime/index.py) works the same way. Fields a schema does not name are kept and
ignored: a newer export's advisory fields load in an older runtime.

``Field`` and ``check_fields`` are the small validator every manifest schema here (and the shard-set manifest of the
data floor) is declared with: no dependency beyond the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from dcclip.runtime.constants import LOGIT_SCALE_MAX, MANIFEST_FILE, TOKENIZER_FILE
from dcclip.runtime.errors import BundleError, BundleVersionError, SearchIndexError
from dcclip.runtime.preprocess import PreprocessConfigError, check_preprocess_config

__all__ = [
    "BUNDLE_FIELDS",
    "BUNDLE_FORMAT",
    "FILE_ENTRY_FIELDS",
    "FORMAT_VERSION",
    "INDEX_FIELDS",
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "LOGIT_SCALE_MAX",
    "MANIFEST_DIGEST_KEY",
    "MANIFEST_FILE",
    "PRECISIONS",
    "ROLES",
    "SUPPORTED_VERSIONS",
    "TOKENIZER_FILE",
    "BundleManifest",
    "Field",
    "FileEntry",
    "IndexManifest",
    "build_bundle_manifest",
    "build_index_manifest",
    "check_bundle_header",
    "check_bundle_manifest",
    "check_fields",
    "check_index_manifest",
    "file_entry",
    "manifest_digest",
    "seal_manifest",
    "sha256_file",
]

MANIFEST_DIGEST_KEY = "manifest_sha256"
BUNDLE_FORMAT = "dcclip-bundle"
FORMAT_VERSION = 3  # 3: manifest_sha256 seals the manifest's own fields
SUPPORTED_VERSIONS = (1, 2, 3)
INDEX_FORMAT = "dcclip-index"
INDEX_VERSION = 1
PRECISIONS = ("fp32", "int8")
ROLES = ("image", "text")
FILE_ROLES = (*ROLES, "tokenizer", "card")
RECOMMENDED_KEY, CHOICE_KEY = "recommended_precision", "precision_choice"  # written by export --precision auto

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
_TYPE_WORDS |= {bool: "true or false", type(None): "null"}


@dataclass(frozen=True)
class Field:
    """One manifest field: its JSON type(s), whether it must be there, and a range or shape check with its words."""

    name: str
    types: tuple[type, ...]
    required: bool = False
    check: Callable[[Any], bool] | None = None
    expected: str = ""

    def describe(self) -> str:
        """What a valid value is, for error messages."""
        return self.expected or " or ".join(_TYPE_WORDS[kind] for kind in self.types)


def is_json_type(value: Any, types: tuple[type, ...]) -> bool:
    """Whether a decoded JSON value has one of ``types`` (a bool is no integer; an integer is a number)."""
    if isinstance(value, bool):
        return bool in types
    if type(value) is int:
        return int in types or float in types
    return isinstance(value, types)


def check_fields(
    data: Mapping[str, Any], fields: Sequence[Field], where: Any, error: Callable[[str], Exception], prefix: str = ""
) -> None:
    """Raise ``error`` naming the first field of ``fields`` that is missing (when required), of the wrong type or out
    of range; other keys are left alone."""
    missing = [prefix + field.name for field in fields if field.required and field.name not in data]
    if missing:
        raise error(f"{where}: manifest lacks {missing}")
    for field in fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if not is_json_type(value, field.types) or (field.check is not None and not field.check(value)):
            raise error(f"{where}: manifest field {prefix}{field.name} is {value!r}; expected {field.describe()}")


def _int_in(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


def _number_in(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: math.isfinite(value) and low <= value <= high


def _is_hex64(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _codes(value: list) -> bool:
    return all(isinstance(item, str) and item for item in value)


def _precision_list(value: list) -> bool:
    return bool(value) and all(isinstance(item, str) for item in value) and set(value) <= set(PRECISIONS)


# ------------------------------------------------------------------------------------------------- the bundle


class FileEntry(TypedDict):
    """A bundle file: what it is, and the sha256 and size the runtime checks it against."""

    role: str
    precision: str | None
    sha256: str
    bytes: int
    shipped_precision: NotRequired[str]  # format 2+: an int8 entry that carries the tower's fp32 graph says 'fp32'


class BundleManifest(TypedDict):
    """manifest.json of a bundle (format versions 1-3; the NotRequired fields are optional or advisory)."""

    format: str
    format_version: int
    embed_dim: int
    image_preprocess: dict[str, Any]
    text_max_length: int
    precisions: list[str]
    files: dict[str, FileEntry]
    dcclip_version: NotRequired[str]
    logit_scale: NotRequired[float]
    pad_id: NotRequired[int]
    languages: NotRequired[list[str]]
    io: NotRequired[dict[str, Any]]
    exporter: NotRequired[dict[str, Any]]
    quantization: NotRequired[dict[str, Any] | None]
    parity: NotRequired[dict[str, Any]]
    source: NotRequired[dict[str, Any]]
    validation_inputs: NotRequired[dict[str, str]]
    recommended_precision: NotRequired[dict[str, str]]
    precision_choice: NotRequired[dict[str, Any]]
    card: NotRequired[dict[str, Any]]
    manifest_sha256: NotRequired[str]


BUNDLE_FIELDS = (
    Field("format", (str,), True, lambda v: v == BUNDLE_FORMAT, repr(BUNDLE_FORMAT)),
    Field("format_version", (int,), True, lambda v: v in SUPPORTED_VERSIONS, f"one of {list(SUPPORTED_VERSIONS)}"),
    Field("embed_dim", (int,), True, _int_in(1, 65536), "an integer in [1, 65536]"),
    Field("image_preprocess", (dict,), True, None, "an object"),
    Field("text_max_length", (int,), True, _int_in(1, 4096), "an integer in [1, 4096]"),
    Field("precisions", (list,), True, _precision_list, f"a non-empty list from {list(PRECISIONS)}"),
    Field("files", (dict,), True, bool, "an object {file name: entry}"),
    Field("dcclip_version", (str,)),
    Field("logit_scale", (float,), False, _number_in(1e-3, 1e4), "a number in [0.001, 10000]"),
    Field("pad_id", (int,), False, _int_in(0), "a non-negative integer"),
    Field("languages", (list,), False, _codes, "a list of language codes"),
    Field("io", (dict,)),
    Field("exporter", (dict,)),
    Field("quantization", (dict, type(None))),
    Field("parity", (dict,)),
    Field("source", (dict,)),
    Field("validation_inputs", (dict,)),
    Field(RECOMMENDED_KEY, (dict,)),
    Field(CHOICE_KEY, (dict,)),
    Field("card", (dict,)),
    Field(MANIFEST_DIGEST_KEY, (str,), False, _is_hex64, "64 lowercase hex digits"),
)
_NULL_OR_PRECISION = f"null or one of {list(PRECISIONS)}"
FILE_ENTRY_FIELDS = (
    Field("sha256", (str,), True, _is_hex64, "64 lowercase hex digits"),
    Field("bytes", (int,), False, _int_in(0), "a non-negative integer"),
    Field("role", (str,), False, lambda v: v in FILE_ROLES, f"one of {list(FILE_ROLES)}"),
    Field(
        "precision", (str, type(None)), False, lambda v: v is None or v in PRECISIONS, f"null or one of {PRECISIONS}"
    ),
    Field("shipped_precision", (str,)),  # its value is checked where a tower is loaded (runtime/bundle.py)
)


def _field_error(where: Any, field: str, value: Any, expected: str) -> BundleError:
    return BundleError(f"{where}: manifest field {field} is {value!r}; expected {expected}")


def check_bundle_header(manifest: Any, where: Any) -> None:
    """Format, version and required fields: what must hold before the seal can even be checked."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{where}: format is {found!r}, expected {BUNDLE_FORMAT!r}")
    version = manifest.get("format_version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise BundleVersionError(
            f"{where}: bundle format_version {version!r} is not supported by this runtime "
            f"(it reads {list(SUPPORTED_VERSIONS)}); upgrade dcclip or re-export the bundle",
            version,
        )
    missing = [field.name for field in BUNDLE_FIELDS if field.required and field.name not in manifest]
    if missing:
        raise BundleError(f"{where}: manifest lacks {missing}")


def check_bundle_manifest(manifest: Any, where: Any) -> None:
    """Every field of a bundle manifest has its type and range: an edited manifest fails at load, naming the field,
    instead of starting a server that then fails or silently answers differently on every request."""
    check_bundle_header(manifest, where)
    if not isinstance(manifest["files"], dict) or not manifest["files"]:  # named by its type: the list may be long
        raise _field_error(where, "files", type(manifest["files"]).__name__, "an object {file name: entry}")
    check_fields(manifest, BUNDLE_FIELDS, where, BundleError)
    try:
        check_preprocess_config(manifest["image_preprocess"])
    except PreprocessConfigError as exc:
        raise _field_error(where, f"image_preprocess.{exc.field}", exc.value, exc.expected) from exc
    for name, entry in manifest["files"].items():
        if not isinstance(entry, dict):
            raise _field_error(where, f"files[{name!r}]", entry, "an object with role, precision, sha256, bytes")
        check_fields(entry, FILE_ENTRY_FIELDS, where, BundleError, prefix=f"files[{name!r}].")
    _check_recommendation(manifest, where)


def _check_recommendation(manifest: dict[str, Any], where: Any) -> None:
    """``recommended_precision`` names, per tower, a precision the bundle has: the runtime loads files by it."""
    if RECOMMENDED_KEY not in manifest:
        return
    recommended, precisions = manifest[RECOMMENDED_KEY], manifest["precisions"]
    if set(recommended) != set(ROLES) or any(value not in precisions for value in recommended.values()):
        raise _field_error(where, RECOMMENDED_KEY, recommended, f"{{'image': P, 'text': P}} with P from {precisions}")


def build_bundle_manifest(**fields: Any) -> BundleManifest:
    """A bundle manifest of the current format from its fields, checked against the schema (unsealed)."""
    manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **fields}
    check_bundle_manifest(manifest, "bundle manifest being built")
    return manifest  # type: ignore[return-value]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, role: str, precision: str | None) -> FileEntry:
    """One file's manifest entry: role, precision, sha256 and size."""
    return {"role": role, "precision": precision, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), its own digest field left out."""
    content = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST_KEY}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest with ``manifest_sha256`` set: any later edit of a field is detected at load."""
    return {**manifest, MANIFEST_DIGEST_KEY: manifest_digest(manifest)}


# ------------------------------------------------------------------------------------------------- the index


class IndexManifest(TypedDict):
    """manifest.json of an image index (format version 1)."""

    format: str
    format_version: int
    bundle_digest: str
    embed_dim: int
    precision: str
    count: int
    dcclip_version: NotRequired[str]
    created: NotRequired[str]
    updated: NotRequired[str]
    bundle_name: NotRequired[str]
    bundle_path: NotRequired[str]
    skipped: NotRequired[int]
    embeddings: NotRequired[dict[str, Any]]
    thumbnails: NotRequired[dict[str, Any]]
    ann: NotRequired[dict[str, Any] | None]
    inputs: NotRequired[list[dict[str, Any]]]


INDEX_FIELDS = (
    Field("bundle_digest", (str,), True, bool, "a non-empty string"),
    Field("embed_dim", (int,), True, _int_in(1), "an integer >= 1"),
    Field("precision", (str,), True, bool, "a non-empty string"),
    Field("count", (int,), True, _int_in(0), "an integer >= 0"),
    Field("dcclip_version", (str,)),
    Field("created", (str,)),
    Field("updated", (str,)),
    Field("bundle_name", (str,)),
    Field("bundle_path", (str,)),
    Field("skipped", (int,), False, _int_in(0), "an integer >= 0"),
    Field("embeddings", (dict,)),
    Field("thumbnails", (dict,)),
    Field("ann", (dict, type(None))),
    Field("inputs", (list,)),
)


def check_index_manifest(manifest: Any, where: Any) -> None:
    """An index manifest of this format and version whose every field has its type and range (SearchIndexError)."""
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise SearchIndexError(f"{where}: not a dcclip image index manifest (format is not {INDEX_FORMAT!r})")
    if manifest.get("format_version") != INDEX_VERSION or type(manifest["format_version"]) is not int:
        raise SearchIndexError(
            f"{where}: index format_version {manifest.get('format_version')!r} is not {INDEX_VERSION}; "
            "rebuild the index with this dcclip"
        )
    check_fields(manifest, INDEX_FIELDS, where, SearchIndexError)


def build_index_manifest(**fields: Any) -> IndexManifest:
    """An index manifest of the current format from its fields, checked against the schema."""
    manifest = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, **fields}
    check_index_manifest(manifest, "index manifest being built")
    return manifest  # type: ignore[return-value]
