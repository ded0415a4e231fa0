"""``dcclip search``: open an index and the bundle it was built with, embed a text query, return the nearest images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dcclip.runtime.bundle import BundleModel
from dcclip.runtime.classifier import default_templates
from dcclip.runtime.index import (
    MANIFEST_FILE,
    ImageIndex,
    SearchHit,
    SearchIndexError,
    bundle_digest,
    read_index_manifest,
    search_text,
)

__all__ = ["DEFAULT_TEMPLATES_NAME", "index_bundle", "search_index"]

DEFAULT_TEMPLATES_NAME = "default"  # --templates default: the language's built-in prompt templates


def search_index(
    index_dir: str | os.PathLike,
    text: str,
    lang: str,
    k: int = 10,
    bundle: str | os.PathLike | None = None,
    templates: Sequence[str] | None = None,
    exact: bool = False,
    threads: int | None = None,
) -> list[SearchHit]:
    """The ``k`` images of the index nearest to ``text``; ``bundle`` defaults to the one the index records.

    ``templates`` may be ``["default"]`` for the language's built-in templates (what classify uses).
    """
    manifest = read_index_manifest(index_dir)
    model = BundleModel(index_bundle(index_dir, manifest, bundle), manifest["precision"], intra_op_num_threads=threads)
    index = ImageIndex.open(Path(index_dir), bundle_digest=bundle_digest(model.manifest))
    if templates is not None and list(templates) == [DEFAULT_TEMPLATES_NAME]:
        templates = default_templates(lang)
    return search_text(model, index, text, lang, k=k, templates=templates, exact=exact)


def index_bundle(index_dir: str | os.PathLike, manifest: dict, bundle: str | os.PathLike | None) -> Path:
    """The bundle to use: the one given, else the one the index records (which must still be there)."""
    if bundle is not None:
        return Path(bundle)
    recorded = manifest.get("bundle_path")
    if not recorded or not (Path(recorded) / "manifest.json").is_file():
        raise SearchIndexError(
            f"{Path(index_dir) / MANIFEST_FILE}: the index was built with bundle {recorded!r}, which is not there; "
            "give the bundle with --bundle"
        )
    return Path(recorded)
