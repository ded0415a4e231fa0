"""Convert a published Multilingual-CLIP checkpoint into the ``mclip:`` directory dcclip loads.

The published form (``multilingual-clip``'s ``pt_multilingual_clip.MultilingualCLIP`` as saved on the Hugging Face
Hub) is a ``config.json`` with ``modelBase`` (the encoder it wraps, e.g. ``xlm-roberta-large``),
``transformerDimensions`` (H) and ``numDims`` (D), weights ``transformer.*`` (the encoder) and
``LinearTransformation.weight`` [D, H] / ``.bias`` [D], and its tokenizer files; captions are mean-pooled over the
attention mask, then projected. The published config does not say the encoder's architecture, so it comes from
``modelBase`` (a local directory or the Hugging Face cache; offline) or from an explicit ``base_config``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcclip.io import atomic_dir, write_json_atomic
from dcclip.models.teachers.hub import TeacherLoadError, brief, download_hint, offline_note, require
from dcclip.models.teachers.mclip import MCLIP_CONFIG, MCLIP_PROJECTION

log = logging.getLogger(__name__)

PUBLISHED_FIELDS = ("modelBase", "transformerDimensions", "numDims")
ENCODER_PREFIX = "transformer."
PROJECTION_PREFIX = "LinearTransformation."
UNUSED_KEYS = ("embeddings.position_ids",)  # a buffer older transformers saved; rebuilt by the model itself
UNUSED_MISSING = ("pooler.",)  # the pooler is not used by mean pooling; some exports leave it out


def hf_weight_files() -> tuple[str, ...]:
    """The weight file names a Hugging Face checkpoint uses (safetensors first), as transformers names them."""
    names = require("transformers.utils")
    return names.SAFE_WEIGHTS_NAME, names.WEIGHTS_NAME


class MClipConvertError(TeacherLoadError):
    """The source directory is not a published M-CLIP checkpoint dcclip can convert; the message names file and key."""


def convert_mclip(src: str | Path, out: str | Path, base_config: str | None = None) -> dict[str, Any]:
    """Write ``out`` (an ``mclip:`` directory) from the published M-CLIP checkpoint ``src``, atomically."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise MClipConvertError(f"{src}: not a directory (download the checkpoint first, see docs/training.md)")
    published = read_published_config(src)
    weights_path, state = read_weights(src)
    encoder_state, projection = split_state(state, weights_path, published)
    config = encoder_config(published, base_config, src)
    encoder = build_encoder(config, encoder_state, weights_path)
    tokenizer = load_tokenizer(src, base_config or str(published["modelBase"]))
    with atomic_dir(out) as staging:
        encoder.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_projection(staging / MCLIP_PROJECTION, projection)
        write_json_atomic(staging / MCLIP_CONFIG, {"pooling": "mean", "embed_dim": int(published["numDims"])})
    summary = {"out": str(out), "encoder": type(encoder).__name__, "weights": str(weights_path)}
    return {**summary, "hidden": int(published["transformerDimensions"]), "embed_dim": int(published["numDims"])}


def read_published_config(src: Path) -> dict[str, Any]:
    """``config.json`` of the published checkpoint, with its three M-CLIP fields checked."""
    path = src / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MClipConvertError(f"{path}: cannot read the M-CLIP config: {exc}") from exc
    missing = [name for name in PUBLISHED_FIELDS if name not in config]
    if missing:
        raise MClipConvertError(f"{path}: missing {', '.join(missing)}: not a published M-CLIP config")
    for name in ("transformerDimensions", "numDims"):
        if not isinstance(config[name], int) or config[name] <= 0:
            raise MClipConvertError(f"{path}: {name} must be a positive integer, got {config[name]!r}")
    return config


def read_weights(src: Path) -> tuple[Path, dict[str, Tensor]]:
    """The state dict from ``model.safetensors`` or ``pytorch_model.bin`` (plain tensors only), and its file."""
    weight_files = hf_weight_files()
    for name in weight_files:
        path = src / name
        if path.is_file():
            return path, _load_state(path)
    raise MClipConvertError(f"{src}: no weights ({' or '.join(weight_files)})")


