"""``dcclip shards translate``: add machine-translated captions to a shard set with a Hugging Face MT model.

Every output shard has the name of its source shard and the same samples in the same order; each sample keeps every
field byte for byte and every caption it had, and gains the missing target languages. A new caption is recorded in the
sample's ``caption_sources`` (``{"zh": {"kind": "machine", "model": ..., "from": "en"}}``); captions that came with
the data are not listed there. Like ``cache-teacher``, ranks take disjoint shards, a shard is written under a
temporary name and renamed, finished shards are kept on restart, and rank 0 writes ``manifest.json`` at the end.

The process group is passed in (``ProcessGroup``: ``dcclip.engine.distributed`` is one), so this data tool stays on
the data floor. Language names of Marian models are read with ``dcclip.data.langcodes``, the one table of codes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from dcclip.data.progress import progress_bar
from dcclip.data.shards import (
    BUILDING_MARKER,
    MACHINE,
    MANIFEST_NAME,
    ShardError,
    ShardInfo,
    build_manifest,
    chunked,
    iter_tar_samples,
    parse_meta,
    shard_paths,
    write_shard,
)
from dcclip.data.sources import is_local, local_path, shard_name
from dcclip.data.translate_langs import (  # noqa: F401 - the language names stay importable from translate
    _MARIAN_NAME,
    NLLB_CODES,
    TranslateError,
    check_langs,
    check_marian_pair,
    is_iso_639_1,
    iso_of,
    lang_key,
    lang_override,
    m2m100_code,
    marian_pair,
    marian_prefix,
    model_token,
    nllb_code,
)
from dcclip.io import write_json_atomic
from dcclip.runtime.optional import hf_offline, require

log = logging.getLogger(__name__)

SETTINGS_NAME = "translation.json"  # the run's settings, written first: a restart with other settings is refused
COUNT_KEYS = ("samples", "missing_source", "unreadable")


class Ranks(Protocol):
    """Where this process sits among torchrun's ranks (``dcclip.engine.distributed.DistEnv``)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...


class ProcessGroup(Protocol):
    """What a translation run needs from torchrun's process group; ``dcclip.engine.distributed`` provides it."""

    def init_distributed(self, device_preference: str = "auto") -> Ranks: ...

    def shutdown_distributed(self) -> None: ...

    def barrier(self) -> None: ...

    def all_reduce_sum_int(self, value: int, device: torch.device) -> int: ...


@dataclass(frozen=True)
class TranslateOptions:
    """What ``dcclip shards translate`` was asked to do."""

    shards: str
    model: str
    langs: tuple[str, ...]  # caption keys, each optionally ``KEY=MODEL_CODE``
    source_lang: str = "en"  # optionally ``KEY=MODEL_CODE`` too
    batch_size: int = 32
    max_new_tokens: int = 256
    num_beams: int = 1
    device: str = "auto"


@dataclass
class Translator:
    """A loaded MT model that turns a batch of source captions into one target language, deterministically."""

    family: str  # nllb | m2m100 | marian
    model_id: str
    model: Any
    tokenizer: Any
    device: torch.device
    source_code: str
    target_codes: dict[str, str]  # caption key -> the model's code for it
    forced_bos: dict[str, int | None] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)  # multi-target Marian: ">>zho<< "
    max_new_tokens: int = 256
    num_beams: int = 1

    @torch.inference_mode()
    def translate(self, texts: list[str], lang: str) -> list[str]:
        """Translate ``texts`` into ``lang`` with greedy (or fixed beam) search; blank outputs come back as ''."""
        inputs = [self.prefixes.get(lang, "") + text for text in texts]
        enc = self.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True, max_length=512)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.forced_bos.get(lang) is not None:
            kwargs["forced_bos_token_id"] = self.forced_bos[lang]
        out = self.model.generate(**enc.to(self.device), do_sample=False, **kwargs)
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def record(self, options: TranslateOptions) -> dict[str, Any]:
        """The settings that decide the captions: stored in ``translation.json`` and the manifest."""
        return {
            "model": self.model_id,
            "family": self.family,
            "source_lang": lang_key(options.source_lang),
            "langs": list(self.target_codes),
            "model_codes": {lang_key(options.source_lang): self.source_code, **self.target_codes},
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
        }


