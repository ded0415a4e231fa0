"""The FastAPI application: zero-shot classification, embeddings and image search over one bundle, with limits and
JSON errors, plus the web page at ``/``.

``create_app`` loads the bundle (and the image index, if any) once, failing at start-up rather than at the first
request, and wires the middleware, the error handlers and the routes; ``app_from_env`` is the factory uvicorn workers
import when ``serve`` runs several.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from dcclip import __version__
from dcclip.runtime.classifier import default_templates
from dcclip.serve.batching import DEFAULT_BATCH_MAX, DEFAULT_BATCH_WAIT_MS
from dcclip.serve.errors import ApiError, install_error_handlers
from dcclip.serve.forms import PartLimits, media_type, parse_classify, read_form, read_images
from dcclip.serve.limits import ServeLimits, ServeSettings
from dcclip.serve.middleware import BodyLimitMiddleware, ErrorGuardMiddleware
from dcclip.serve.schemas import (
    ClassifyResponse,
    EmbeddingsResponse,
    SearchRequest,
    SearchResponse,
    TextEmbeddingsRequest,
    api_description,
    classify_openapi,
    error_responses,
    image_embeddings_openapi,
)
from dcclip.serve.search import (
    THUMBNAIL_ROUTE,
    check_search,
    hit_body,
    index_info,
    loaded_index,
    open_index,
    run_search,
    search_k,
    thumbnail_response,
)
from dcclip.serve.service import Service, info_manifest
from dcclip.serve.ui import docs_router
from dcclip.serve.ui import router as ui_router

__all__ = ["app_from_env", "create_app"]

router = APIRouter()
DEFAULT_TEMPLATES_NAME = "default"  # /v1/search templates ["default"]: the language's built-in ones (as the CLI's)


def get_service(request: Request) -> Service:
    """The app's loaded service."""
    return request.app.state.service


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON (application/json or any +json type)."""
    found = media_type(request)
    if found != "application/json" and not (found.startswith("application/") and found.endswith("+json")):
        raise ApiError("unsupported_media_type", f"expected application/json, got {found or 'no Content-Type'}")


def embeddings_body(embeddings: np.ndarray) -> JSONResponse:
    """Embeddings as JSON lists with their count and width."""
    rows, dim = embeddings.shape
    return JSONResponse({"count": int(rows), "dim": int(dim), "embeddings": embeddings.tolist()})


def ok(model: type) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: ``model`` for 200 plus the error shapes (endpoints return JSONResponse: no re-validation)."""
    return {200: {"model": model}, **error_responses(400, 413, 415, 422)}


@router.post(
    "/v1/classify",
    openapi_extra=classify_openapi,
    responses=ok(ClassifyResponse),
    summary="Zero-shot classify uploaded images against free-text labels",
)
async def classify(request: Request) -> JSONResponse:
    """Multipart images + labels (+ lang, top_k, templates) -> the top labels of every image with probabilities."""
    start = time.perf_counter()
    service = get_service(request)
    limits = service.limits
    form = await read_form(request, PartLimits.classify(limits))
    try:
        query = await parse_classify(form, limits)
    finally:
        await form.close()
    timings: dict[str, float] | None = {} if request.app.state.server_timing else None
    parsed = time.perf_counter()
    extra = () if timings is None else (timings,)
    ranked = await service.run(service.classify, query, *extra, timings=timings, images=True)
    ran = time.perf_counter()
    results = [
        {"filename": image.filename, "predictions": [{"label": label, "probability": p} for label, p in rows]}
        for image, rows in zip(query.images, ranked, strict=True)
    ]
    response = JSONResponse({"lang": query.lang, "top_k": query.top_k, "results": results})
    if timings is not None:
        marks = {"parse": (start, parsed), "run": (parsed, ran), "json": (ran, time.perf_counter())}
        marks["handler"] = (start, time.perf_counter())
        timings |= {name: (end - begin) * 1000 for name, (begin, end) in marks.items()}
        response.headers["Server-Timing"] = server_timing_header(timings)
    return response


def server_timing_header(timings: dict[str, float]) -> str:
    """``name;dur=ms`` entries (the W3C Server-Timing syntax); ``batch`` is an image count, not a duration."""
    return ", ".join(f"{name};dur={value:.3f}" for name, value in timings.items())


@router.post(
    "/v1/embeddings/image",
    openapi_extra=image_embeddings_openapi,
    responses=ok(EmbeddingsResponse),
    summary="Embed uploaded images",
)
async def embed_images(request: Request) -> JSONResponse:
    """Multipart images -> L2-normalised image embeddings, one row per image."""
    service = get_service(request)
    limits = service.limits
    form = await read_form(request, PartLimits.images(limits))
    try:
        uploads = await read_images(form, limits)
    finally:
        await form.close()
    return embeddings_body(await service.run(service.embed_images, uploads, images=True))


@router.post(
    "/v1/embeddings/text",
    dependencies=[Depends(require_json)],
    responses=ok(EmbeddingsResponse),
    summary="Embed texts",
)
async def embed_texts(body: TextEmbeddingsRequest, request: Request) -> JSONResponse:
    """JSON ``{"texts": [...]}`` -> L2-normalised text embeddings, one row per text."""
    service = get_service(request)
    service.check_texts(body.texts)
    return embeddings_body(await service.run(service.embed_texts, body.texts))


