"""Read, verify and run an exported bundle with onnxruntime: no torch, no transformers.

A bundle is a directory of ``image[.int8].onnx``, ``text[.int8].onnx``, ``tokenizer.json`` and ``manifest.json``. The
manifest records the sha256 and size of every file; ``verify_bundle`` refuses a bundle whose files do not match, and
``read_manifest`` refuses a format version this runtime does not know, each with a message naming the file or version.

Format versions: 1 is the first. 2 adds ``shipped_precision`` to each int8 file entry: export ships a tower's fp32
graph as its int8 file when int8 changes too many zero-shot decisions, and says so there (``quantization`` and
``parity.int8.towers`` give the figures). Everything else is as in 1, so version 1 bundles load unchanged (every file
computes in the precision it is listed under).

A bundle exported with ``--precision auto`` (still format version 3: the fields are optional and advisory, so an older
runtime loads it at the precision it is asked for) adds ``recommended_precision`` ({"image": ..., "text": ...}, the
precision per tower measured fastest on the export machine among those that agree with fp32) and ``precision_choice``
(the timings, machine and reasons). ``BundleModel`` with no precision loads each tower at its recommended precision;
without the field it loads fp32, as before. An explicit precision always wins.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from dcclip.runtime.errors import (
    MAX_TEXT_CHARS,
    BundleError,
    BundleIntegrityError,
    BundleVersionError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    check_text,
    check_unicode,
)
from dcclip.runtime.manifest import (
    BUNDLE_FORMAT,
    FORMAT_VERSION,
    LOGIT_SCALE_MAX,
    MANIFEST_DIGEST_KEY,
    MANIFEST_FILE,
    PRECISIONS,
    RECOMMENDED_KEY,
    ROLES,
    SUPPORTED_VERSIONS,
    TOKENIZER_FILE,
    check_bundle_header,
    check_bundle_manifest,
    manifest_digest,
    seal_manifest,
    sha256_file,
)
from dcclip.runtime.preprocess import ImageDecodeError, Preprocess, check_geometry, decode_image
from dcclip.runtime.tokenizer import TextTokenizer

__all__ = [
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MAX_TEXT_CHARS",
    "SUPPORTED_VERSIONS",
    "TOKENIZER_FILE",
    "BundleModel",
    "BundleVersionError",
    "ImageInput",
    "bundle_file",
    "load_bundle_model",
    "manifest_digest",
    "read_manifest",
    "recommended_precision",
    "seal_manifest",
    "sha256_file",
    "shipped_precision",
    "verify_bundle",
]

IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "text_embeds"
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs from the header
# What a sealed manifest vouches for and an unsealed one does not (the runtime reads these fields).
UNSEALED_FIELDS = ("logit_scale", "image_preprocess", "text_max_length", "pad_id", "languages", RECOMMENDED_KEY)
log = logging.getLogger(__name__)

ImageInput = Image.Image | bytes | bytearray | str | os.PathLike


def _manifest_path(path: str | os.PathLike) -> Path:
    """A bundle directory or its manifest.json -> the manifest path."""
    location = Path(path)
    return location if location.name == MANIFEST_FILE and location.is_file() else location / MANIFEST_FILE


def read_manifest(path: str | os.PathLike, allow_unsealed: bool = False) -> dict[str, Any]:
    """The manifest of a bundle (directory or manifest.json), after checking its format, version and seal.

    A manifest without ``manifest_sha256`` (formats 1 and 2) is refused unless ``allow_unsealed``; then it loads with
    a warning naming the fields nothing verifies."""
    manifest_path = _manifest_path(path)
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{manifest_path.parent}: not a dcclip bundle (no {MANIFEST_FILE})") from exc
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    check_bundle_header(manifest, manifest_path)
    version = manifest["format_version"]
    if version >= 3 or MANIFEST_DIGEST_KEY in manifest:
        _check_seal(manifest, manifest_path)  # a seal is checked whatever version the manifest claims
    else:
        _allow_unsealed(manifest_path, version, allow_unsealed)
    check_bundle_manifest(manifest, manifest_path)
    return manifest


def _allow_unsealed(where: Path, version: int, allowed: bool) -> None:
    """An unsealed manifest (format 1 or 2) loads only on request: nothing vouches for the fields it sets, and writing
    an older ``format_version`` was enough to skip the seal. The warning names what stays unverified."""
    unverified = ", ".join(UNSEALED_FIELDS)
    if not allowed:
        raise BundleIntegrityError(
            f"{where}: unsealed manifest (format_version {version}, no {MANIFEST_DIGEST_KEY}): nothing detects an "
            f"edit of {unverified}; re-export the bundle, or load it anyway with --allow-unsealed "
            "(allow_unsealed=True)",
            MANIFEST_FILE,
        )
    log.warning(
        "%s: loading an unsealed format-%d manifest as asked: its fields (%s) are not verified; the files it lists "
        "are still checked against their sha256",
        where,
        version,
        unverified,
    )


def _check_seal(manifest: dict[str, Any], where: Path) -> None:
    recorded, actual = manifest.get(MANIFEST_DIGEST_KEY), manifest_digest(manifest)
    if recorded != actual:
        raise BundleIntegrityError(
            f"{where}: the manifest's content does not match its {MANIFEST_DIGEST_KEY} (edited after export?); "
            "re-export the bundle rather than editing its manifest",
            MANIFEST_FILE,
        )


def verify_bundle(path: str | os.PathLike, allow_unsealed: bool = False) -> dict[str, Any]:
    """Check every file the manifest lists against its recorded size and sha256; returns the manifest."""
    manifest = read_manifest(path, allow_unsealed)
    root = _manifest_path(path).parent
    for name, entry in manifest["files"].items():
        _check_file(root, name, entry)
    return manifest


def _check_file(root: Path, name: str, entry: dict[str, Any]) -> None:
    """One listed file: a plain name inside the bundle, present, of the recorded size and sha256."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise BundleIntegrityError(f"{root}: manifest lists {name!r}, which is not a file name inside the bundle", name)
    file = root / name
    if not file.is_file():
        raise BundleIntegrityError(f"{file}: listed in the manifest but missing", name)
    size = file.stat().st_size
    if "bytes" in entry and size != entry["bytes"]:
        raise BundleIntegrityError(f"{file}: {size} bytes, the manifest records {entry['bytes']} (modified?)", name)
    actual = sha256_file(file)
    if actual != entry.get("sha256"):
        raise BundleIntegrityError(
            f"{file}: sha256 {actual} does not match the manifest's {entry.get('sha256')} (modified or corrupt)", name
        )