# ---- loading -----------------------------------------------------------------------------------------------------


def model_id(model: str) -> str:
    """How captions name the model: a hub name as given, a local directory by its name (a hub-cache snapshot by its
    repository's name, not its commit hash)."""
    path = Path(model).resolve()
    if not Path(model).is_dir():
        return model
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return path.name


def import_transformers() -> Any:
    """transformers comes with the ``train`` extra; without it, say how to install it."""
    return require("transformers", "dcclip shards translate")


def load_config(model: str) -> Any:
    """The model's config, with one clear message when a hub name cannot be reached (offline) or a path is wrong."""
    transformers = import_transformers()
    path = Path(model)
    if path.exists() and not path.is_dir():
        raise TranslateError(f"--model {model}: expected a model directory (config.json, weights, tokenizer)")
    try:
        return transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        if path.is_dir():
            raise TranslateError(f"--model {model}: not a Hugging Face model directory ({exc})") from exc
        why = "the model hub is unreachable (HF_HUB_OFFLINE=1)" if hf_offline() else f"loading it failed ({exc})"
        raise TranslateError(
            f"--model {model}: not a local directory, not in the Hugging Face cache, and {why}. "
            f"Download it where the hub is reachable (`hf download {model} --local-dir DIR`) and pass --model DIR"
        ) from exc


def load_tokenizer(model: str, family: str) -> Any:
    """The model's tokenizer; Marian and M2M100 tokenizers need sentencepiece (NLLB ships a fast one)."""
    transformers = import_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(model)
    except (ImportError, ValueError, OSError) as exc:
        try:
            import sentencepiece  # noqa: F401
        except ImportError:
            raise ImportError(
                f"{model}: the {family} tokenizer needs sentencepiece (pip install sentencepiece)"
            ) from exc
        raise TranslateError(f"--model {model}: cannot load its tokenizer ({exc})") from exc


def detect_family(config: Any, tokenizer: Any) -> str:
    """nllb, m2m100 or marian from the config's ``model_type``; NLLB shares M2M100's, so its FLORES tokens decide."""
    model_type = getattr(config, "model_type", None)
    if model_type == "marian":
        return "marian"
    if model_type == "nllb-moe":
        return "nllb"
    if model_type == "m2m_100":
        return "nllb" if has_token(tokenizer, "eng_Latn") else "m2m100"
    raise TranslateError(
        f"model_type {model_type!r} is not a supported translation model: use MarianMT (marian), M2M100 or NLLB "
        "(m2m_100, nllb-moe)"
    )


def has_token(tokenizer: Any, token: str) -> bool:
    """Whether the tokenizer knows ``token`` as one piece (not mapped to unk)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id != tokenizer.unk_token_id


def load_translator(options: TranslateOptions, device: torch.device) -> Translator:
    """Load model and tokenizer (a local directory, or a hub name when online) and resolve every language code."""
    transformers = import_transformers()
    specs = check_langs(options.langs, options.source_lang)
    config = load_config(options.model)
    tokenizer = load_tokenizer(options.model, str(getattr(config, "model_type", "?")))
    family = detect_family(config, tokenizer)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(options.model).to(device).eval()
    translator = Translator(
        family, model_id(options.model), model, tokenizer, device, options.source_lang, {},
        max_new_tokens=options.max_new_tokens, num_beams=options.num_beams,
    )  # fmt: skip
    resolve = resolve_marian if family == "marian" else resolve_multilingual
    resolve(translator, specs, options)
    log.info("translating with %s (%s) on %s: %s", translator.model_id, family, device, translator.target_codes)
    return translator


def resolve_multilingual(translator: Translator, specs: tuple[str, ...], options: TranslateOptions) -> None:
    """NLLB / M2M100: the tokenizer's ``src_lang`` marks the source, a forced first token picks the target."""
    tokenizer, family = translator.tokenizer, translator.family
    code_of: Callable[[str], str] = nllb_code if family == "nllb" else m2m100_code
    codes = {lang_key(s): code_of(s) for s in (options.source_lang, *specs)}
    for spec, code in codes.items():
        if not has_token(tokenizer, model_token(family, code)):
            raise TranslateError(f"{translator.model_id}: its tokenizer has no language token for {spec}={code}")
    translator.source_code = codes.pop(lang_key(options.source_lang))
    tokenizer.src_lang = translator.source_code
    translator.target_codes = codes
    translator.forced_bos = {k: tokenizer.convert_tokens_to_ids(model_token(family, c)) for k, c in codes.items()}


