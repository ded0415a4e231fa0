"""Train a multilingual byte-fallback tokenizer with HF `tokenizers`; loading and encoding any tokenizer is the
runtime's (``dcclip.runtime.tokenizer.TextTokenizer``, re-exported here for training code)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from dcclip.io import write_text_atomic
from dcclip.runtime.tokenizer import TOKENIZER_FILE, TextTokenizer

__all__ = [
    "ALGORITHMS",
    "MIN_VOCAB_SIZE",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "TextTokenizer",
    "train_tokenizer",
]

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
# Han ideographs (Chinese hanzi, Japanese kanji) are pieces on their own, as in multilingual BERT: without spaces
# to stop them, merges glue whole caption phrases into one piece (a caption's "一个手写的数字零" became a single
# token holding the class word, which a zero-shot prompt "数字零" never produces).
HAN = Regex(r"\p{Han}")


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: Path, algorithm: str = "bpe", split_han: bool = True
) -> Path:
    """Train a byte-fallback multilingual tokenizer on `texts` and atomically write `out_dir/tokenizer.json`.

    BPE is the default: on short, repetitive captions the `tokenizers` Unigram trainer stops far below the asked
    vocabulary and spells frequent words letter by letter (English toy-world captions, 740 pieces asked: 121 kept,
    "red" -> r e d), where BPE learns the words. ``split_han`` makes every Han ideograph its own piece.
    """
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
    tokenizer.pre_tokenizer = _pre_tokenizer(split_han)
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tokenizer = _with_byte_fallback(tokenizer)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.post_processor = _bos_eos_processor(tokenizer)
    return write_text_atomic(Path(out_dir) / TOKENIZER_FILE, tokenizer.to_str(pretty=True), fsync=True)


def _pre_tokenizer(split_han: bool) -> pre_tokenizers.PreTokenizer:
    """Word boundaries at spaces (kept as `▁`), and around each Han ideograph when ``split_han``."""
    words = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never", split=True)
    if not split_han:
        return words
    return pre_tokenizers.Sequence([words, pre_tokenizers.Split(HAN, behavior="isolated")])


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