def _load_state(path: Path) -> dict[str, Tensor]:
    """Load one weights file; a pickle is read with ``weights_only`` (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, unpicklable objects: say which file
        raise MClipConvertError(f"{path}: cannot read the weights: {brief(exc)}") from exc
    if not isinstance(state, dict):
        raise MClipConvertError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def split_state(
    state: dict[str, Tensor], path: Path, published: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(encoder state without its ``transformer.`` prefix, projection {weight, bias?}), shapes checked."""
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise MClipConvertError(f"{path}: no '{ENCODER_PREFIX}*' keys (the text encoder): not an M-CLIP checkpoint")
    weight_key, bias_key = f"{PROJECTION_PREFIX}weight", f"{PROJECTION_PREFIX}bias"
    if weight_key not in state:
        raise MClipConvertError(f"{path}: missing key '{weight_key}' (the projection to the CLIP space)")
    dims, hidden = published["numDims"], published["transformerDimensions"]
    weight = state[weight_key]
    if tuple(weight.shape) != (dims, hidden):
        got = tuple(weight.shape)
        raise MClipConvertError(f"{path}: '{weight_key}' is {got}, config.json says [numDims, transformerDimensions]"
                                f" = [{dims}, {hidden}]")  # fmt: skip
    projection = {"weight": weight.float().contiguous()}
    if bias_key in state:
        if tuple(state[bias_key].shape) != (dims,):
            raise MClipConvertError(f"{path}: '{bias_key}' is {tuple(state[bias_key].shape)}, expected [{dims}]")
        projection["bias"] = state[bias_key].float().contiguous()
    others = sorted(k for k in state if not k.startswith((ENCODER_PREFIX, PROJECTION_PREFIX)))
    if others:
        log.warning("%s: ignoring %d keys outside the encoder and projection: %s", path, len(others), others[:5])
    return encoder, projection


def encoder_config(published: dict[str, Any], base_config: str | None, src: Path) -> Any:
    """The encoder's transformers config from ``base_config`` or else ``modelBase`` (a directory, a config.json or a
    hub name in the local cache)."""
    transformers = require("transformers")
    base = base_config or str(published["modelBase"])
    label = f"--base-config {base!r}" if base_config else f"modelBase {base!r}"
    ref = str(Path(base).parent) if base.endswith(".json") else base
    try:
        config = transformers.AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        hint = download_hint(f"{base} config.json", "then rerun (or pass --base-config DIR)")
        raise MClipConvertError(
            f"{src / 'config.json'}: {label}: its architecture config is not available"
            f"{offline_note()}: {brief(exc)}. {hint}"
        ) from exc
    if getattr(config, "hidden_size", None) != published["transformerDimensions"]:
        raise MClipConvertError(f"{src / 'config.json'}: transformerDimensions {published['transformerDimensions']} "
                                f"!= hidden_size {getattr(config, 'hidden_size', None)} of {label}")  # fmt: skip
    return config


def build_encoder(config: Any, state: dict[str, Tensor], path: Path) -> Any:
    """The base model class of ``config`` (e.g. XLMRobertaModel) holding the checkpoint's encoder weights."""
    transformers = require("transformers")
    encoder = transformers.AutoModel.from_config(config)
    state = {k: v for k, v in state.items() if not k.endswith(UNUSED_KEYS)}
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise MClipConvertError(f"{path}: the '{ENCODER_PREFIX}*' weights do not fit {type(encoder).__name__}: "
                                f"{brief(exc)}") from exc  # fmt: skip
    missing = [k for k in result.missing_keys if not k.startswith(UNUSED_MISSING)]
    if missing or result.unexpected_keys:
        raise MClipConvertError(
            f"{path}: the '{ENCODER_PREFIX}*' weights do not match {type(encoder).__name__}: "
            f"missing {[ENCODER_PREFIX + k for k in missing[:5]]}, "
            f"unexpected {[ENCODER_PREFIX + k for k in result.unexpected_keys[:5]]}"
        )
    return encoder.eval()


def load_tokenizer(src: Path, base: str) -> Any:
    """The checkpoint's own tokenizer, else (published copies without one) the base model's from the cache."""
    transformers = require("transformers")
    errors = []
    for ref in (str(src), base):
        try:
            return transformers.AutoTokenizer.from_pretrained(ref)
        except (OSError, ValueError, KeyError) as exc:
            errors.append(f"{ref}: {brief(exc, 200)}")
    raise MClipConvertError(f"{src}: no loadable tokenizer ({'; '.join(errors)})")


def save_projection(path: Path, projection: dict[str, Tensor]) -> None:
    """``projection.safetensors`` with ``weight`` [D, H] and optional ``bias`` [D], as the mclip backend reads it."""
    from safetensors.torch import save_file

    save_file(projection, str(path))
