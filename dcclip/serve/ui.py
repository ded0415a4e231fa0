"""The web page of ``dcclip serve`` (``GET /``): three static files shipped in the package, served with strict headers.

The page is plain HTML, CSS and JS that talk to the public API only (/v1/info, /v1/classify, /v1/search), so it is
also the API's example. Nothing is fetched from another origin and nothing is built at run time. Only the files named
in ``ASSETS`` can be served: a request never becomes a path on disk, so there is nothing to traverse. Every answer
carries a Content-Security-Policy that allows scripts and styles from this origin only (no inline code at all), so
text a user typed, or a file name, can never run as script even if it were mistakenly written as HTML.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from dcclip.serve.errors import ApiError

__all__ = [
    "ASSETS",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "docs_router",
    "router",
    "security_headers",
]

STATIC_DIR = Path(__file__).with_name("static")
# URL name -> (file in STATIC_DIR, media type); the page's only files.
ASSETS: dict[str, tuple[str, str]] = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE = ("index.html", "text/html; charset=utf-8")
DOCS_PAGE = ("docs.html", "text/html; charset=utf-8")
DOCS_SCRIPT = ("docs.js", "text/javascript; charset=utf-8")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",  # blob: previews of the images being uploaded; data: the empty favicon
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that ignore frame-ancestors
    "Cache-Control": "no-cache",  # revalidate: a new dcclip version must not run against an old page
}

router = APIRouter()
docs_router = APIRouter()  # /docs is served with or without --no-ui: it is the API's own documentation


def security_headers() -> dict[str, str]:
    """The headers every page file is sent with (a copy: responses may add to it)."""
    return dict(SECURITY_HEADERS)


@lru_cache(maxsize=len(ASSETS) + 3)
def read_asset(name: str) -> bytes:
    """A static file's bytes, read once per process (the files are part of the installed package)."""
    return (STATIC_DIR / name).read_bytes()


def asset_response(name: str, media_type: str) -> Response:
    """One static file with the security headers."""
    return Response(read_asset(name), media_type=media_type, headers=security_headers())


@router.get("/", include_in_schema=False)
async def page() -> Response:
    """The single page (classify and search tabs)."""
    return asset_response(*PAGE)


@docs_router.get("/docs", include_in_schema=False)
async def docs_page() -> Response:
    """The API docs, rendered in the browser from /openapi.json by a packaged script (no CDN: works offline)."""
    return asset_response(*DOCS_PAGE)


@docs_router.get("/docs.js", include_in_schema=False)
async def docs_script() -> Response:
    """The script of /docs (apart from /static, which --no-ui turns off with the page)."""
    return asset_response(*DOCS_SCRIPT)


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    """app.js or style.css; any other name is a 404, whatever it spells."""
    if name not in ASSETS:
        raise ApiError("not_found", f"no static file {name[:60]!r}")
    return asset_response(*ASSETS[name])