@router.post(
    "/v1/search",
    dependencies=[Depends(require_json)],
    responses={200: {"model": SearchResponse}, **error_responses(400, 404, 413, 415, 422)},
    summary="The images of the loaded index nearest to a text (dcclip serve --index)",
)
async def search(body: SearchRequest, request: Request) -> JSONResponse:
    """JSON ``{"text", "lang", "k", "templates"?}`` -> the k nearest images with scores, best first."""
    service = get_service(request)
    index = loaded_index(request)
    check_search(body, service.limits, service.classifier.languages)
    body = with_default_templates(body)
    k = search_k(body, service.limits)
    hits = await service.run(run_search, service.classifier.model, index, body, k)
    return JSONResponse({"lang": body.lang.strip(), "k": k, "hits": [hit_body(hit) for hit in hits]})


def with_default_templates(body: SearchRequest) -> SearchRequest:
    """templates ["default"] -> the language's built-in prompt templates (as `dcclip search --templates default`)."""
    if body.templates != [DEFAULT_TEMPLATES_NAME]:
        return body
    return body.model_copy(update={"templates": list(default_templates(body.lang.strip()))})


@router.get(
    THUMBNAIL_ROUTE,
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404)},
    summary="The thumbnail of one image of the index, by its integer id",
)
async def index_thumbnail(thumb_id: str, request: Request) -> FileResponse:
    """Only ids the index knows map to files, and only to files in the index's own thumbs folder."""
    return thumbnail_response(loaded_index(request), thumb_id)


@router.get("/v1/info", summary="The bundle's manifest (abridged), the precision in use, the limits and the index")
async def info(request: Request) -> dict[str, Any]:
    """What this server runs and what it accepts, so clients can size their requests."""
    service = get_service(request)
    return {
        "dcclip_version": __version__,
        "bundle": service.bundle.name,
        "precision": service.classifier.model.precision,  # 'auto' when the towers run at different ones
        "tower_precisions": service.classifier.model.tower_precisions,
        "languages": service.classifier.languages,
        "limits": service.limits.to_dict(),
        "label_cache": service.classifier.cache.info(),
        "index": index_info(request.app.state.index),
        "manifest": info_manifest(service.manifest),
    }


@router.get("/healthz", summary="Liveness: answers without touching the model")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the event loop runs; never waits on inference."""
    return {"status": "ok"}


def create_app(
    bundle: Path,
    limits: ServeLimits | None = None,
    precision: str | None = None,
    threads: int | None = None,
    ui: bool = True,
    index: Path | None = None,
    allow_unsealed: bool = False,
    batch_max: int = DEFAULT_BATCH_MAX,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    server_timing: bool = False,
) -> FastAPI:
    """Load ``bundle`` (verified) and build the API over it; ``threads`` sets onnxruntime's intra-op threads (None:
    the cores divided by ``limits.max_concurrent_inference``, at least 1).

    ``ui`` serves the web page at ``/``; ``index`` loads an image index for /v1/search, refused (SearchIndexError)
    when it was built from another bundle; ``allow_unsealed`` loads a format-1/2 manifest that has no seal.
    ``batch_max`` > 1 runs the image tower on up to that many concurrent requests' images at once, gathered for at
    most ``batch_wait_ms`` after the first and only while other requests are decoding (1: off); ``server_timing``
    adds a Server-Timing header (milliseconds per stage) to /v1/classify answers, for benchmarks/serve_load.py.
    """
    limits = limits or ServeLimits()
    # Any Image.open in this process (not only ours) now refuses bombs: PIL errors above twice this many pixels.
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    # FastAPI's /docs and /redoc load their scripts from a CDN: blank offline. The package serves its own /docs.
    app = FastAPI(title="dcclip", version=__version__, description=api_description(), docs_url=None, redoc_url=None)
    app.state.service = Service(Path(bundle), limits, precision, threads, allow_unsealed, batch_max, batch_wait_ms)
    app.state.server_timing = server_timing
    app.state.index = open_index(Path(index), app.state.service.manifest) if index is not None else None
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_request_bytes)
    app.add_middleware(ErrorGuardMiddleware)  # added last: outermost of ours
    app.include_router(router)
    app.include_router(docs_router)
    if ui:
        app.include_router(ui_router)
    return app


def app_from_env() -> FastAPI:
    """The app described by the DCCLIP_SERVE_* environment variables (uvicorn's factory in worker processes)."""
    worker_logging()
    settings = ServeSettings.from_env()
    return create_app(
        settings.bundle,
        settings.limits,
        settings.precision,
        settings.threads,
        ui=settings.ui,
        index=settings.index,
        allow_unsealed=settings.allow_unsealed,
        batch_max=settings.batch_max,
        batch_wait_ms=settings.batch_wait_ms,
        server_timing=settings.server_timing,
    )


def worker_logging() -> None:
    """In a spawned worker with no logging set up, log as ``dcclip serve`` does (dcclip at INFO, others WARNING), so
    a worker's own lines (connections closed for stalling) reach the server log as the single process's do."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger("dcclip").level == logging.NOTSET:
        logging.getLogger("dcclip").setLevel(logging.INFO)
