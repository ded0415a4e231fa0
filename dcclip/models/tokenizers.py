"""Multilingual text tokenizers: train one with HF `tokenizers`, or load any tokenizer.json / Hugging Face tokenizer.

This module is torch-free because the ONNX runtime uses it: only stdlib, numpy and `tokenizers` are imported at the
top; `transformers` is imported lazily, and only to load Hugging Face tokenizers that ship without a tokenizer.json.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

__all__ = [
    "ALGORITHMS",
    "MIN_VOCAB_SIZE",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "TextTokenizer",
    "train_tokenizer",
]

TOKENIZER_FILE = "tokenizer.json"
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
ALGORITHMS = ("unigram", "bpe")
N_BYTES = 256
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(N_BYTES))
BYTE_TOKEN_RE = re.compile(r"<0x[0-9A-F]{2}>")
# Always in the alphabet, so a literal "<0x41>" in text has a path through ordinary pieces (see _unigram_vocab).
GUARD_CHARS = "<>x0123456789ABCDEF"
# Special tokens, byte-fallback tokens, guard characters and room for a few dozen learned pieces.
MIN_VOCAB_SIZE = 300
SCORE_DECIMALS = 8
PRUNED_CHAR_STEP = 1e-4
# Like SentencePiece: the rarest characters (beyond this share of all characters) are left to byte fallback.
CHARACTER_COVERAGE = 0.9995
METASPACE = "▁"
# Pad-token names used by common Hugging Face tokenizers, most specific first.
PAD_TOKEN_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|endoftext|>")
# Where a Hugging Face tokenizer directory names its pad token.
HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# A Hugging Face hub id: "name" or "org/name" made of letters, digits, '-', '_' and '.'.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
INSTALL_HINT = "pip install 'dcclip[train]' (or: pip install transformers)"


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path, algorithm: str = "unigram") -> Path:
    """Train a byte-fallback multilingual tokenizer on `texts` and atomically write `out_dir/tokenizer.json`."""
    _check_training_args(vocab_size, algorithm)
    corpus = _normalized_corpus(texts)
    # vocab_size counts every id: specials, the 256 byte tokens and learned pieces (fewer on a small corpus).
    learned_size = vocab_size - N_BYTES
    max_chars = (learned_size - len(SPECIAL_TOKENS) - len(GUARD_CHARS)) // 2
    alphabet = _select_alphabet(corpus, max_chars)
    corpus = [_prepare_training_text(text, alphabet) for text in corpus]
    tokenizer, trainer = _untrained(algorithm, learned_size)
    # Training runs the corpus through this normaliser too: NFKC again (idempotent), then the leading `▁`.
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Prepend(METASPACE)])
    # Every space becomes a word boundary, so no piece spans two words and all spaces survive decoding.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never", split=True)
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tokenizer = _with_byte_fallback(tokenizer)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.post_processor = _bos_eos_processor(tokenizer)
    return _atomic_write(Path(out_dir) / TOKENIZER_FILE, tokenizer.to_str(pretty=True))


def _check_training_args(vocab_size: int, algorithm: str) -> None:
    """Reject bad training arguments early, before any text is read."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it must be at least {MIN_VOCAB_SIZE} "
            f"({len(SPECIAL_TOKENS)} special tokens, {N_BYTES} byte-fallback tokens and room for learned pieces)"
        )


def _normalized_corpus(texts: Iterable[str]) -> list[str]:
    """NFKC the texts (spaces as `▁`), checking types; kept in memory because training makes two passes."""
    normalizer = normalizers.NFKC()
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single str")
    corpus = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        if text.strip():
            corpus.append(normalizer.normalize_str(text).replace(" ", METASPACE))
    if not corpus:
        raise ValueError("no texts to train the tokenizer on (the iterable was empty or held only blank strings)")
    return corpus


def _select_alphabet(corpus: Sequence[str], max_chars: int) -> frozenset[str]:
    """Keep the most frequent characters (ties broken by code point, so training is deterministic)."""
    counts = Counter(char for text in corpus for char in text)
    kept = {METASPACE, *GUARD_CHARS}
    ranked = sorted((item for item in counts.items() if item[0] not in kept), key=lambda item: (-item[1], item[0]))
    total, covered = sum(counts.values()), sum(counts[char] for char in kept)
    for char, count in ranked[:max_chars]:
        if covered >= CHARACTER_COVERAGE * total:
            break
        kept.add(char)
        covered += count
    return frozenset(kept)


