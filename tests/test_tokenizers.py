"""Tests for dcclip.models.tokenizers: training, byte-fallback round trips, batching, loading, torch-freedom."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from dcclip.models.tokenizers import MIN_VOCAB_SIZE, TOKENIZER_FILE, TextTokenizer, train_tokenizer

CORPUS = [
    # en
    "A black cat sleeps on a red sofa.",
    "Two dogs are running across a green field.",
    "A man rides a bicycle down the street.",
    "The children are playing football in the park.",
    # zh
    "一只黑猫睡在红色的沙发上。",
    "两只狗在绿色的田野上奔跑。",
    "一个男人在街上骑自行车。",
    "孩子们在公园里踢足球。",
    # ja
    "黒い猫が赤いソファの上で寝ています。",
    "二匹の犬が緑の野原を走っています。",
    "男性が通りで自転車に乗っています。",
    "子供たちが公園でサッカーをしています。",
    # ko
    "검은 고양이가 빨간 소파에서 자고 있습니다.",
    "두 마리의 개가 푸른 들판을 달리고 있습니다.",
    "한 남자가 거리에서 자전거를 타고 있습니다.",
    "아이들이 공원에서 축구를 하고 있습니다.",
    # fr
    "Un chat noir dort sur un canapé rouge.",
    "Deux chiens courent à travers un champ vert.",
    "Un homme fait du vélo dans la rue.",
    "Les enfants jouent au football dans le parc.",
    # de
    "Eine schwarze Katze schläft auf einem roten Sofa.",
    "Zwei Hunde rennen über eine grüne Wiese.",
    "Ein Mann fährt mit dem Fahrrad die Straße entlang.",
    "Die Kinder spielen im Park Fußball.",
    # es
    "Un gato negro duerme en un sofá rojo.",
    "Dos perros corren por un campo verde.",
    "Un hombre anda en bicicleta por la calle.",
    "Los niños juegan al fútbol en el parque.",
    # ru
    "Чёрный кот спит на красном диване.",
    "Две собаки бегут по зелёному полю.",
    "Мужчина едет на велосипеде по улице.",
    "Дети играют в футбол в парке.",
    # ar
    "قطة سوداء تنام على أريكة حمراء.",
    "كلبان يركضان عبر حقل أخضر.",
    "رجل يركب دراجة في الشارع.",
    "الأطفال يلعبون كرة القدم في الحديقة.",
    # hi
    "एक काली बिल्ली लाल सोफे पर सो रही है।",
    "दो कुत्ते हरे मैदान में दौड़ रहे हैं।",
    "एक आदमी सड़क पर साइकिल चला रहा है।",
    "बच्चे पार्क में फुटबॉल खेल रहे हैं।",
]
# Characters that never occur in CORPUS: they can only survive through byte fallback.
UNSEEN = {
    "cjk": "鬱龘麤 齉",
    "japanese": "ゐゑヰヱ",
    "korean": "힣똠",
    "arabic": "ژ گچ ڤ",
    "devanagari": "ऋ ॐ ङ ञ",
    "emoji": "🦄🧪 👩\u200d💻 🇯🇵",
}
EXTRA_TEXTS = [
    "  leading and trailing  spaces ",
    "full-width ＡＢＣ and ligature ﬁ (NFKC)",
    "a literal <0x41> is text, not a byte",
    "tabs\tand\nnewlines",
    "",
]
VOCAB_SIZE = 400


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer.json trained on CORPUS with each algorithm."""
    out_dir = tmp_path_factory.mktemp(f"tok_{request.param}")
    return train_tokenizer(CORPUS * 3, VOCAB_SIZE, out_dir, algorithm=request.param)


@pytest.fixture(scope="module")
def tok(trained: Path) -> TextTokenizer:
    """The trained tokenizer, loaded through TextTokenizer."""
    return TextTokenizer.from_path(trained)


def roundtrip(tokenizer: TextTokenizer, text: str) -> str:
    """Encode one text without truncation and decode it again."""
    ids, mask = tokenizer.encode([text], max_length=10_000)
    return tokenizer.decode(ids[0][mask[0] == 1])


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------


