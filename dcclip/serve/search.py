"""Text-to-image search over the image index given with ``dcclip serve --index INDEX``, and the index's thumbnails.

The index is opened once at start-up with the served bundle's manifest digest, so an index built with another model
(whose embeddings would be meaningless against this text tower) is refused before the server takes a request.
Thumbnails are addressed by integer id only: the id is checked here and resolved by the index itself to a file in
its own ``thumbs/`` folder, and the resolved file must still lie inside that folder, so no request can name a path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import FileResponse

from dcclip.serve.errors import ApiError
from dcclip.serve.forms import MAX_LANG_CHARS
from dcclip.serve.limits import ServeLimits
from dcclip.serve.schemas import SearchRequest

if TYPE_CHECKING:
    from dcclip.runtime.bundle import BundleModel
    from dcclip.runtime.index import ImageIndex, SearchHit

__all__ = [
    "THUMBNAIL_ROUTE",
    "check_search",
    "hit_body",
    "index_info",
    "loaded_index",
    "open_index",
    "run_search",
    "search_k",
    "thumbnail_response",
]

THUMBNAIL_ROUTE = "/v1/index/thumbs/{thumb_id}"
THUMB_ID = re.compile(r"[0-9]{1,12}")  # ids are row numbers: twelve digits is far past any index
THUMB_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
THUMB_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",  # opened on its own, a thumbnail can run nothing
    "Cache-Control": "private, max-age=300",
}
DEFAULT_K = 10
NO_INDEX = "no image index is loaded: start the server with dcclip serve --bundle BUNDLE --index INDEX"


def open_index(path: Path, manifest: dict[str, Any]) -> ImageIndex:
    """Open the index at ``path``, refusing one built from another bundle (SearchIndexError, a ValueError)."""
    from dcclip.runtime.index import ImageIndex, bundle_digest

    return ImageIndex.open(Path(path), bundle_digest=bundle_digest(manifest))


def loaded_index(request: Request) -> ImageIndex:
    """The app's index; 404 not_found with how to load one when the server runs without."""
    index = getattr(request.app.state, "index", None)
    if index is None:
        raise ApiError("not_found", NO_INDEX)
    return index


def index_info(index: ImageIndex | None) -> dict[str, Any]:
    """What /v1/info says about search: whether an index is loaded and how many images it holds."""
    return {"loaded": index is not None, "count": len(index) if index is not None else 0}


def search_k(body: SearchRequest, limits: ServeLimits) -> int:
    """The number of images asked for: ``k``, or 10 (at most max_search_k) when the request leaves it out."""
    return body.k if body.k is not None else min(DEFAULT_K, limits.max_search_k)


def check_search(body: SearchRequest, limits: ServeLimits, languages: list[str]) -> None:
    """The same limits as the other endpoints, before the model runs: text, language, k and templates."""
    if not body.text.strip():
        raise ApiError("invalid_text", "text is empty: give the words to search for")
    if len(body.text) > limits.max_text_chars:
        message = f"text has {len(body.text)} characters, over max_text_chars={limits.max_text_chars}"
        raise ApiError("text_too_long", message)
    lang = body.lang.strip()
    if not lang or len(lang) > MAX_LANG_CHARS or (languages and lang not in languages):
        raise ApiError("unknown_language", f"lang {lang[:40]!r} is not one of the bundle's languages {languages}")
    if not 1 <= search_k(body, limits) <= limits.max_search_k:
        raise ApiError("validation_error", f"k must be an integer in [1, {limits.max_search_k}] (max_search_k)")
    templates = body.templates or []
    if len(templates) > limits.max_templates:
        raise ApiError("too_many_templates", f"{len(templates)} templates exceed max_templates={limits.max_templates}")
    most = limits.max_text_chars
    for position, template in enumerate(templates):
        if len(template) > most:
            message = f"templates[{position}] has {len(template)} characters, over max_text_chars={most}"
            raise ApiError("text_too_long", message)


def run_search(model: BundleModel, index: ImageIndex, body: SearchRequest, k: int) -> list[SearchHit]:
    """The k nearest images to the text (worker thread); the runtime raises its own input errors (4xx)."""
    from dcclip.runtime.index import search_text

    return search_text(model, index, body.text, body.lang.strip(), k=k, templates=body.templates)


def hit_body(hit: SearchHit) -> dict[str, Any]:
    """One hit as JSON; the image's source path on the server is not sent (only the key the index gives it)."""
    return {
        "id": int(hit.id),
        "key": str(hit.key),
        "score": float(hit.score),
        "thumbnail": THUMBNAIL_ROUTE.format(thumb_id=int(hit.id)),
    }


def thumbnail_file(index: ImageIndex, thumb_id: str) -> Path:
    """The thumbnail of a validated id, inside the index's thumbs folder; 404 for anything else."""
    from dcclip.runtime.index import THUMBS_DIR, SearchIndexError

    if not THUMB_ID.fullmatch(thumb_id):
        raise ApiError("not_found", "a thumbnail id is a non-negative integer")
    try:
        path = Path(index.thumbnail_path(int(thumb_id)))
    except SearchIndexError as exc:
        raise ApiError("not_found", f"no thumbnail {thumb_id}: the index holds ids 0..{len(index) - 1}") from exc
    # Defence in depth: the index validated the id; the file (a symlink followed) must still lie in its thumbs folder.
    resolved = path.resolve()
    if resolved.parent != (Path(index.path) / THUMBS_DIR).resolve() or not resolved.is_file():
        raise ApiError("not_found", f"no thumbnail {thumb_id} in the index")
    if resolved.suffix.lower() not in THUMB_TYPES:
        raise ApiError("not_found", f"thumbnail {thumb_id} is not an image file")
    return resolved


def thumbnail_response(index: ImageIndex, thumb_id: str) -> FileResponse:
    """The thumbnail file, typed from its suffix, never sniffed."""
    path = thumbnail_file(index, thumb_id)
    return FileResponse(path, media_type=THUMB_TYPES[path.suffix.lower()], headers=dict(THUMB_HEADERS))
