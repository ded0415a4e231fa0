"""`dcclip shards translate`: a tiny random NLLB model adds captions; everything else survives byte for byte."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.images import jpeg_bytes

from dcclip.data import translate as tr
from dcclip.data.shard_validate import validate_shards
from dcclip.data.shards import (
    BUILDING_MARKER,
    ShardSetWriter,
    iter_tar_samples,
    read_manifest,
    without_machine_captions,
)
from dcclip.engine import distributed
from dcclip.engine.distributed import DistEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARDS, PER_SHARD = 4, 3
TEXTS = ["a red circle", "two blue squares", "a green cat on grass", "the small dog runs"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def make_captions(i: int) -> dict[str, str]:
    """English for every sample but one; French on some; sample 4 already has Chinese; sample 7 has no English."""
    captions = {"en": f"{TEXTS[i % len(TEXTS)]} {i}"}
    if i % 3 == 0:
        captions["fr"] = f"un cercle rouge {i}"
    if i == 4:
        captions["zh"] = "一个红色的圆形"
    if i == 7:
        captions = {"fr": f"un chien {i}"}
    return captions


def npy(i: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.full(4, i, dtype=np.float16))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """4 shards of 3 samples with an image, a cached feature, a class label and extra metadata each."""
    out = tmp_path_factory.mktemp("src")
    with ShardSetWriter(out, max_count=PER_SHARD) as writer:
        for i in range(SHARDS * PER_SHARD):
            captions = make_captions(i)
            meta = {"captions": captions, "source_lang": next(iter(captions)), "license": "cc0", "id": i}
            writer.add(f"s{i:03d}", {"jpg": jpeg_bytes(i, 16), "img_emb.npy": npy(i), "cls": b"%d" % (i % 2)}, meta)
    return out


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory) -> Path:
    """A tiny random NLLB (M2M100 architecture + NLLB fast tokenizer), saved like a downloaded model.

    Special-token rows of the tied embedding are zeroed so greedy decoding emits ordinary word pieces: the random model
    then always yields a non-empty (meaningless) caption.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    corpus = [f"{t} {i}" for t in [*TEXTS, "un cercle rouge", "un chien"] for i in range(20)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=90, special_tokens=SPECIALS))
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = NllbTokenizer(vocab=trained["vocab"], merges=merges)
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config)
    plain = len(trained["vocab"])  # ids from here on are language codes and <mask>
    blank = [*range(len(SPECIALS)), *range(plain, len(tokenizer)), tokenizer.convert_tokens_to_ids("▁")]
    with torch.no_grad():
        model.model.shared.weight[blank] = 0.0
        model.lm_head.weight[blank] = 0.0
    path = tmp_path_factory.mktemp("models") / "tiny-nllb"
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def translate(source: Path, out: Path, model: Path, langs: str = "zh,ja", **kwargs) -> dict:
    kwargs.setdefault("max_new_tokens", 6)
    return tr.run(
        str(source), out, str(model), langs.split(","), device="cpu", show_progress=False, group=distributed, **kwargs
    )


@pytest.fixture(scope="module")
def translated(source, nllb_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out")
    return out, translate(source, out, nllb_dir, batch_size=2)


def samples_of(shard_dir: Path) -> dict[str, dict]:
    return {s["__key__"]: s for p in sorted(shard_dir.glob("*.tar")) for s in iter_tar_samples(p)}


def test_every_sample_keeps_its_fields_and_captions_and_gains_the_new_languages(source, translated):
    out, summary = translated
    before, after = samples_of(source), samples_of(out)
    assert list(after) == list(before)  # same samples in the same shards and order
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in source.glob("*.tar"))
    for key, old in before.items():
        new = after[key]
        assert {k: v for k, v in new.items() if k not in ("json", "__url__")} == {
            k: v for k, v in old.items() if k not in ("json", "__url__")
        }, "image, features and cls are byte-identical"
        old_meta, new_meta = json.loads(old["json"]), json.loads(new["json"])
        assert {k: v for k, v in new_meta.items() if k not in ("captions", "caption_sources")} == {
            k: v for k, v in old_meta.items() if k != "captions"
        }
        assert new_meta["captions"].items() >= old_meta["captions"].items()
        if "en" not in old_meta["captions"]:
            assert new["json"] == old["json"], "a sample without a source caption is copied unchanged"
            continue
        added = set(new_meta["captions"]) - set(old_meta["captions"])
        assert added == {"zh", "ja"} - set(old_meta["captions"])
        assert all(isinstance(new_meta["captions"][lang], str) and new_meta["captions"][lang].strip() for lang in added)
        origin = {"kind": "machine", "model": "tiny-nllb", "from": "en"}
        assert new_meta["caption_sources"] == dict.fromkeys(added, origin)
        assert without_machine_captions(new_meta)["captions"] == old_meta["captions"]
    assert json.loads(after["s004"]["json"])["captions"]["zh"] == "一个红色的圆形", "an existing caption is kept"
    assert summary["captions_translated"] == 2 * 11 - 1 and summary["shards_done_now"] == SHARDS


