"""Every failure of the HTTP service as one JSON shape, ``{"error": {"code": ..., "message": ...}}``.

Clients branch on the stable ``code``; the status says whose fault it is (400 bad input, 413 over a limit, 415 wrong
media type, 422 a request that does not match the schema, 500 a bug, logged here and never shown to the client).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dcclip.runtime.errors import (
    EmptyLabelsError,
    InvalidImageError,
    InvalidInputError,
    InvalidLabelError,
    InvalidTemplateError,
    InvalidTextError,
    TooManyLabelsError,
    UnknownLanguageError,
)

__all__ = ["ERROR_CODES", "ApiError", "error_body", "error_response", "install_error_handlers"]

# code -> (status, meaning): the documented catalogue, also served in the OpenAPI description.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_image": (400, "an image that is empty, corrupt, truncated or not uploaded as a file"),
    "url_not_allowed": (400, "a URL where image bytes were expected: the server never fetches URLs"),
    "missing_images": (400, "no images in the request"),
    "empty_labels": (400, "no labels (absent, empty or only separators)"),
    "invalid_label": (400, "a blank or duplicate label"),
    "invalid_template": (400, "a template without {c}, or templates that are not a list of strings"),
    "unknown_language": (400, "a language the bundle was not trained for"),
    "invalid_text": (400, "texts that are empty or not strings"),
    "invalid_input": (400, "any other input the model cannot answer"),
    "invalid_encoding": (400, "a form field or body that is not valid UTF-8"),
    "invalid_json": (400, "a body that is not valid JSON"),
    "invalid_multipart": (400, "a malformed multipart/form-data body"),
    "invalid_content_length": (400, "a Content-Length header that is not a non-negative integer"),
    "bad_request": (400, "a request the HTTP layer refused"),
    "not_found": (404, "no such endpoint"),
    "method_not_allowed": (405, "the endpoint does not take this HTTP method"),
    "request_too_large": (413, "the body exceeds max_request_bytes (declared or streamed)"),
    "image_too_large": (413, "an image whose header declares more than max_image_pixels pixels (never decoded)"),
    "too_many_images": (413, "more than max_images images"),
    "request_pixels_too_large": (413, "images that would decode to more than max_request_pixels pixels in total"),
    "too_many_labels": (413, "more than max_labels labels"),
    "too_many_templates": (413, "more than max_templates templates"),
    "too_many_texts": (413, "more than max_texts texts"),
    "too_many_fields": (413, "more form fields than labels and templates can need"),
    "text_too_long": (413, "a text, label or template longer than max_text_chars characters"),
    "too_many_prompt_chars": (413, "labels x templates making more than max_prompt_chars characters of prompts"),
    "field_too_large": (413, "a form field larger than max_field_bytes"),
    "unsupported_media_type": (415, "a Content-Type the endpoint does not read, or an upload that is not an image"),
    "validation_error": (422, "a request that does not match the endpoint's schema"),
    "internal_error": (500, "a bug on the server side; details are in the server log"),
}

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
_HTTP_CODES |= {415: "unsupported_media_type", 422: "validation_error"}

_RUNTIME_CODES: tuple[tuple[type[InvalidInputError], str], ...] = (
    (EmptyLabelsError, "empty_labels"),
    (TooManyLabelsError, "too_many_labels"),
    (InvalidLabelError, "invalid_label"),
    (InvalidTemplateError, "invalid_template"),
    (UnknownLanguageError, "unknown_language"),
    (InvalidTextError, "invalid_text"),
    (InvalidImageError, "invalid_image"),
)


class ApiError(Exception):
    """A request the service refuses, carrying its error code; the status comes from ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"undocumented error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = ERROR_CODES[code][0]


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON every error answer carries."""
    return {"error": {"code": code, "message": message}}


def error_response(code: str, message: str, status: int | None = None) -> JSONResponse:
    """A JSONResponse in the error shape, with the code's documented status unless one is given."""
    return JSONResponse(error_body(code, message), status_code=status or ERROR_CODES[code][0])


def runtime_error_code(exc: InvalidInputError) -> str:
    """The error code of a runtime input exception (most specific class first)."""
    for cls, code in _RUNTIME_CODES:
        if isinstance(exc, cls):
            return code
    return "invalid_input"


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one readable line: ``body.texts.0: Input should be a valid string; ...``."""
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(item) for item in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "request does not match the schema"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    """ApiError -> its documented status and code."""
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.status)


async def _runtime_error(request: Request, exc: Exception) -> JSONResponse:
    """A runtime InvalidInputError escaping an endpoint -> 4xx with the matching code."""
    assert isinstance(exc, InvalidInputError)
    code = runtime_error_code(exc)
    return error_response(code, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 in our shape; a body that is not JSON at all is a 400 invalid_json."""
    assert isinstance(exc, RequestValidationError)
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return error_response("invalid_json", f"request body is not valid JSON ({validation_message(exc)})")
    return error_response("validation_error", validation_message(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette/FastAPI HTTPExceptions (404, 405, body parse failures) in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return error_response("invalid_encoding", f"request body is not valid UTF-8: {cause.reason}", 400)
    if isinstance(cause, json.JSONDecodeError | ValueError) and exc.status_code == 400:
        return error_response("invalid_json", f"request body is not valid JSON: {cause}", 400)
    code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return JSONResponse(error_body(code, detail), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every expected exception class to its JSON answer (unexpected ones: see middleware.ErrorGuard)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InvalidInputError, _runtime_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