def resolve_marian(translator: Translator, specs: tuple[str, ...], options: TranslateOptions) -> None:
    """Marian: a multi-target model takes a ``>>xxx<<`` prefix per language, a one-pair model only its own target."""
    prefixes = list(getattr(translator.tokenizer, "supported_language_codes", None) or [])
    translator.source_code = lang_key(options.source_lang)
    if prefixes:
        tokens = {lang_key(s): marian_prefix(s, prefixes) for s in specs}
        translator.target_codes = {k: t.strip("<>") for k, t in tokens.items()}
        translator.prefixes = {k: f"{t} " for k, t in tokens.items()}
        return
    check_marian_pair(specs, options.source_lang, marian_pair(translator.tokenizer, options.model), options.model)
    translator.target_codes = {lang_key(specs[0]): lang_key(specs[0])}


# ---- samples and shards ------------------------------------------------------------------------------------------


def sample_meta(sample: dict[str, Any], counts: Counter) -> dict[str, Any] | None:
    """The sample's checked metadata, or None (counted, logged) when it has none usable: it is then copied as is."""
    try:
        return parse_meta(sample)
    except ShardError as exc:
        log.warning("%s: keeping %s unchanged: %s", sample.get("__url__"), sample.get("__key__"), exc)
        counts["unreadable"] += 1
        return None


def fields_of(sample: dict[str, Any]) -> dict[str, bytes]:
    """The stored fields of a raw sample (image, json, features, cls, ...) without the reader's ``__key__`` etc."""
    return {ext: data for ext, data in sample.items() if not ext.startswith("__")}


def plan_chunk(samples: list[dict[str, Any]], langs: list[str], source_lang: str, counts: Counter) -> dict:
    """Which samples need which language: {lang: [(sample index, source caption)]}; metas are parsed once."""
    todo: dict[str, list[tuple[int, str]]] = {lang: [] for lang in langs}
    for i, sample in enumerate(samples):
        meta = sample["__meta__"] = sample_meta(sample, counts)
        if meta is None:
            continue
        source = meta["captions"].get(source_lang)
        if source is None:
            counts["missing_source"] += 1
            continue
        for lang in langs:
            if lang in meta["captions"]:
                counts[f"kept:{lang}"] += 1
            else:
                todo[lang].append((i, source))
    return todo


def add_caption(meta: dict[str, Any], lang: str, text: str, model: str, source_lang: str) -> None:
    """Add one machine caption and say where it came from (earlier ``caption_sources`` entries are kept)."""
    meta["captions"][lang] = text
    sources = meta.setdefault("caption_sources", {})
    sources[lang] = {"kind": MACHINE, "model": model, "from": source_lang}