def test_training_writes_only_tokenizer_json(trained: Path) -> None:
    """Training leaves exactly tokenizer.json behind (the temporary file was renamed) with the specials first."""
    assert trained.name == TOKENIZER_FILE
    assert sorted(p.name for p in trained.parent.iterdir()) == [TOKENIZER_FILE]
    raw = Tokenizer.from_file(str(trained))
    assert [raw.token_to_id(t) for t in ("<pad>", "<unk>", "<s>", "</s>")] == [0, 1, 2, 3]
    assert raw.token_to_id("<0x00>") == 4 and raw.token_to_id("<0xFF>") == 259
    assert 300 <= raw.get_vocab_size() <= VOCAB_SIZE


@pytest.mark.parametrize("algorithm", ["unigram", "bpe"])
def test_training_is_deterministic(algorithm: str, tmp_path: Path) -> None:
    """Two trainings on the same input give byte-identical tokenizer.json files."""
    first = train_tokenizer(CORPUS, VOCAB_SIZE, tmp_path / "a", algorithm).read_bytes()
    second = train_tokenizer(iter(CORPUS), VOCAB_SIZE, tmp_path / "b", algorithm).read_bytes()
    assert first == second
    other = train_tokenizer(CORPUS[:-4], VOCAB_SIZE, tmp_path / "c", algorithm).read_bytes()
    assert other != first  # the comparison above can tell tokenizers apart


def test_training_validates_arguments(tmp_path: Path) -> None:
    """Bad arguments fail early with clear errors, and nothing is written."""
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(CORPUS, MIN_VOCAB_SIZE - 1, tmp_path)
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer([], VOCAB_SIZE, tmp_path)
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer(["  ", ""], VOCAB_SIZE, tmp_path)
    with pytest.raises(ValueError, match="algorithm"):
        train_tokenizer(CORPUS, VOCAB_SIZE, tmp_path, algorithm="wordpiece")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_tokenizer(["ok", 3], VOCAB_SIZE, tmp_path)
    with pytest.raises(TypeError, match="single str"):
        train_tokenizer("a whole caption", VOCAB_SIZE, tmp_path)
    assert not (tmp_path / TOKENIZER_FILE).exists()


# Short templated captions like the toy world's: few distinct words, each repeated many times.
COLOUR_CAPTIONS = [
    f"{article} {colour} {shape} on the {side}"
    for article in ("a", "one")
    for colour in ("red", "blue", "green", "yellow")
    for shape in ("circle", "square", "star")
    for side in ("left", "right")
]
HAN_CAPTIONS = [f"一个手写的数字{digit}" for digit in "零一二三四五六七八九"] * 5


def pieces(tokenizer: TextTokenizer, text: str) -> list[str]:
    """The pieces of one text, without the <s> and </s> around it."""
    return tokenizer.tokenizer.encode(text).tokens[1:-1]


def test_default_bpe_learns_the_words_of_short_repeated_captions(tmp_path: Path) -> None:
    """Frequent words become single pieces (the Unigram trainer spells them letter by letter on such a corpus)."""
    tokenizer = TextTokenizer.from_path(train_tokenizer(COLOUR_CAPTIONS * 20, VOCAB_SIZE, tmp_path))
    assert pieces(tokenizer, "a red circle on the left") == ["▁a", "▁red", "▁circle", "▁on", "▁the", "▁left"]


def test_han_ideographs_are_pieces_of_their_own(tmp_path: Path) -> None:
    """A zero-shot prompt (数字零) and a caption that ends with it share the class word's piece; round trips hold."""
    tokenizer = TextTokenizer.from_path(train_tokenizer(HAN_CAPTIONS * 4 + CORPUS, VOCAB_SIZE, tmp_path / "split"))
    assert pieces(tokenizer, "数字零")[-3:] == ["数", "字", "零"]
    assert pieces(tokenizer, "一个手写的数字零")[-1] == "零"
    for text in ("数字零", "一个手写的数字零", "二匹の犬が緑の野原を走っています。", "a 红色 circle"):
        assert roundtrip(tokenizer, text) == text
    glued = TextTokenizer.from_path(
        train_tokenizer(HAN_CAPTIONS * 4 + CORPUS, VOCAB_SIZE, tmp_path / "glued", split_han=False)
    )
    assert "零" not in pieces(glued, "一个手写的数字零")  # the old behaviour: the class word hides inside a phrase


