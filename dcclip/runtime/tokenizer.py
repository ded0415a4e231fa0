"""The tokenizer a bundle ships and the runtime uses: any tokenizer.json or Hugging Face tokenizer behind one
thread-safe batch encoder that pads and truncates in numpy.

Torch-free: only stdlib, numpy and `tokenizers` at the top; `transformers` is imported lazily, and only to load a
Hugging Face tokenizer directory that has no tokenizer.json. Training tokenizers lives in ``dcclip.models.tokenizers``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from dcclip.io import write_text_atomic
from dcclip.runtime.constants import TOKENIZER_FILE
from dcclip.runtime.errors import check_unicode
from dcclip.runtime.optional import TRAIN_HINT, require

__all__ = ["TOKENIZER_FILE", "TextTokenizer"]

# Pad-token names used by common Hugging Face tokenizers, most specific first.
PAD_TOKEN_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|endoftext|>")
# Where a Hugging Face tokenizer directory names its pad token.
HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# A Hugging Face hub id: "name" or "org/name" made of letters, digits, '-', '_' and '.'.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
INSTALL_HINT = f"{TRAIN_HINT} (or: pip install transformers)"


class TextTokenizer:
    """A thread-safe batch encoder around a `tokenizers.Tokenizer` that pads and truncates in numpy."""

    def __init__(self, tokenizer: Tokenizer, pad_token: str | None = None) -> None:
        """Wrap `tokenizer` (a private copy if it has padding/truncation set); `pad_token` names its pad token."""
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self._pad_id = _find_pad_id(tokenizer, pad_token)
        if tokenizer.padding is not None or tokenizer.truncation is not None:
            # Done once here, never per call: changing shared padding state while other threads encode is a race.
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self._tokenizer = tokenizer

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """Load from a tokenizer.json, a directory holding one, a Hugging Face tokenizer directory, or a hub id."""
        location = Path(path)
        if location.is_file():
            return cls(_load_json(location), _configured_pad_token(location.parent))
        if location.is_dir():
            if (location / TOKENIZER_FILE).is_file():
                return cls(_load_json(location / TOKENIZER_FILE), _configured_pad_token(location))
            return cls(*_load_with_transformers(str(location), is_hub_id=False))
        if isinstance(path, str) and HUB_ID_RE.match(path) and not path.endswith(".json"):
            return cls(*_load_with_transformers(path, is_hub_id=True))
        raise FileNotFoundError(f"no tokenizer at {str(path)!r}: not a file, a directory or a Hugging Face hub id")

    @classmethod
    def from_json_str(cls, text: str, pad_token: str | None = None) -> TextTokenizer:
        """Build from the JSON text of a tokenizer.json (as kept inside a bundle or checkpoint config)."""
        return cls(Tokenizer.from_str(text), pad_token)

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (treat as read-only: it is shared between threads)."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the text embedding table must be at least this big)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Id used to pad batches."""
        return self._pad_id

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode a batch to int64 `input_ids` and `attention_mask` of shape [N, min(max_length, longest)]."""
        _check_texts(texts)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        # No padding/truncation is enabled on the shared tokenizer: per-call state would race between threads.
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        rows = [_truncate(enc.ids, enc.special_tokens_mask, max_length) for enc in encodings]
        return self._pad(rows)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decode one sequence of ids back to text, dropping special tokens (padding included)."""
        array = np.asarray(ids)
        if array.ndim != 1:
            raise ValueError(f"decode expects one 1-D sequence of ids, got shape {array.shape}")
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {array.dtype}")
        if array.size and array.min() < 0:
            raise ValueError(f"ids must be non-negative, got {int(array.min())}")
        return self._tokenizer.decode(array.tolist(), skip_special_tokens=True)

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Atomically write `out_dir/tokenizer.json` and return its path."""
        return write_text_atomic(Path(out_dir) / TOKENIZER_FILE, self.to_json_str(), fsync=True)

    def to_json_str(self) -> str:
        """The tokenizer as tokenizer.json text (loadable by `tokenizers.Tokenizer.from_str`)."""
        return self._tokenizer.to_str(pretty=True)

    def _pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad rows to the longest one with the pad id; the mask marks real tokens with 1."""
        length = max((len(row) for row in rows), default=0)
        input_ids = np.full((len(rows), length), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    def __repr__(self) -> str:
        """Short description for logs."""
        model = type(self._tokenizer.model).__name__
        return f"TextTokenizer(model={model}, vocab_size={self.vocab_size}, pad_id={self.pad_id})"


def _check_texts(texts: Sequence[str]) -> None:
    """Raise TypeError for a bare string or any non-str element, naming its index."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single str (wrap it in a list)")
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        check_unicode(text, f"texts[{index}]", ValueError)


def _truncate(ids: list[int], special_mask: list[int], max_length: int) -> list[int]:
    """Cut to max_length, keeping a trailing special token (e.g. `</s>`) so truncated rows still end with it."""
    if len(ids) <= max_length:
        return ids
    if special_mask[-1] and max_length >= 2:
        return [*ids[: max_length - 1], ids[-1]]
    return ids[:max_length]


def _find_pad_id(tokenizer: Tokenizer, pad_token: str | None) -> int:
    """Pad id from the named pad token, the tokenizer's padding config or a common pad-token name; else 0."""
    if pad_token is not None and tokenizer.token_to_id(pad_token) is not None:
        return tokenizer.token_to_id(pad_token)
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for name in PAD_TOKEN_NAMES:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return 0


def _configured_pad_token(directory: Path) -> str | None:
    """The pad token named by a Hugging Face tokenizer_config.json / special_tokens_map.json beside the tokenizer."""
    for name in HF_CONFIG_FILES:
        try:
            config = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        token = config.get("pad_token") if isinstance(config, dict) else None
        if isinstance(token, dict):  # serialised AddedToken
            token = token.get("content")
        if isinstance(token, str):
            return token
    return None


def _load_json(path: Path) -> Tokenizer:
    """Load a tokenizer.json file, turning parse errors into a ValueError that names the file."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"{path} is not a valid tokenizer.json: {error}") from error


def _load_with_transformers(name: str, is_hub_id: bool) -> tuple[Tokenizer, str | None]:
    """Load a Hugging Face tokenizer (directory or cached hub id) with transformers, from local files only."""
    where = f"hub id {name!r}" if is_hub_id else f"directory {name}"
    auto_tokenizer = require("transformers", f"loading the tokenizer from {where}", INSTALL_HINT).AutoTokenizer
    try:
        # local_files_only: never touch the network (a missing file otherwise costs ~46 s of retries).
        hf_tokenizer = auto_tokenizer.from_pretrained(name, local_files_only=True)
    except OSError as error:
        if is_hub_id:
            raise FileNotFoundError(
                f"{name!r} is neither a local path nor a Hugging Face hub id in the local cache; download it "
                f"first, e.g. `huggingface-cli download {name}` (or `hf download {name}`), then retry"
            ) from error
        raise ValueError(f"no {TOKENIZER_FILE} in {where} and transformers could not load it: {error}") from error
    except ValueError as error:
        raise ValueError(f"no {TOKENIZER_FILE} in {where} and transformers could not load it: {error}") from error
    return _backend_of(hf_tokenizer, where), getattr(hf_tokenizer, "pad_token", None)


def _backend_of(hf_tokenizer: Any, where: str) -> Tokenizer:
    """Return the fast (Rust) tokenizer behind a transformers tokenizer, or explain why there is none."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(
            f"the tokenizer from {where} ({type(hf_tokenizer).__name__}) has no fast backend; "
            "convert it with transformers and save it with save_pretrained to get a tokenizer.json"
        )
    return backend