def translate_chunk(
    samples: list[dict[str, Any]], translator: Translator, source_lang: str, counts: Counter, bar: Any
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Translate what a chunk of samples lacks, one generate call per language; yields (key, fields) in order."""
    changed: set[int] = set()
    for lang, items in plan_chunk(samples, list(translator.target_codes), source_lang, counts).items():
        if not items:
            continue
        outputs = translator.translate([text for _, text in items], lang)
        for (i, _), text in zip(items, outputs, strict=True):
            if not text:
                counts[f"empty:{lang}"] += 1
                continue
            add_caption(samples[i]["__meta__"], lang, text, translator.model_id, source_lang)
            counts[f"machine:{lang}"] += 1
            changed.add(i)
        bar.update(len(items))
    for i, sample in enumerate(samples):
        fields = fields_of(sample)
        if i in changed:  # untouched samples keep their json bytes exactly
            fields["json"] = json.dumps(sample["__meta__"], ensure_ascii=False, sort_keys=True).encode("utf-8")
        yield sample["__key__"], fields


def translated_samples(
    url: str, translator: Translator, options: TranslateOptions, counts: Counter, bar: Any
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Every sample of one shard with its new captions, streamed batch by batch in the shard's order."""
    source_lang = lang_key(options.source_lang)
    for chunk in chunked(iter_tar_samples(url), options.batch_size):
        counts["samples"] += len(chunk)
        yield from translate_chunk(chunk, translator, source_lang, counts, bar)


def output_paths(urls: list[str], out_dir: Path) -> list[Path]:
    """One output shard per source shard, under the source's file name; refuses clashes and writing in place."""
    names = [shard_name(u) for u in urls]
    clash = next((n for n, c in Counter(names).items() if c > 1), None)
    if clash is not None:
        raise TranslateError(f"two source shards are both named {clash!r}: outputs would overwrite each other")
    for url in urls:
        if is_local(url) and local_path(url).resolve().parent == out_dir.resolve():
            raise TranslateError(f"--out {out_dir} holds the source shards: write the translations elsewhere")
    return [out_dir / name for name in names]


def prepare_out_dir(out_dir: Path, record: dict[str, Any], is_main: bool) -> None:
    """Mark the directory unfinished and store the settings; a restart with other settings is refused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = out_dir / SETTINGS_NAME
    if settings.is_file():
        previous = json.loads(settings.read_text(encoding="utf-8"))
        if previous != record:
            raise TranslateError(
                f"{out_dir} holds translations made with other settings ({previous}); use a new --out or empty it"
            )
    else:
        write_json_atomic(settings, record)
    (out_dir / BUILDING_MARKER).write_text("a shard translation started here and has not finished\n", "utf-8")
    if is_main:
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


def progress(enabled: bool) -> Any:
    """A bar counting captions (its rate is captions/s); a silent one when off."""
    return progress_bar(None, "translate", "caption", enabled, dynamic_ncols=True)


# ---- the shard set -----------------------------------------------------------------------------------------------


def translate_shard_set(
    options: TranslateOptions, out_dir: Path, env: Ranks, group: ProcessGroup, show_progress: bool = True
) -> dict:
    """Translate this rank's shards (rank r takes r, r + world, ...); rank 0 then writes the manifest."""
    urls = shard_paths(options.shards)
    outputs = output_paths(urls, out_dir)
    translator = load_translator(options, env.device)
    record = translator.record(options)
    prepare_out_dir(out_dir, record, env.is_main)
    mine = list(zip(urls, outputs, strict=True))[env.rank :: env.world_size]
    todo = [(url, out) for url, out in mine if not out.is_file()]
    counts: Counter = Counter()
    bar = progress(show_progress and env.is_main)
    started = time.perf_counter()
    for done, (url, out) in enumerate(todo, 1):
        write_shard(out, translated_samples(url, translator, options, counts, bar))
        bar.set_postfix_str(f"shard {done}/{len(todo)}")
    seconds = time.perf_counter() - started
    bar.close()
    reduce = group.all_reduce_sum_int
    summary = run_summary(counts, record["langs"], seconds, len(urls), len(todo), len(mine) - len(todo), env, reduce)
    group.barrier()
    if env.is_main:
        write_translation_manifest(out_dir, outputs, {**record, "source": options.shards})
    summary["out"] = str(out_dir)
    log.info("translated captions: %s", summary)
    return summary


def run_summary(
    counts: Counter,
    langs: list[str],
    seconds: float,
    shards: int,
    done_now: int,
    reused: int,
    env: Ranks,
    all_reduce_sum_int: Callable[[int, torch.device], int],
) -> dict:
    """What this run did, summed over ranks: shards done and reused, captions translated, samples passed over."""
    keys = [*COUNT_KEYS, *(f"{kind}:{lang}" for kind in ("machine", "kept", "empty") for lang in langs)]
    totals = {key: all_reduce_sum_int(counts[key], env.device) for key in keys}  # every rank, same keys, same order
    translated = sum(v for k, v in totals.items() if k.startswith("machine:"))
    return {
        "shards": shards,
        "shards_done_now": all_reduce_sum_int(done_now, env.device),
        "shards_reused": all_reduce_sum_int(reused, env.device),
        "samples": totals.get("samples", 0),
        "captions_translated": translated,
        "counts": {k: v for k, v in totals.items() if k != "samples"},
        "seconds": round(seconds, 2),
        "captions_per_s": round(translated / seconds, 1) if seconds > 0 and translated else None,
    }


def shard_stats(path: Path, model: str, langs: list[str], source_lang: str) -> tuple[ShardInfo, Counter]:
    """One finished output shard: its ShardInfo (samples, bytes, captions per language) and translation counts."""
    info, counts = ShardInfo(path.name), Counter()
    for sample in iter_tar_samples(path):
        info.samples += 1
        try:
            meta = parse_meta(sample)
        except ShardError:
            counts["unreadable"] += 1
            continue
        info.langs.update(meta["captions"].keys())
        counts["missing_source"] += source_lang not in meta["captions"]
        sources = meta.get("caption_sources") or {}
        for lang in langs:
            source = sources.get(lang)
            by_us = isinstance(source, dict) and source.get("kind") == MACHINE and source.get("model") == model
            counts[f"machine:{lang}"] += by_us
            counts[f"kept:{lang}"] += lang in meta["captions"] and not by_us
    info.bytes = path.stat().st_size
    return info, counts


def write_translation_manifest(out_dir: Path, outputs: list[Path], record: dict[str, Any]) -> dict[str, Any]:
    """The output manifest, read back from every finished shard, with a ``translation`` entry; then clear the marker."""
    missing = [p.name for p in outputs if not p.is_file()]
    if missing:
        raise TranslateError(f"{out_dir}: {len(missing)} shard(s) not translated (e.g. {missing[0]}); run again")
    infos, totals = [], Counter()
    for path in outputs:
        info, counts = shard_stats(path, record["model"], record["langs"], record["source_lang"])
        infos.append(info)
        totals.update(counts)
    per_lang = {
        lang: {"machine": totals[f"machine:{lang}"], "kept": totals[f"kept:{lang}"]} for lang in record["langs"]
    }
    entry = {**record, "counts": per_lang}
    entry.update(missing_source=totals["missing_source"], unreadable=totals["unreadable"])
    manifest = build_manifest(infos, [], {"translation": entry})
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    (out_dir / BUILDING_MARKER).unlink(missing_ok=True)
    return manifest


# ---- using the result --------------------------------------------------------------------------------------------


def run(
    shards: str,
    out: str | Path,
    model: str,
    langs: Iterable[str],
    source_lang: str = "en",
    batch_size: int = 32,
    device: str = "auto",
    max_new_tokens: int = 256,
    num_beams: int = 1,
    show_progress: bool = True,
    *,
    group: ProcessGroup,
) -> dict[str, Any]:
    """Entry point of ``dcclip shards translate`` (one process or a torchrun rank, in ``group``'s process group)."""
    if batch_size < 1 or max_new_tokens < 1 or num_beams < 1:
        raise TranslateError("--batch-size, --max-new-tokens and --num-beams must be >= 1")
    if device == "cuda" and not torch.cuda.is_available():
        raise TranslateError("--device cuda but no CUDA device is available (use --device auto or cpu)")
    options = TranslateOptions(
        str(shards), model, tuple(langs), source_lang, batch_size, max_new_tokens, num_beams, device
    )
    env = group.init_distributed(device)
    try:
        return translate_shard_set(options, Path(out), env, group, show_progress)
    finally:
        group.shutdown_distributed()