@pytest.mark.parametrize("algorithm", ["unigram", "bpe"])
def test_literal_byte_token_text_in_corpus_stays_text(algorithm: str, tmp_path: Path) -> None:
    """A corpus full of literal "<0x41>" must not teach a piece that decodes as the byte 0x41."""
    corpus = CORPUS + [f"{w}<0x41> x<0x42>{w} <0x41>{w}<0x42>" for w in "abcdefghijklmnop"] * 3
    tokenizer = TextTokenizer.from_path(train_tokenizer(corpus, VOCAB_SIZE, tmp_path, algorithm))
    vocab = tokenizer.tokenizer.get_vocab()
    assert len(set(vocab.values())) == len(vocab) == tokenizer.vocab_size  # no duplicate or missing ids
    for text in ("<0x41>", "x <0x41><0x42> y", "q<0x41>", "b<0x42>b"):
        assert roundtrip(tokenizer, text) == text


def test_trained_file_needs_only_tokenizers(trained: Path) -> None:
    """tokenizer.json alone, loaded by `tokenizers`, adds <s> ... </s> and decodes back to the text."""
    raw = Tokenizer.from_file(str(trained))
    encoding = raw.encode("A black cat.")
    assert encoding.tokens[0] == "<s>" and encoding.tokens[-1] == "</s>"
    assert raw.decode(encoding.ids) == "A black cat."


# ------------------------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------------------------


def test_corpus_round_trips(tok: TextTokenizer) -> None:
    """Every training sentence decodes back to itself (NFKC)."""
    for text in CORPUS:
        assert roundtrip(tok, text) == unicodedata.normalize("NFKC", text)


@pytest.mark.parametrize("script", sorted(UNSEEN))
def test_unseen_characters_round_trip_through_byte_fallback(tok: TextTokenizer, script: str) -> None:
    """Characters absent from training are encoded as bytes (never <unk>) and decode back exactly."""
    text = f"A cat and {UNSEEN[script]} here."
    seen = set("".join(CORPUS))
    assert not set(UNSEEN[script].replace(" ", "")) & seen, "test data must not occur in the corpus"
    ids, _ = tok.encode([text], max_length=10_000)
    tokens = [tok.tokenizer.id_to_token(int(i)) for i in ids[0]]
    assert any(t.startswith("<0x") for t in tokens)
    assert tok.tokenizer.token_to_id("<unk>") not in ids[0].tolist()
    assert roundtrip(tok, text) == unicodedata.normalize("NFKC", text)


@pytest.mark.parametrize("text", EXTRA_TEXTS)
def test_awkward_text_round_trips(tok: TextTokenizer, text: str) -> None:
    """Spacing, NFKC-folded characters and a literal byte-token spelling all survive."""
    assert roundtrip(tok, text) == unicodedata.normalize("NFKC", text)


# ------------------------------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------------------------------


def test_encode_pads_to_longest_in_batch(tok: TextTokenizer) -> None:
    """Shape is [N, longest], int64, the mask counts real tokens and padding holds the pad id."""
    texts = ["cat", CORPUS[1], CORPUS[5], ""]
    lengths = [len(tok.tokenizer.encode(t).ids) for t in texts]
    ids, mask = tok.encode(texts, max_length=512)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (4, max(lengths))
    assert mask.sum(axis=1).tolist() == lengths
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert (ids[mask == 0] == tok.pad_id).all()
    bos, eos = tok.tokenizer.token_to_id("<s>"), tok.tokenizer.token_to_id("</s>")
    for row, row_mask, n in zip(ids, mask, lengths, strict=True):
        assert row[0] == bos and row[n - 1] == eos
        assert row_mask[:n].all() and not row_mask[n:].any()  # real tokens first, padding after
    assert lengths[3] == 2  # the empty caption is just <s> </s>


def test_encode_truncates_and_keeps_end_token(tok: TextTokenizer) -> None:
    """Rows longer than max_length are cut to it and still end with </s>; short rows are padded."""
    long_text = " ".join(CORPUS[:6])
    ids, mask = tok.encode([long_text, "cat"], max_length=8)
    assert ids.shape == (2, 8)
    eos = tok.tokenizer.token_to_id("</s>")
    assert ids[0, -1] == eos and mask[0].all()
    full = tok.tokenizer.encode(long_text).ids
    assert ids[0, :7].tolist() == full[:7]
    assert mask[1].sum() == len(tok.tokenizer.encode("cat").ids) < 8