def test_manifest_records_the_translation_and_the_set_validates(translated):
    out, _ = translated
    manifest = read_manifest(out)
    entry = manifest["translation"]
    assert entry["model"] == "tiny-nllb" and entry["family"] == "nllb" and entry["source_lang"] == "en"
    assert entry["langs"] == ["zh", "ja"]
    assert entry["model_codes"] == {"en": "eng_Latn", "zh": "zho_Hans", "ja": "jpn_Jpan"}
    assert entry["counts"] == {"zh": {"machine": 10, "kept": 1}, "ja": {"machine": 11, "kept": 0}}
    assert entry["missing_source"] == 1
    assert manifest["samples"] == SHARDS * PER_SHARD and manifest["langs"]["ja"] == 11
    assert json.loads((out / tr.SETTINGS_NAME).read_text())["langs"] == ["zh", "ja"]
    assert not (out / BUILDING_MARKER).exists()
    report = validate_shards(out, progress=False)
    assert report.ok, report.format_table()


def test_a_killed_run_resumes_with_only_the_unfinished_shards(source, nllb_dir, translated, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen: list[str] = []
    real = tr.Translator.translate

    def spy(self, texts, lang):
        seen.extend(texts)
        return real(self, texts, lang)

    def flaky(self, texts, lang):
        if any(t.endswith((" 6", " 8")) for t in texts):  # shard 2 (samples 6-8): "killed" in the middle
            raise KeyboardInterrupt
        return spy(self, texts, lang)

    monkeypatch.setattr(tr.Translator, "translate", flaky)
    with pytest.raises(KeyboardInterrupt):
        translate(source, out, nllb_dir)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert not list(out.glob(".*partial*")) and (out / BUILDING_MARKER).exists()
    (out / f".shard-000002.tar.partial-{2**22 + 7}").write_bytes(b"left by a SIGKILLed writer")  # no such pid
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    time.sleep(0.01)

    seen.clear()
    monkeypatch.setattr(tr.Translator, "translate", spy)
    summary = translate(source, out, nllb_dir)
    assert summary["shards_done_now"] == 2 and summary["shards_reused"] == 2
    assert {int(t.rsplit(" ", 1)[1]) for t in seen} == {6, 8, 9, 10, 11}, "only shards 2 and 3 were translated"
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished
    assert not list(out.glob(".*partial*"))
    reference = translated[0]
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == {
        p.name: p.read_bytes() for p in reference.glob("*.tar")
    }, "deterministic: batch size and restarts do not change the output"

    (out / "shard-000001.tar").unlink()
    seen.clear()
    assert translate(source, out, nllb_dir)["shards_done_now"] == 1
    assert sorted(int(t.rsplit(" ", 1)[1]) for t in seen) == [3, 3, 4, 5, 5]  # sample 4 already had zh
    assert read_manifest(out)["samples"] == SHARDS * PER_SHARD


def test_ranks_take_every_world_size_th_shard_and_rank_0_writes_the_manifest(source, nllb_dir, translated, tmp_path):
    out = tmp_path / "out"
    options = tr.TranslateOptions(str(source), str(nllb_dir), ("zh", "ja"), max_new_tokens=6)
    tr.translate_shard_set(options, out, DistEnv(rank=1, world_size=2), distributed, show_progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000001.tar", "shard-000003.tar"]
    assert not (out / "manifest.json").exists()
    summary = tr.translate_shard_set(options, out, DistEnv(rank=0, world_size=2), distributed, show_progress=False)
    assert summary["shards_done_now"] == 2
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == {
        p.name: p.read_bytes() for p in translated[0].glob("*.tar")
    }
    assert read_manifest(out)["translation"]["counts"]["ja"]["machine"] == 11


def test_the_model_gets_the_source_and_target_language_tokens(nllb_dir, monkeypatch):
    options = tr.TranslateOptions("unused", str(nllb_dir), ("zh", "ko=kor_Hang"), max_new_tokens=3)
    translator = tr.load_translator(options, torch.device("cpu"))
    calls = []
    generate = translator.model.generate
    monkeypatch.setattr(translator.model, "generate", lambda **kw: calls.append(kw) or generate(**kw))
    translator.translate(["a red circle", "two cats"], "ko")
    ids = translator.tokenizer.convert_tokens_to_ids
    assert calls[0]["input_ids"][:, 0].tolist() == [ids("eng_Latn")] * 2
    assert calls[0]["forced_bos_token_id"] == ids("kor_Hang") and calls[0]["num_beams"] == 1
    assert translator.target_codes == {"zh": "zho_Hans", "ko": "kor_Hang"}


def test_offline_hub_name_fails_fast_and_says_why(source, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    hub_name = "facebook/nllb-200-distilled-600M"
    with pytest.raises(tr.TranslateError, match=rf"{hub_name}: not a local directory.*hub is unreachable"):
        translate(source, tmp_path / "out", Path(hub_name))
    assert time.perf_counter() - started < 10
    with pytest.raises(tr.TranslateError, match="not a Hugging Face model directory"):
        translate(source, tmp_path / "out", tmp_path)


def test_other_settings_or_in_place_output_are_refused(source, nllb_dir, translated):
    out, _ = translated
    with pytest.raises(tr.TranslateError, match="other settings"):
        translate(source, out, nllb_dir, langs="zh")
    with pytest.raises(tr.TranslateError, match="holds the source shards"):
        translate(source, source, nllb_dir)
    with pytest.raises(tr.TranslateError, match="source language"):
        translate(source, out, nllb_dir, langs="en,zh")


def test_language_code_tables_and_marian_rules():
    assert [tr.nllb_code(c) for c in ("zh", "ar", "hi", "de=deu_Latn", "zh=zho_Hant")] == [
        "zho_Hans", "arb_Arab", "hin_Deva", "deu_Latn", "zho_Hant",
    ]  # fmt: skip
    assert all(code in tr.NLLB_CODES for code in ("en", "zh", "ja", "ko", "ar", "hi", "ru", "es", "fr", "de"))
    with pytest.raises(tr.TranslateError, match=r"no NLLB language code known for 'xx'.*zh=zho_Hans"):
        tr.nllb_code("xx")
    assert tr.model_token("m2m100", tr.m2m100_code("zh")) == "__zh__"
    assert tr.marian_prefix("zh", [">>cmn_Hans<<", ">>jpn<<"]) == ">>cmn_Hans<<"
    assert tr.marian_prefix("ja", [">>cmn_Hans<<", ">>jpn<<"]) == ">>jpn<<"
    # names come from dcclip.data.langcodes: any language it knows, the plainest name first, KEY=NAME overrides
    assert tr.marian_prefix("zh", [">>cmn_Hant<<", ">>cmn_Hans<<", ">>zho<<"]) == ">>zho<<"
    assert tr.marian_prefix("zh", [">>cmn_Hant<<", ">>cmn_Hans<<"]) == ">>cmn_Hans<<"
    assert tr.marian_prefix("zh=cmn_Hant", [">>cmn_Hant<<", ">>cmn_Hans<<"]) == ">>cmn_Hant<<"
    assert tr.marian_prefix("nl", [">>nld<<", ">>deu<<"]) == ">>nld<<"
    assert tr.iso_of("zho_Hans") == "zh" and tr.iso_of("gem") == "gem" and tr.iso_of("mul") == "mul"
    tr.check_marian_pair(("nl",), "en", ("gem", "nl"), "opus-mt-gem-nl")  # a group source takes any --source-lang
    with pytest.raises(tr.TranslateError, match="no target token for 'ko'"):
        tr.marian_prefix("ko", [">>jpn<<"])
    name_only = SimpleNamespace(source_lang=None, target_lang=None)
    assert tr.marian_pair(name_only, "/models/opus-mt-en-zh") == ("en", "zh")
    assert tr.marian_pair(SimpleNamespace(source_lang="eng", target_lang="jpn"), "x") == ("en", "ja")
    tr.check_marian_pair(("zh",), "en", ("en", "zh"), "opus-mt-en-zh")
    with pytest.raises(tr.TranslateError, match="en -> zh only: pass --langs zh"):
        tr.check_marian_pair(("zh", "ja"), "en", ("en", "zh"), "opus-mt-en-zh")
    with pytest.raises(tr.TranslateError, match="translates from 'de'"):
        tr.check_marian_pair(("zh",), "en", ("de", "zh"), "opus-mt-de-zh")


def test_model_id_names_a_directory_or_hub_snapshot_by_its_model(tmp_path):
    snapshot = tmp_path / "hub" / "models--facebook--nllb-200-distilled-600M" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert tr.model_id(str(snapshot)) == "facebook/nllb-200-distilled-600M"
    assert tr.model_id(str(tmp_path / "hub")) == "hub"
    assert tr.model_id("Helsinki-NLP/opus-mt-en-zh") == "Helsinki-NLP/opus-mt-en-zh"


def test_family_comes_from_model_type_and_the_language_tokens():
    def tok(vocab):
        return SimpleNamespace(unk_token_id=3, convert_tokens_to_ids=lambda t: vocab.get(t, 3))

    assert tr.detect_family(SimpleNamespace(model_type="marian"), tok({})) == "marian"
    assert tr.detect_family(SimpleNamespace(model_type="m2m_100"), tok({"eng_Latn": 9})) == "nllb"
    assert tr.detect_family(SimpleNamespace(model_type="m2m_100"), tok({"__en__": 9})) == "m2m100"
    with pytest.raises(tr.TranslateError, match="'bert' is not a supported translation model"):
        tr.detect_family(SimpleNamespace(model_type="bert"), tok({}))


def test_cli_translates_then_validates(source, nllb_dir, tmp_path, capsys):
    from dcclip.cli import main

    out = tmp_path / "cli"
    argv = ["shards", "translate", "--shards", str(source), "--out", str(out), "--model", str(nllb_dir)]
    argv += ["--langs", "ko", "--device", "cpu", "--batch-size", "4", "--max-new-tokens", "4"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["captions_translated"] == 11
    assert main(["shards", "validate", str(out)]) == 0
    assert read_manifest(out)["translation"]["counts"] == {"ko": {"machine": 11, "kept": 0}}
    with pytest.raises(SystemExit) as exit_info:
        main(["shards", "translate", "--help"])
    assert exit_info.value.code == 0 and "--caption-lang" in capsys.readouterr().out


def _rank_worker(rank: int, port: int, source: str, out: str, model: str) -> None:
    """One torchrun-like rank: the environment torchrun would set, then the command's library entry point."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    summary = tr.run(
        source, out, model, ["zh", "ja"], device="cpu", max_new_tokens=6, show_progress=False, group=distributed
    )
    Path(out, f"summary-{rank}.json").write_text(json.dumps(summary))


def test_two_gloo_ranks_write_what_one_process_writes(source, nllb_dir, translated, tmp_path):
    import torch.multiprocessing as mp
    from helpers.server_process import free_port

    out = tmp_path / "out"
    args = (free_port(), str(source), str(out), str(nllb_dir))
    # fork: the ranks inherit the imported torch and transformers instead of spending ~15 s importing them again
    mp.start_processes(_rank_worker, args=args, nprocs=2, join=True, start_method="fork")
    summaries = [json.loads((out / f"summary-{r}.json").read_text()) for r in range(2)]
    assert summaries[0]["captions_translated"] == summaries[1]["captions_translated"] == 21, "summed over ranks"
    assert summaries[0]["shards_done_now"] == SHARDS
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == {
        p.name: p.read_bytes() for p in translated[0].glob("*.tar")
    }
    assert read_manifest(out)["translation"]["counts"]["zh"] == {"machine": 10, "kept": 1}


def test_training_can_leave_machine_captions_out(source, translated):
    from dcclip.config import DataConfig
    from dcclip.data.shards import CaptionFormat, parse_meta

    out, _ = translated
    sample = samples_of(out)["s000"]
    assert set(parse_meta(sample)["captions"]) >= {"en", "zh", "ja"}
    human_only = parse_meta(sample, CaptionFormat(machine_captions=False))["captions"]
    assert human_only == json.loads(samples_of(source)["s000"]["json"])["captions"]
    assert DataConfig(machine_captions=False).machine_captions is False
