"""An image index for text-to-image search over a bundle: the on-disk format, opening it, and searching it.

``INDEX/`` holds ``manifest.json`` (format, the bundle's digest, embed dim, precision, count), ``embeddings.npy``
(float16, L2-normalised rows, row i = id i), ``items.jsonl`` (``{"id", "key", "source"}`` per id),
``thumbs/<id>.jpg`` (a small JPEG of every image, so a server never touches the originals), ``skipped.jsonl``
(inputs that could not be read, with why) and, when built with an approximate index, ``ann.faiss``.

The manifest is written last and its ``count`` (and ``skipped``) says how many rows of the other files belong to the
index: ``dcclip index add`` writes longer files first and the manifest after, so a reader, or an add killed
half-way, never sees ids the manifest does not vouch for. Ids are 0..n-1 in insertion order and never change.

Search is exact cosine (a dot product of normalised rows) in numpy unless the index carries an approximate one
(faiss IVF over the same float16 rows, built with ``dcclip index build --ann``); hits found either way are scored
from ``embeddings.npy``, so both give the same score to the same image. faiss is imported only when used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcclip.runtime.bundle import BundleModel
from dcclip.runtime.errors import InvalidInputError, InvalidTextError, SearchIndexError, UnknownLanguageError
from dcclip.runtime.errors import check_text as _check_text
from dcclip.runtime.errors import check_unicode as _check_unicode
from dcclip.runtime.manifest import (
    INDEX_FORMAT,
    INDEX_VERSION,
    MANIFEST_DIGEST_KEY,
    MANIFEST_FILE,
    check_index_manifest,
    manifest_digest,
)
from dcclip.runtime.optional import INDEX_HINT, require
from dcclip.runtime.prompts import PLACEHOLDER, checked_templates, class_embeddings, fill_templates

__all__ = [
    "ANN_FILE",
    "EMBEDDINGS_FILE",
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "ITEMS_FILE",
    "MANIFEST_FILE",
    "PARTS_DIR",
    "SKIPPED_FILE",
    "THUMBS_DIR",
    "THUMB_MAX_SIDE",
    "ImageIndex",
    "SearchHit",
    "SearchIndexError",
    "build_ann",
    "bundle_digest",
    "exact_top_k",
    "import_faiss",
    "read_index_manifest",
    "search_text",
]

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.jsonl"
SKIPPED_FILE = "skipped.jsonl"
THUMBS_DIR = "thumbs"
THUMB_MAX_SIDE = 160
ANN_FILE = "ann.faiss"
PARTS_DIR = ".parts"  # where an unfinished build keeps its finished parts (dcclip/search/build.py)
ANN_KIND = "faiss-ivf"
INSTALL_HINT = INDEX_HINT
QUERY_CHUNK = 64  # queries scored at once by exact search: bounds the [q, n] score matrix


@dataclass
class SearchHit:
    """One image found by a search: its id in the index, key, source (path or ``shard#key``) and cosine score."""

    id: int
    key: str
    source: str
    score: float


def bundle_digest(manifest: dict[str, Any]) -> str:
    """The digest naming a bundle: its sealed ``manifest_sha256``, or the same hash computed for older bundles."""
    recorded = manifest.get(MANIFEST_DIGEST_KEY)
    return recorded if isinstance(recorded, str) and recorded else manifest_digest(manifest)


# ------------------------------------------------------------------------------------------------- reading the files


def read_index_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an index directory, after checking its format, version and the fields search needs."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        unfinished = (Path(path) / PARTS_DIR).is_dir()
        hint = " (an unfinished build? run `dcclip index build` again to resume it)" if unfinished else ""
        raise SearchIndexError(f"{file}: not a dcclip image index (no {MANIFEST_FILE}){hint}")
    try:
        manifest = json.loads(file.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{file}: unreadable index manifest ({exc})") from exc
    check_index_manifest(manifest, file)
    return manifest


def read_embeddings(path: str | os.PathLike, count: int, dim: int) -> np.ndarray:
    """The first ``count`` rows of ``embeddings.npy`` (memory-mapped float16 [count, dim])."""
    file = Path(path) / EMBEDDINGS_FILE
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{file}: unreadable embeddings ({exc})") from exc
    if array.dtype != np.float16 or array.ndim != 2 or array.shape[1] != dim or array.shape[0] < count:
        raise SearchIndexError(
            f"{file}: holds {array.dtype} {list(array.shape)}, the manifest needs float16 [>= {count}, {dim}]"
        )
    return array[:count]


def read_jsonl(file: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` JSON rows of a ``.jsonl`` file (missing file: none)."""
    if count == 0 and not file.exists():
        return []
    rows = []
    try:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if len(rows) == count:
                    break
                rows.append(json.loads(line))
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"line {number} is not a JSON object")
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{file}: unreadable ({exc})") from exc
    if len(rows) < count:
        raise SearchIndexError(f"{file}: {len(rows)} rows, the index manifest counts {count}")
    return rows


def read_items(path: str | os.PathLike, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of ``items.jsonl``, checked: row i has id i, a string key and a string source."""
    file = Path(path) / ITEMS_FILE
    items = read_jsonl(file, count)
    for position, item in enumerate(items):
        if item.get("id") != position or not all(isinstance(item.get(name), str) for name in ("key", "source")):
            expected = f"{{'id': {position}, 'key': str, 'source': str}}"
            raise SearchIndexError(f"{file}: line {position + 1} is not {expected}")
    return items


# ------------------------------------------------------------------------------------------------- exact search


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, (ids, scores) of the ``k`` rows with the largest dot product, best first, ties by lower id."""
    out = []
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = queries[start : start + QUERY_CHUNK] @ embeddings.T
        out.extend(_best(np.arange(scores.shape[1]), row, k) for row in scores)
    return out


def _best(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (id, score) pairs of candidates, best first; every candidate tied with the k-th is considered,
    so equal scores always resolve to the lower id (what a stable sort over all rows gives)."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


# ------------------------------------------------------------------------------------------------- approximate search


def import_faiss() -> Any:
    """The faiss module, or an ImportError saying how to install the ``index`` extra."""
    return require("faiss", "approximate search", f"{INSTALL_HINT} (faiss-cpu)")


def ann_params(count: int) -> dict[str, int]:
    """IVF list count (about sqrt(n), at least 39 training rows per list) and lists probed per query."""
    nlist = max(1, min(round(math.sqrt(count)), count // 39))
    return {"nlist": nlist, "nprobe": min(nlist, max(16, nlist // 16))}


def build_ann(embeddings: np.ndarray, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A faiss IVF index (lists of float16 rows: lossless for ``embeddings.npy``) and its manifest entry.

    IVF rather than a graph (HNSW): on 2 cores it builds 1M rows in about 15 s where usearch's HNSW needs over ten
    minutes, at recall@10 1.0 and about 5 ms a query (benchmarks/index_search.py), so ``dcclip index add`` can
    simply rebuild it.
    """
    faiss = import_faiss()
    if len(embeddings) == 0:
        raise SearchIndexError("cannot build an approximate index over an empty index")
    rows = np.ascontiguousarray(embeddings, dtype=np.float32)
    params = ann_params(len(rows))
    quantizer = faiss.IndexFlatIP(rows.shape[1])
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, rows.shape[1], params["nlist"], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    rng = np.random.default_rng(seed)
    sample = rows if len(rows) <= 64 * params["nlist"] else rows[np.sort(rng.choice(len(rows), 64 * params["nlist"]))]
    index.train(sample)
    index.add(rows)
    index.nprobe = params["nprobe"]
    entry = {"kind": ANN_KIND, "file": ANN_FILE, **params, "library": f"faiss-cpu {getattr(faiss, '__version__', '?')}"}
    return index, entry


def load_ann(path: Path, entry: dict[str, Any], count: int, dim: int) -> Any:
    """Read the index's faiss file and set its probe count; SearchIndexError when it does not fit the embeddings."""
    faiss = import_faiss()
    file = path / ANN_FILE
    if entry.get("kind") != ANN_KIND:
        raise SearchIndexError(f"{path / MANIFEST_FILE}: unknown approximate index kind {entry.get('kind')!r}")
    try:
        index = faiss.read_index(str(file))
    except RuntimeError as exc:
        raise SearchIndexError(f"{file}: unreadable approximate index ({exc})") from exc
    if index.d != dim or index.ntotal < count:
        raise SearchIndexError(f"{file}: holds {index.ntotal} rows of {index.d}, the index {count} of {dim}")
    index.nprobe = int(entry.get("nprobe", 16))
    return index


# ------------------------------------------------------------------------------------------------- the index


class ImageIndex:
    """An opened image index: items, float16 embeddings (memory-mapped), the optional ANN; safe to share across
    threads (the float32 copy exact search uses is made once, on first need)."""

    def __init__(self, path: Path, manifest: dict[str, Any], embeddings: np.ndarray, items: list[dict[str, Any]]):
        self.path = path
        self.manifest = manifest
        self.items = items
        self._embeddings16 = embeddings
        self._embeddings32: np.ndarray | None = None
        self._lock = threading.Lock()
        self._ann = self._open_ann()

    @classmethod
    def open(cls, path: str | os.PathLike, bundle_digest: str | None = None) -> ImageIndex:
        """Open ``path``; with ``bundle_digest``, refuse an index built from another bundle (its embeddings would
        mean nothing to that bundle's text tower)."""
        path = Path(path)
        manifest = read_index_manifest(path)
        if bundle_digest is not None and manifest["bundle_digest"] != bundle_digest:
            raise SearchIndexError(
                f"{path / MANIFEST_FILE}: this index was built with bundle {manifest.get('bundle_name', '?')!r} "
                f"(digest {manifest['bundle_digest'][:12]}…), not with the bundle in use "
                f"(digest {bundle_digest[:12]}…); build an index with this bundle (`dcclip index build`)"
            )
        count, dim = manifest["count"], manifest["embed_dim"]
        return cls(path, manifest, read_embeddings(path, count, dim), read_items(path, count))

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ImageIndex({str(self.path)!r}, count={len(self)}, ann={self.ann_kind})"

    @property
    def bundle_digest(self) -> str:
        """Digest of the bundle whose image tower made the embeddings."""
        return str(self.manifest["bundle_digest"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def ann_kind(self) -> str | None:
        """The approximate index's kind when one is loaded, else None (exact search only)."""
        return self.manifest["ann"]["kind"] if self._ann is not None else None

    @property
    def embeddings(self) -> np.ndarray:
        """The stored float16 rows [n, d] (read-only, memory-mapped)."""
        return self._embeddings16

    def _open_ann(self) -> Any:
        """The ANN named by the manifest; without faiss installed, exact search (slower, same answers) and a warning."""
        entry = self.manifest.get("ann")
        if not entry:
            return None
        try:
            return load_ann(self.path, entry, len(self), self.embed_dim)
        except ImportError as exc:
            log.warning("%s: searching exactly: %s", self.path, exc)
            return None

    def _exact_rows(self) -> np.ndarray:
        """float32 copy of the embeddings for BLAS (float16 matrix products are not vectorised in numpy)."""
        with self._lock:
            if self._embeddings32 is None:
                self._embeddings32 = np.ascontiguousarray(self._embeddings16, dtype=np.float32)
            return self._embeddings32

    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> list[list[SearchHit]]:
        """For every query row (float32 [q, d], normalised), the ``k`` nearest images by cosine, best first.

        Uses the approximate index when there is one unless ``exact``; scores come from the stored rows either way.
        """
        queries = self._check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"k must be a positive int, got {k!r}")
        if len(self) == 0:
            return [[] for _ in queries]
        k = min(int(k), len(self))
        use_ann = self._ann is not None and not exact
        found = self._ann_top_k(queries, k) if use_ann else exact_top_k(self._exact_rows(), queries, k)
        return [[self._hit(int(i), float(s)) for i, s in zip(ids, scores, strict=True)] for ids, scores in found]

    def _ann_top_k(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Candidates from faiss, re-scored against the stored rows (ids beyond ``count`` are an add in progress)."""
        _, candidates = self._ann.search(queries, k)
        out = []
        for query, row in zip(queries, candidates, strict=True):
            ids = np.unique(row[(row >= 0) & (row < len(self))])
            scores = np.asarray(self._embeddings16[ids], dtype=np.float32) @ query
            out.append(_best(ids, scores, k))
        return out

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        """A float [q, d] array (one row [d] is taken as q = 1) -> contiguous float32."""
        if not isinstance(queries, np.ndarray) or not np.issubdtype(queries.dtype, np.floating):
            raise InvalidInputError(f"queries must be a float numpy array [q, {self.embed_dim}]")
        queries = queries[None] if queries.ndim == 1 else queries
        if queries.ndim != 2 or queries.shape[1] != self.embed_dim:
            raise InvalidInputError(f"queries have shape {list(queries.shape)}, expected [q, {self.embed_dim}]")
        return np.ascontiguousarray(queries, dtype=np.float32)

    def _hit(self, index: int, score: float) -> SearchHit:
        item = self.items[index]
        return SearchHit(id=index, key=item["key"], source=item["source"], score=score)

    def thumbnail_path(self, id: int) -> Path:
        """``thumbs/<id>.jpg`` of an item: only from a validated in-range int, never from a user's string."""
        if isinstance(id, bool) or not isinstance(id, int | np.integer) or not 0 <= int(id) < len(self):
            raise SearchIndexError(f"{self.path / THUMBS_DIR}: no item {id!r} (ids are 0..{len(self) - 1})")
        return self.path / THUMBS_DIR / f"{int(id)}.jpg"


# ------------------------------------------------------------------------------------------------- text queries


def search_text(
    model: BundleModel,
    index: ImageIndex,
    text: str,
    lang: str,
    k: int = 10,
    templates: Sequence[str] | None = None,
    exact: bool = False,
) -> list[SearchHit]:
    """The ``k`` images nearest to ``text`` (in ``lang``, one of the bundle's languages), best first.

    The query is embedded like a zero-shot class: the bare text, or with ``templates`` the normalised mean of the
    text in every template (runtime/prompts.py). The index must come from the same bundle as ``model``.
    """
    check_same_bundle(model, index)
    chosen = _check_query(model, text, lang, templates)
    query = class_embeddings(model.embed_prompts(fill_templates([text], chosen)), 1)
    return index.search(query, k, exact=exact)[0]


def check_same_bundle(model: BundleModel, index: ImageIndex) -> None:
    """SearchIndexError naming both bundles when the index's embeddings were made by another bundle than ``model``'s."""
    digest = bundle_digest(model.manifest)
    if digest != index.bundle_digest:
        raise SearchIndexError(
            f"{index.path / MANIFEST_FILE}: this index was built with bundle "
            f"{index.manifest.get('bundle_name', '?')!r} (digest {index.bundle_digest[:12]}…), but the model is "
            f"{str(model.path)!r} (digest {digest[:12]}…); build an index with this bundle (`dcclip index build`)"
        )


def _check_query(model: BundleModel, text: str, lang: str, templates: Sequence[str] | None) -> tuple[str, ...]:
    """The checks the classifier makes of a label, its language and templates, for a query; returns the templates."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidTextError(f"the query text must be a non-empty string, got {text!r}")
    _check_text(text, "the query text", model.max_text_chars)
    if not isinstance(lang, str) or not lang:
        raise UnknownLanguageError(f"lang must be a language code string, got {lang!r}")
    _check_unicode(lang, "lang", UnknownLanguageError)
    if model.languages and lang not in model.languages:
        raise UnknownLanguageError(f"language {lang!r} is not one of this bundle's languages {model.languages}")
    chosen = (PLACEHOLDER,) if templates is None else checked_templates(templates)
    for index, template in enumerate(chosen):
        _check_text(template, f"templates[{index}]", model.max_text_chars)
    return chosen