def test_encode_length_is_min_of_max_length_and_longest(tok: TextTokenizer) -> None:
    """A batch of short texts is not padded up to max_length."""
    ids, _ = tok.encode(["cat", "dog"], max_length=77)
    assert ids.shape[1] == max(len(tok.tokenizer.encode(t).ids) for t in ("cat", "dog")) < 77


def test_encode_empty_batch(tok: TextTokenizer) -> None:
    """An empty batch gives [0, 0] arrays."""
    ids, mask = tok.encode([], max_length=16)
    assert ids.shape == mask.shape == (0, 0) and ids.dtype == np.int64


def test_encode_rejects_bad_input(tok: TextTokenizer) -> None:
    """Non-str items name their index; a bare string and a bad max_length are rejected."""
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        tok.encode(["a", "b", None, "d"], max_length=8)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        tok.encode("a cat", max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["a"], max_length=0)


def test_decode_skips_padding_and_checks_shape(tok: TextTokenizer) -> None:
    """A padded row decodes to its text; 2-D input is rejected."""
    ids, _ = tok.encode(["A red sofa.", CORPUS[0]], max_length=64)
    assert tok.decode(ids[0]) == "A red sofa."
    assert tok.decode(ids[0].tolist()) == "A red sofa."
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(ids)


def test_encode_is_thread_safe(tok: TextTokenizer) -> None:
    """Concurrent encodes with different max_lengths give the same arrays as sequential ones."""
    jobs = [(CORPUS[i : i + 5], 4 + i % 9) for i in range(0, 36)]
    expected = [tok.encode(texts, n) for texts, n in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: tok.encode(*job), jobs * 4))
    for (got_ids, got_mask), (want_ids, want_mask) in zip(results, expected * 4, strict=True):
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_mask, want_mask)


# ------------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------------


def test_load_from_file_directory_json_string_and_save(trained: Path, tmp_path: Path) -> None:
    """File, directory, JSON text and a saved copy all encode identically."""
    texts = [CORPUS[0], CORPUS[12], "🦄"]
    want = TextTokenizer.from_path(trained).encode(texts, 32)
    saved = TextTokenizer.from_path(trained).save(tmp_path / "copy")
    assert saved == tmp_path / "copy" / TOKENIZER_FILE
    for loaded in (
        TextTokenizer.from_path(str(trained.parent)),
        TextTokenizer.from_json_str(trained.read_text()),
        TextTokenizer.from_path(saved),
        TextTokenizer(Tokenizer.from_str(TextTokenizer.from_path(trained).to_json_str())),
    ):
        got = loaded.encode(texts, 32)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_load_missing_and_invalid_paths(tmp_path: Path) -> None:
    """A missing path is a FileNotFoundError; a file that is not a tokenizer.json is a ValueError naming it."""
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        TextTokenizer.from_path(tmp_path / "missing" / TOKENIZER_FILE)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        TextTokenizer.from_path(bad)


def test_load_hf_fast_tokenizer_directory(trained: Path, tmp_path: Path) -> None:
    """A transformers save_pretrained directory loads through its tokenizer.json without transformers."""
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(trained)), pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(tmp_path / "hf")
    loaded = TextTokenizer.from_path(tmp_path / "hf")
    want = TextTokenizer.from_path(trained).encode(CORPUS[:4], 16)
    got = loaded.encode(CORPUS[:4], 16)
    np.testing.assert_array_equal(got[0], want[0])
    assert loaded.pad_id == 0


def test_load_hf_directory_without_tokenizer_json(tmp_path: Path) -> None:
    """A vocab.txt BERT directory is loaded through transformers; its [PAD] id and [SEP] ending are honoured."""
    pytest.importorskip("transformers")
    vocab = ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "a", "cat", "dog", "on", "the", "mat", ".", "##s"]
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    loaded = TextTokenizer.from_path(bert_dir)
    assert loaded.pad_id == vocab.index("[PAD]")
    ids, mask = loaded.encode(["the cats on the mat.", "a dog"], max_length=6)
    index = {token: i for i, token in enumerate(vocab)}
    assert ids[0].tolist() == [index[t] for t in ("[CLS]", "the", "cat", "##s", "on", "[SEP]")]
    assert ids[1].tolist() == [index[t] for t in ("[CLS]", "a", "dog", "[SEP]", "[PAD]", "[PAD]")]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0]


