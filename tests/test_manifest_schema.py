"""The bundle, index and shard-set manifest schemas: a valid manifest round-trips through JSON and its checker, and a
value of the wrong type in any declared field is refused with an error naming that field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcclip.data.shard_manifest import (
    SHARD_FIELDS,
    SHARD_SET_FIELDS,
    ShardError,
    ShardInfo,
    build_manifest,
    check_shard_manifest,
    read_manifest,
)
from dcclip.runtime.bundle import read_manifest as read_bundle_manifest
from dcclip.runtime.errors import BundleError, SearchIndexError
from dcclip.runtime.manifest import (
    BUNDLE_FIELDS,
    FILE_ENTRY_FIELDS,
    INDEX_FIELDS,
    Field,
    build_bundle_manifest,
    build_index_manifest,
    check_bundle_manifest,
    check_index_manifest,
    is_json_type,
    seal_manifest,
)

DIGEST = "ab" * 32


def wrong_value(field: Field) -> object:
    """A value of a JSON type the field does not accept."""
    return next(value for value in ("7", 7, ["7"], {"7": 7}) if not is_json_type(value, field.types))


def bundle_fields() -> dict:
    """Every field of a bundle manifest, each set to a valid value."""
    pre = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "resize_mode": "shortest"}
    files = {
        "image.onnx": {"role": "image", "precision": "fp32", "sha256": DIGEST, "bytes": 10},
        "text.onnx": {"role": "text", "precision": "fp32", "sha256": DIGEST, "bytes": 10},
        "image.int8.onnx": {"role": "image", "precision": "int8", "sha256": DIGEST, "bytes": 5},
        "text.int8.onnx": {
            "role": "text",
            "precision": "int8",
            "sha256": DIGEST,
            "bytes": 5,
            "shipped_precision": "fp32",
        },
        "tokenizer.json": {"role": "tokenizer", "precision": None, "sha256": DIGEST, "bytes": 3},
    }
    return {
        "dcclip_version": "0.1.0", "embed_dim": 32, "logit_scale": 14.3, "image_preprocess": pre, "text_max_length": 16,
        "pad_id": 0, "languages": ["en", "zh"], "precisions": ["fp32", "int8"], "io": {}, "files": files,
        "exporter": {}, "quantization": None, "parity": {}, "source": {"step": None}, "validation_inputs": {},
        "recommended_precision": {"image": "int8", "text": "fp32"}, "precision_choice": {}, "card": {},
    }  # fmt: skip


def test_bundle_manifest_round_trips_sealed(tmp_path: Path) -> None:
    manifest = seal_manifest(build_bundle_manifest(**bundle_fields()))
    assert {field.name for field in BUNDLE_FIELDS} <= set(manifest)  # the test sets every declared field
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    assert read_bundle_manifest(tmp_path) == manifest


@pytest.mark.parametrize("field", BUNDLE_FIELDS, ids=lambda f: f.name)
def test_bundle_manifest_refuses_a_wrong_type(field: Field, tmp_path: Path) -> None:
    manifest = {**build_bundle_manifest(**bundle_fields()), field.name: wrong_value(field)}
    with pytest.raises(BundleError, match=rf"\b{field.name}\b"):
        check_bundle_manifest(manifest, "m.json")
    sealed = manifest if field.name == "manifest_sha256" else seal_manifest(manifest)  # sealing would replace it
    (tmp_path / "manifest.json").write_text(json.dumps(sealed), "utf-8")
    with pytest.raises(BundleError, match=rf"\b{field.name}\b"):  # sealed or not, the runtime's reader refuses it
        read_bundle_manifest(tmp_path)


@pytest.mark.parametrize("field", FILE_ENTRY_FIELDS, ids=lambda f: f.name)
def test_bundle_file_entry_refuses_a_wrong_type(field: Field) -> None:
    fields = bundle_fields()
    fields["files"]["text.int8.onnx"][field.name] = wrong_value(field)
    with pytest.raises(BundleError, match=rf"files\['text.int8.onnx'\]\.{field.name}"):
        build_bundle_manifest(**fields)


@pytest.mark.parametrize(
    ("key", "value"),
    [("image_size", "32"), ("image_size", 4), ("mean", [0.5, 0.5]), ("std", [0, 1, 1]), ("interpolation", "nearest")],
)
def test_bundle_preprocessing_is_checked_by_its_owner(key: str, value: object) -> None:
    fields = bundle_fields()
    fields["image_preprocess"] = {**fields["image_preprocess"], key: value}
    with pytest.raises(BundleError, match=rf"image_preprocess\.{key}"):
        build_bundle_manifest(**fields)


def test_bundle_manifest_ranges_and_unknown_fields() -> None:
    with pytest.raises(BundleError, match="embed_dim"):
        build_bundle_manifest(**{**bundle_fields(), "embed_dim": 0})
    with pytest.raises(BundleError, match="recommended_precision"):
        build_bundle_manifest(**{**bundle_fields(), "recommended_precision": {"image": "int4", "text": "fp32"}})
    with pytest.raises(BundleError, match=r"lacks \['files'\]"):
        build_bundle_manifest(**{k: v for k, v in bundle_fields().items() if k != "files"})
    assert build_bundle_manifest(**bundle_fields(), note="kept")["note"] == "kept"  # newer advisory fields load


def index_fields() -> dict:
    """Every field of an index manifest, each set to a valid value."""
    return {
        "bundle_digest": DIGEST, "embed_dim": 32, "precision": "fp32", "count": 3, "dcclip_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00", "updated": "2025-01-01T00:00:00+00:00", "bundle_name": "b",
        "bundle_path": "/b", "skipped": 0, "embeddings": {}, "thumbnails": {}, "ann": None, "inputs": [],
    }  # fmt: skip


def test_index_manifest_round_trips() -> None:
    manifest = build_index_manifest(**index_fields())
    assert {field.name for field in INDEX_FIELDS} <= set(manifest)
    again = json.loads(json.dumps(manifest))
    check_index_manifest(again, "index/manifest.json")
    assert again == manifest


@pytest.mark.parametrize("field", INDEX_FIELDS, ids=lambda f: f.name)
def test_index_manifest_refuses_a_wrong_type(field: Field) -> None:
    with pytest.raises(SearchIndexError, match=rf"\b{field.name}\b"):
        check_index_manifest({**build_index_manifest(**index_fields()), field.name: wrong_value(field)}, "m.json")


def test_index_manifest_refuses_another_version() -> None:
    with pytest.raises(SearchIndexError, match="format_version 2"):
        check_index_manifest({**build_index_manifest(**index_fields()), "format_version": 2}, "m.json")


def shard_set() -> dict:
    """A shard-set manifest with every declared field set."""
    info = ShardInfo("shard-000000.tar", samples=2, bytes=2048)
    info.langs.update({"en": 2, "zh": 1})
    extra = {"source": "in/", "source_kind": "folder", "max_side": None, "caption_format": {}, "translation": {}}
    return dict(build_manifest([info], [{"key": "k", "source": "s", "reason": "r"}], extra | {"kind": "shards"}))


def test_shard_manifest_round_trips(tmp_path: Path) -> None:
    manifest = shard_set()
    assert {field.name for field in SHARD_SET_FIELDS} <= set(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    assert read_manifest(tmp_path) == manifest


@pytest.mark.parametrize("field", SHARD_SET_FIELDS, ids=lambda f: f.name)
def test_shard_manifest_refuses_a_wrong_type(field: Field, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({**shard_set(), field.name: wrong_value(field)}), "utf-8")
    with pytest.raises(ShardError, match=rf"\b{field.name}\b|not a dcclip shard manifest"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("field", SHARD_FIELDS, ids=lambda f: f.name)
def test_shard_entry_refuses_a_wrong_type(field: Field) -> None:
    manifest = shard_set()
    manifest["shards"][0][field.name] = wrong_value(field)
    with pytest.raises(ShardError, match=rf"shards\[0\]\.{field.name}"):
        check_shard_manifest(manifest, "m.json")