def _prepare_training_text(text: str, alphabet: frozenset[str]) -> str:
    """Cut words at characters left to byte fallback, and break literal `<0xNN>` so no piece can look like a byte."""
    text = "".join(char if char in alphabet else METASPACE for char in text)
    return BYTE_TOKEN_RE.sub(lambda match: f"<{METASPACE}{match.group(0)[1:]}", text)


def _untrained(algorithm: str, learned_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    """Return an empty tokenizer and its trainer for the chosen algorithm."""
    common = {"vocab_size": learned_size, "special_tokens": list(SPECIAL_TOKENS), "show_progress": False}
    if algorithm == "unigram":
        trainer = trainers.UnigramTrainer(**common, unk_token=UNK, initial_alphabet=list(GUARD_CHARS))
        return Tokenizer(models.Unigram()), trainer
    trainer = trainers.BpeTrainer(**common, initial_alphabet=list(GUARD_CHARS))
    return Tokenizer(models.BPE(unk_token=UNK)), trainer


def _with_byte_fallback(tokenizer: Tokenizer) -> Tokenizer:
    """Insert the 256 `<0xNN>` byte tokens right after the special tokens and switch byte fallback on."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = _unigram_vocab(model["vocab"])
        model["unk_id"] = SPECIAL_TOKENS.index(UNK)
    else:
        model["vocab"] = _bpe_vocab(model["vocab"])
    model["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


def _unigram_vocab(vocab: list[list[Any]]) -> list[list[Any]]:
    """Specials, then byte tokens, then learned pieces in a canonical order with canonical scores."""
    n_special = len(SPECIAL_TOKENS)
    _check_specials_first([piece for piece, _ in vocab[:n_special]])
    learned = _canonical_scores(vocab[n_special:])
    # Byte pieces score lowest so that a literal "<0x41>" in text is read as characters, never as one byte token
    # (the guard characters make sure such a character path always exists).
    floor = min(score for _, score in learned) - 1e4
    return [*vocab[:n_special], *([token, floor] for token in BYTE_TOKENS), *learned]


def _canonical_scores(pieces: list[list[Any]]) -> list[list[Any]]:
    """Make Unigram training deterministic: drop float noise, re-deal the trainer's tie scores, sort canonically."""
    # The trainer sums over a hash map (noise in the last bits) and gives characters it had pruned the scores
    # min + k * 1e-4 in hash order; rounding and re-dealing those scores by code point removes both effects.
    scores = {piece: round(score, SCORE_DECIMALS) for piece, score in pieces}
    floor = min(scores.values())
    chars = [piece for piece in scores if len(piece) == 1]
    steps = {char: (scores[char] - floor) / PRUNED_CHAR_STEP for char in chars}
    dealt = sorted(char for char, k in steps.items() if round(k) < len(chars) and abs(k - round(k)) < 1e-3)
    for k, piece in enumerate(dealt):
        scores[piece] = round(floor + k * PRUNED_CHAR_STEP, SCORE_DECIMALS)
    return [[piece, score] for piece, score in sorted(scores.items(), key=lambda item: (-item[1], item[0]))]


def _bpe_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """Specials keep ids 0..3, byte tokens take the next 256 ids and learned tokens shift up by 256."""
    n_special = len(SPECIAL_TOKENS)
    _check_specials_first(sorted(vocab, key=vocab.__getitem__)[:n_special])
    shifted = {token: (i if i < n_special else i + N_BYTES) for token, i in vocab.items()}
    return {**shifted, **{token: n_special + i for i, token in enumerate(BYTE_TOKENS)}}


def _check_specials_first(first_tokens: list[str]) -> None:
    """Fail loudly if the trainer did not give the special tokens ids 0..3 (the byte block is placed after them)."""
    if first_tokens != list(SPECIAL_TOKENS):
        raise RuntimeError(f"expected the trainer to put {SPECIAL_TOKENS} first, got {first_tokens}")


def _bos_eos_processor(tokenizer: Tokenizer) -> processors.TemplateProcessing:
    """Wrap every sequence as `<s> ... </s>` (pairs as `<s> A </s> <s> B </s>`)."""
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    return processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} {BOS}:1 $B:1 {EOS}:1",
        special_tokens=[(BOS, bos), (EOS, eos)],
    )


def _atomic_write(path: Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path` and rename it, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------------------------------
# Loading and encoding
# --------------------------------------------------------------------------------------------------------------------


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
        return _atomic_write(Path(out_dir) / TOKENIZER_FILE, self.to_json_str())

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
    try:
        from transformers import AutoTokenizer
    except ImportError as error:
        raise ImportError(f"loading the tokenizer from {where} needs transformers: {INSTALL_HINT}") from error
    try:
        # local_files_only: never touch the network (a missing file otherwise costs ~46 s of retries).
        hf_tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
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