def test_load_unusable_directory_names_it(tmp_path: Path) -> None:
    """A directory with neither tokenizer.json nor anything transformers can load gives an error naming it."""
    pytest.importorskip("transformers")
    empty = tmp_path / "empty_tokenizer_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_tokenizer_dir"):
        TextTokenizer.from_path(empty)


def test_unknown_hub_id_fails_fast_with_download_hint() -> None:
    """A hub id that is not cached raises FileNotFoundError quickly, naming the id and how to download it."""
    pytest.importorskip("transformers")
    hub_id = "dcclip-tests/no-such-tokenizer-4242"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as excinfo:
        TextTokenizer.from_path(hub_id)
    assert time.perf_counter() - start < 10.0  # includes the first transformers import
    message = str(excinfo.value)
    assert hub_id in message and "download" in message


def test_hub_ids_are_looked_up_in_local_files_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers is always asked for local files only, so a missing id never waits on network retries."""
    transformers = pytest.importorskip("transformers")
    calls: list[tuple[str, dict[str, object]]] = []

    def fake_from_pretrained(name: str, **kwargs: object) -> None:
        """Record the call and fail like an uncached hub id."""
        calls.append((name, kwargs))
        raise OSError("not cached")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    with pytest.raises(FileNotFoundError, match="some-org/some-model"):
        TextTokenizer.from_path("some-org/some-model")
    assert calls == [("some-org/some-model", {"local_files_only": True})]


def test_pad_id_from_hf_pad_token_names() -> None:
    """The pad id follows the pad token's name, an explicit pad token or padding config, else 0."""

    def word_level(vocab: list[str]) -> Tokenizer:
        """A tiny whitespace word-level tokenizer."""
        tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=vocab[0]))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return tokenizer

    assert TextTokenizer(word_level(["[UNK]", "x", "[PAD]"])).pad_id == 2
    assert TextTokenizer(word_level(["<unk>", "x", "y", "<pad>"])).pad_id == 3
    assert TextTokenizer(word_level(["<unk>", "<|endoftext|>"])).pad_id == 1
    assert TextTokenizer(word_level(["<unk>", "x", "y"])).pad_id == 0
    assert TextTokenizer(word_level(["<unk>", "x", "my_pad"]), pad_token="my_pad").pad_id == 2
    padded = word_level(["<unk>", "x", "y"])
    padded.enable_padding(pad_id=1, pad_token="x")
    assert TextTokenizer(padded).pad_id == 1


def test_wrapping_does_not_touch_the_callers_padding_state() -> None:
    """A tokenizer with padding/truncation configured is copied; the caller's object keeps its settings."""
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.enable_padding(pad_id=1, pad_token="<pad>", length=10)
    tokenizer.enable_truncation(max_length=3)
    wrapped = TextTokenizer(tokenizer)
    ids, mask = wrapped.encode(["a b a b a", "a"], max_length=6)
    assert ids.tolist() == [[2, 3, 2, 3, 2], [2, 1, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert tokenizer.padding is not None and tokenizer.padding["length"] == 10
    assert tokenizer.truncation is not None and tokenizer.truncation["max_length"] == 3


def test_runtime_import_is_torch_and_transformers_free(trained: Path) -> None:
    """Importing the module and encoding in a fresh interpreter pulls in neither torch nor transformers."""
    script = textwrap.dedent(
        f"""
        import sys
        from dcclip.models.tokenizers import TextTokenizer
        tok = TextTokenizer.from_path({str(trained)!r})
        ids, mask = tok.encode(["A black cat.", "黒い猫"], max_length=16)
        assert ids.shape[0] == 2 and mask.sum() > 0
        assert tok.decode(ids[1]) == "黒い猫"
        leaked = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        assert not leaked, leaked
        print("ok")
        """
    )
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
