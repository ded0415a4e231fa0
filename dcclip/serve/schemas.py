"""Request and response models of the HTTP API, and the OpenAPI description of the multipart endpoints.

The multipart bodies are parsed by hand (strict UTF-8, limits with precise error codes), so their schema is declared
here for /docs instead of being inferred from Form()/File() parameters.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dcclip.serve.errors import ERROR_CODES

__all__ = [
    "ClassifyResponse",
    "EmbeddingsResponse",
    "ErrorResponse",
    "SearchRequest",
    "SearchResponse",
    "TextEmbeddingsRequest",
    "api_description",
    "classify_openapi",
    "error_responses",
    "image_embeddings_openapi",
]


class TextEmbeddingsRequest(BaseModel):
    """Body of POST /v1/embeddings/text."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="texts to embed, in any of the bundle's languages")


class Prediction(BaseModel):
    """One label and its softmax probability over the request's labels."""

    label: str
    probability: float


class ImageResult(BaseModel):
    """The top labels of one uploaded image, most likely first."""

    filename: str | None
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    """Answer of POST /v1/classify: one result per image, in upload order."""

    lang: str
    top_k: int
    results: list[ImageResult]


class EmbeddingsResponse(BaseModel):
    """L2-normalised embeddings, one row per input, in input order."""

    count: int
    dim: int
    embeddings: list[list[float]]


class SearchRequest(BaseModel):
    """Body of POST /v1/search."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="what to look for, in any of the bundle's languages")
    lang: str = Field(default="en", description="language of the text")
    k: int | None = Field(default=None, ge=1, description="how many images (default 10; at most max_search_k)")
    templates: list[str] | None = Field(default=None, description="prompt templates holding {c} (optional)")


class SearchHitBody(BaseModel):
    """One image of the index, its similarity to the text and where its thumbnail is served."""

    id: int
    key: str
    score: float
    thumbnail: str


class SearchResponse(BaseModel):
    """Answer of POST /v1/search: the nearest images first."""

    lang: str
    k: int
    hits: list[SearchHitBody]


class ErrorDetail(BaseModel):
    """A stable machine-readable code and a human-readable message."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, listing the codes each may carry."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = sorted(code for code, (code_status, _) in ERROR_CODES.items() if code_status == status)
        out[status] = {"model": ErrorResponse, "description": "error codes: " + ", ".join(codes)}
    return out


def _multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An ``openapi_extra`` block declaring a multipart/form-data request body."""
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_IMAGES = {
    "type": "array",
    "items": {"type": "string", "format": "binary"},
    "description": "image files (PNG, JPEG, WebP, ...); URLs are refused, never fetched",
}

classify_openapi = _multipart(
    {
        "images": _IMAGES,
        "labels": {
            "type": "array",
            "items": {"type": "string"},
            "description": "one comma-separated string, a JSON list, or one label per repeated field",
        },
        "lang": {"type": "string", "default": "en", "description": "language of the labels"},
        "top_k": {"type": "integer", "default": 5, "minimum": 1},
        "templates": {
            "type": "array",
            "items": {"type": "string"},
            "description": "prompt templates holding {c}, repeated fields or one JSON list (default: the language's)",
        },
    },
    ["images", "labels"],
)

image_embeddings_openapi = _multipart({"images": _IMAGES}, ["images"])


def api_description() -> str:
    """The API's OpenAPI description: what it does and the catalogue of error codes."""
    rows = "\n".join(f"| `{code}` | {status} | {meaning} |" for code, (status, meaning) in ERROR_CODES.items())
    return (
        "Zero-shot image classification, embeddings and text-to-image search over a dcclip ONNX bundle.\n\n"
        'Every error is JSON `{"error": {"code": ..., "message": ...}}`:\n\n'
        "| code | status | meaning |\n|---|---|---|\n" + rows
    )