def bundle_file(manifest: dict[str, Any], role: str, precision: str) -> str:
    """Name of the file holding ``role`` ('image'/'text') at ``precision``; BundleError listing what there is."""
    for name, entry in manifest["files"].items():
        if entry.get("role") == role and entry.get("precision") == precision:
            return name
    raise BundleError(f"bundle has no {precision} {role} tower (precisions: {manifest.get('precisions')})")


def shipped_precision(manifest: dict[str, Any], role: str, precision: str) -> str:
    """The precision the ``role`` tower of ``precision`` really computes in: 'fp32' where int8 fell back to fp32.

    Version 1 manifests (and version 2 fp32 entries) have no ``shipped_precision``: the file is what it is listed as.
    """
    entry = manifest["files"][bundle_file(manifest, role, precision)]
    shipped = entry.get("shipped_precision", precision)
    if shipped not in PRECISIONS:
        raise BundleError(
            f"manifest gives the {precision} {role} tower shipped_precision {shipped!r}, not {PRECISIONS}"
        )
    return shipped


def recommended_precision(manifest: dict[str, Any]) -> dict[str, str] | None:
    """Per tower, the precision ``export --precision auto`` measured as the one to load; None when not recorded."""
    recommended = manifest.get(RECOMMENDED_KEY)
    return {role: recommended[role] for role in ROLES} if recommended else None


def file_precisions(manifest: dict[str, Any], precision: str | None, where: Path) -> dict[str, str]:
    """The precision of the file each tower loads: ``precision`` for both, else the manifest's recommendation, else
    fp32 (bundles without one load as before). BundleError when the bundle lacks that precision."""
    chosen = {role: precision for role in ROLES} if precision else recommended_precision(manifest)
    chosen = chosen or {role: "fp32" for role in ROLES}
    for value in dict.fromkeys(chosen.values()):
        if value not in manifest["precisions"]:
            raise BundleError(f"{where}: no {value!r} models in this bundle ({manifest['precisions']})")
    return chosen


