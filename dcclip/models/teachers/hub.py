"""What every teacher backend shares about the Hugging Face Hub and optional dependencies, torch-free: the load error,
optional imports with an install hint, the offline note, download hints and ``from_pretrained`` error wrapping."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from dcclip.runtime.optional import hf_offline
from dcclip.runtime.optional import require as require_optional

if TYPE_CHECKING:
    from dcclip.models.teacher_spec import TeacherSpec


class TeacherLoadError(RuntimeError):
    """A well-formed teacher spec that cannot be loaded: missing files, weights not available offline, bad shapes."""


# Import an optional dependency (open_clip, transformers); missing, an ImportError naming the train extra.
require = partial(require_optional, purpose="a teacher")


def offline_note() -> str:
    """' (HF_HUB_OFFLINE=1 is set)' when the hub is switched off, so the message says why nothing was fetched."""
    return " (HF_HUB_OFFLINE=1 is set)" if hf_offline() else ""


def brief(exc: BaseException, limit: int = 800) -> str:
    """An exception's message, trimmed of trailing dots and cut to ``limit`` characters (the cause stays chained)."""
    text = str(exc).strip().rstrip(".")
    return text if len(text) <= limit else f"{text[:limit]} ... ({len(text) - limit} more characters)"


def download_hint(repo: str, then: str, local_dir: bool = False) -> str:
    """How to fetch a hub repository once with network (into the HF cache, or into DIR with ``local_dir``)."""
    target = " --local-dir DIR" if local_dir else ""
    return (
        f"Download it once with network: `hf download {repo}{target}` (older huggingface_hub: "
        f"`huggingface-cli download {repo}{target}`), {then}"
    )


def hf_call(spec: TeacherSpec, load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a transformers ``from_pretrained``; turn missing files / hub failures into TeacherLoadError with a hint."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise hf_load_error(spec, exc) from exc


def hf_load_error(spec: TeacherSpec, exc: BaseException) -> TeacherLoadError:
    """A TeacherLoadError naming the spec; for hub ids it says how to download the model."""
    if spec.source != "hub":
        return TeacherLoadError(f"teacher {spec.raw!r}: cannot load from {spec.model}: {brief(exc)}")
    hint = download_hint(spec.model, f"then use {spec.backend}:DIR", local_dir=True)
    where = f"{spec.model!r} is not a local directory and could not be fetched from the Hugging Face Hub"
    return TeacherLoadError(f"teacher {spec.raw!r}: {where}{offline_note()}: {brief(exc)}. {hint}")