class BundleModel:
    """Image and text sessions (each at its precision), the tokenizer and the preprocessing of a bundle; thread-safe.

    ``precision`` None follows the manifest's ``recommended_precision`` per tower (fp32 when it has none); 'fp32' or
    'int8' loads both towers at that precision.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str | None = None,
        *,
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        verify: bool = True,
        allow_unsealed: bool = False,
        max_text_chars: int = MAX_TEXT_CHARS,
    ) -> None:
        self.path = Path(path)
        load = verify_bundle if verify else read_manifest
        self.manifest = load(self.path, allow_unsealed)
        self.file_precisions = file_precisions(self.manifest, precision, self.path)
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
        files = set(self.file_precisions.values())
        self.precision = precision or (files.pop() if len(files) == 1 else "auto")  # 'auto': towers differ
        # what each tower really computes in: an int8 bundle may carry a tower's fp32 graph (format version 2)
        self.tower_precisions = {
            role: shipped_precision(self.manifest, role, p) for role, p in self.file_precisions.items()
        }
        if isinstance(max_text_chars, bool) or not isinstance(max_text_chars, int) or max_text_chars < 1:
            raise ValueError(f"max_text_chars must be a positive int, got {max_text_chars!r}")
        self.max_batch_size = max_batch_size
        self.max_image_pixels = max_image_pixels
        self.max_text_chars = max_text_chars
        self.session_options = make_session_options(intra_op_num_threads, inter_op_num_threads)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.image_session = self._session("image", (IMAGE_INPUT,), IMAGE_OUTPUT)
        self.text_session = self._session("text", TEXT_INPUTS, TEXT_OUTPUT)
        self.tokenizer = self._tokenizer()
        self.preprocess = Preprocess.from_config(self.manifest["image_preprocess"])
        self._check_image_input()

    def _check_image_input(self) -> None:
        """The image graph's fixed input size must be the manifest's: fail at start-up, not on every request."""
        shape = self.image_session.get_inputs()[0].shape
        size = self.preprocess.image_size
        if len(shape) != 4 or shape[1] not in (3, "3") or any(isinstance(d, int) and d != size for d in shape[2:]):
            raise BundleError(
                f"{self.path}: the image graph takes {shape}, but the manifest's image_preprocess.image_size is {size}"
            )

    def _session(self, role: str, inputs: tuple[str, ...], output: str) -> ort.InferenceSession:
        """An inference session for one tower, after checking its input and output names."""
        file = self.path / bundle_file(self.manifest, role, self.file_precisions[role])
        session = ort.InferenceSession(str(file), self.session_options, providers=self.providers)
        names_in = tuple(item.name for item in session.get_inputs())
        names_out = tuple(item.name for item in session.get_outputs())
        if names_in != inputs or names_out[:1] != (output,):
            raise BundleError(f"{file}: graph takes {names_in} -> {names_out}, expected {inputs} -> ({output},)")
        return session

    def _tokenizer(self) -> TextTokenizer:
        """The bundle's tokenizer (a file the manifest lists), whose pad id must be the one the manifest records."""
        if TOKENIZER_FILE not in self.manifest["files"]:
            raise BundleError(
                f"{self.path}: {TOKENIZER_FILE} is not listed in the manifest's files (nothing vouches for it)"
            )
        tokenizer = TextTokenizer.from_path(self.path / TOKENIZER_FILE)
        expected = self.manifest.get("pad_id")
        if expected is not None and tokenizer.pad_id != expected:
            raise BundleError(f"{self.path}: tokenizer pad id {tokenizer.pad_id} != manifest pad_id {expected}")
        return tokenizer

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        return int(self.manifest["embed_dim"])

    @property
    def logit_scale(self) -> float:
        """Multiplier of cosine similarities before a softmax (CLIP's temperature, inverted)."""
        return float(self.manifest.get("logit_scale", LOGIT_SCALE_MAX))

    @property
    def languages(self) -> list[str]:
        """Languages the student was trained for (empty: not recorded)."""
        return list(self.manifest.get("languages") or [])

    @property
    def text_max_length(self) -> int:
        """Tokens per text after truncation (the text tower's position table)."""
        return int(self.manifest["text_max_length"])

    def load_image(self, item: ImageInput) -> Image.Image:
        """A PIL image from a PIL image, encoded bytes or a file path; InvalidImageError otherwise."""
        if isinstance(item, Image.Image):
            try:
                check_geometry(item.width, item.height, self.max_image_pixels)
            except ImageDecodeError as exc:
                raise InvalidImageError(str(exc)) from exc
            return item
        if isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        elif isinstance(item, str | os.PathLike):
            try:
                data = Path(item).read_bytes()
            except OSError as exc:
                raise InvalidImageError(f"cannot read image file {item}: {exc}") from exc
        else:
            raise InvalidImageError(f"an image must be a PIL image, bytes or a path, got {type(item).__name__}")
        try:
            return decode_image(data, max_pixels=self.max_image_pixels)
        except ImageDecodeError as exc:
            raise InvalidImageError(str(exc)) from exc

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> L2-normalised float32 embeddings [N, D], run in batches of at most ``max_batch_size``."""
        _check_sequence(images, "images", InvalidImageError)
        out = []
        for start in range(0, len(images), self.max_batch_size):  # decode per batch: memory stays bounded
            chunk = images[start : start + self.max_batch_size]
            out.append(self.embed_pixels(np.stack([self.preprocess(self.load_image(item)) for item in chunk])))
        return _as_embeddings(out, self.embed_dim)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels [N, 3, S, S] float32 -> embeddings [N, D]."""
        size = self.preprocess.image_size
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            shape = getattr(pixels, "shape", None)
            raise InvalidImageError(f"pixels must be a float array [N, 3, {size}, {size}], got shape {shape}")
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        out = [
            self.image_session.run([IMAGE_OUTPUT], {IMAGE_INPUT: pixels[i : i + self.max_batch_size]})[0]
            for i in range(0, len(pixels), self.max_batch_size)
        ]
        return _as_embeddings(out, self.embed_dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts of at most ``max_text_chars`` characters -> L2-normalised float32 embeddings [N, D] (truncated to
        ``text_max_length`` tokens)."""
        _check_sequence(texts, "texts", InvalidTextError)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidTextError(f"texts[{index}] is {type(text).__name__}, expected str")
            check_text(text, f"texts[{index}]", self.max_text_chars)
        return self.embed_prompts(texts)

    def embed_prompts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts the caller built from checked parts (a label in a template: each part within the limit)."""
        for index, text in enumerate(texts):
            check_unicode(text, f"texts[{index}]")
        out = []
        for start in range(0, len(texts), self.max_batch_size):
            ids, mask = self.tokenizer.encode(list(texts[start : start + self.max_batch_size]), self.text_max_length)
            out.append(self.text_session.run([TEXT_OUTPUT], {TEXT_INPUTS[0]: ids, TEXT_INPUTS[1]: mask})[0])
        return _as_embeddings(out, self.embed_dim)

    def __repr__(self) -> str:
        """Short description for logs."""
        towers = ", ".join(f"{role} {value}" for role, value in self.tower_precisions.items())
        return f"BundleModel({str(self.path)!r}, precision={self.precision!r} ({towers}), providers={self.providers})"


def make_session_options(intra_op_num_threads: int | None, inter_op_num_threads: int | None) -> ort.SessionOptions:
    """onnxruntime session options with the requested thread counts (None: onnxruntime's default)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = int(intra_op_num_threads)
    if inter_op_num_threads is not None:
        options.inter_op_num_threads = int(inter_op_num_threads)
    return options


def _check_sequence(items: Any, what: str, error: type[InvalidInputError]) -> None:
    """A list or tuple (one bare image, path or string is a mistake worth naming)."""
    if not isinstance(items, list | tuple):
        raise error(f"{what} must be a list, got {type(items).__name__} (wrap a single item in a list)")


def _as_embeddings(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    """Concatenate batch outputs into one contiguous float32 [N, D] array."""
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def load_bundle_model(path: str | os.PathLike, precision: str | None = None, **session_options: Any) -> BundleModel:
    """Open a bundle for inference (None: each tower at the manifest's recommended precision, else fp32; options:
    intra_op_num_threads, inter_op_num_threads, providers, max_batch_size)."""
    return BundleModel(path, precision, **session_options)
