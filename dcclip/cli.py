"""The ``dcclip`` command: parse arguments, build a config, call one library function. Nothing else lives here."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dcclip import __version__

if TYPE_CHECKING:
    from dcclip.data.shards import CaptionFormat

log = logging.getLogger("dcclip")

# Exceptions that mean "the user's input is wrong": printed as one line, no traceback.
USAGE_EXIT = 2
INPUT_EXIT = 1
# How --labels splits (dcclip.runtime.labels.split_labels, shared with /v1/classify and the page).
LABEL_RULE = "commas (, ， 、 ،) and newlines"
# A missing module -> the extra that installs it, so `pip install dcclip` users learn what to add.
EXTRAS = {
    "serve": ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic", "anyio"),
    "train": (
        "torch",
        "torchvision",
        "open_clip",
        "timm",
        "transformers",
        "webdataset",
        "safetensors",
        "onnx",
        "onnxscript",
        "tqdm",
        "matplotlib",
        "yaml",
        "sklearn",
        "fsspec",
        "sentencepiece",
    ),
    "index": ("faiss",),
    "browser": ("selenium",),
}


def _cmd_world(args: argparse.Namespace) -> int:
    from dcclip.data.world import generate_world

    summary = generate_world(
        Path(args.out),
        train_samples=args.train_samples,
        seed=args.seed,
        eval_samples=args.eval_samples,
        image_size=args.image_size,
        shard_size=args.shard_size,
        progress=True,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_shards_build(args: argparse.Namespace) -> int:
    from dcclip.data.shard_build import build_shards, refuse_empty

    manifest = build_shards(
        args.source_kind,
        args.src,
        Path(args.out),
        max_count=args.max_count,
        max_size_mb=args.max_size,
        max_side=args.max_side,
        source_lang=_build_caption_lang(args),
        langs=_split_list(args.langs),
        image_column=args.image_column,
        lang_field=args.lang_field or "",
        max_samples=args.max_samples,
    )
    refuse_empty(manifest, args.src, Path(args.out))
    skipped = len(manifest["skipped"])
    print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards -> {args.out}; skipped {skipped}")
    for item in manifest["skipped"][:20]:
        print(f"  skipped {item['key']} ({item['source']}): {item['reason']}")
    if skipped > 20:
        print(f"  ... {skipped - 20} more in {Path(args.out) / 'manifest.json'}")
    return 0


def _build_caption_lang(args: argparse.Namespace) -> str:
    """--caption-lang, else en for folder/csv/jsonl rows; a WebDataset's .txt captions get no silent English."""
    if args.caption_lang:
        return args.caption_lang
    return "en" if args.source_kind != "wds" or args.lang_field else ""


def _cmd_shards_validate(args: argparse.Namespace) -> int:
    from dcclip.data.shard_validate import validate_shards

    report = validate_shards(_shards_arg(args), fmt=_caption_format(args))
    print(report.format_table())
    return 0 if report.ok else INPUT_EXIT


def _cmd_shards_inspect(args: argparse.Namespace) -> int:
    from dcclip.data.shard_inspect import format_inspect, inspect_shards

    sheet = Path(args.contact_sheet) if args.contact_sheet else None
    stats = inspect_shards(_shards_arg(args), contact_sheet=sheet, n=args.n, fmt=_caption_format(args))
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_inspect(stats))
    return INPUT_EXIT if stats["errors"] else 0


def _cmd_shards_translate(args: argparse.Namespace) -> int:
    from dcclip.data.translate import run
    from dcclip.engine import distributed

    summary = run(
        args.shards, args.out, args.model, _split_list(args.langs) or [], source_lang=args.caption_lang,
        batch_size=args.batch_size, device=args.device, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        group=distributed,
    )  # fmt: skip
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dcclip.data.shards import iter_captions
    from dcclip.models.tokenizers import train_tokenizer

    captions = iter_captions(args.shards, _split_list(args.langs), _caption_format(args))
    path = train_tokenizer(
        itertools.islice(captions, args.max_samples) if args.max_samples else captions,
        args.vocab_size,
        Path(args.out),
        args.algorithm,
        split_han=not args.keep_han_words,
    )
    print(f"tokenizer written to {path}")
    return 0


CATALOG_VOCAB = 32000  # the vocabulary students' parameter counts assume (a `dcclip tokenizer train` size)
CATALOG_EMBED = 512  # the embed dim a student sized "teacher" is counted at (ViT-B/32's)


def _model_params(name: str, kind: str, cfg: dict) -> int | None:
    """Parameters of an architecture, built on torch's meta device (no memory, no weights); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    with torch.device("meta"):
        if kind == "student":
            from dcclip.models.students import build_student

            model = build_student(name, embed_dim=CATALOG_EMBED, vocab_size=CATALOG_VOCAB)
        else:
            import open_clip

            model = open_clip.CLIP(**cfg)
    return sum(p.numel() for p in model.parameters())


def _model_row(name: str, kind: str) -> dict[str, object]:
    """One architecture's family, image size, embed dim and parameters, from its JSON."""
    from dcclip.models.registry import get_model_config

    cfg = get_model_config(name, kind)
    if kind == "student":
        image, text = cfg["image"], cfg["text"]
        family = f"timm:{image['timm_model']} + {text['arch']} {text['num_layers']}x{text['hidden_size']}"
        size, dim = image["image_size"], cfg.get("embed_dim")
    else:
        vision = cfg.get("vision_cfg", {})
        trunk = vision.get("timm_model_name") or ("resnet" if isinstance(vision.get("layers"), list) else "vit")
        family, size, dim = f"open_clip:{trunk}", vision.get("image_size"), cfg.get("embed_dim")
    return {"name": name, "kind": kind, "family": family, "image_size": size, "embed_dim": dim,
            "params": _model_params(name, kind, cfg)}  # fmt: skip


def _format_models(rows: list[dict[str, object]]) -> str:
    """The `models list` table; student parameters assume a 32k vocabulary and a 512-d embedding."""
    head = f"{'name':<20} {'kind':<8} {'params':>8} {'image':>6} {'embed':>7}  family"
    lines = [head]
    for row in rows:
        params = f"{row['params'] / 1e6:.1f}M" if row["params"] else "-"
        lines.append(f"{row['name']:<20} {row['kind']:<8} {params:>8} {row['image_size']!s:>6} "
                     f"{row['embed_dim']!s:>7}  {row['family']}")  # fmt: skip
    lines.append(f"(students counted with a {CATALOG_VOCAB}-piece tokenizer; embed 'teacher' = the teacher's, "
                 f"counted at {CATALOG_EMBED})")  # fmt: skip
    return "\n".join(lines)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from dcclip.models.registry import KINDS, list_models

    kinds = [args.kind] if args.kind else list(KINDS)
    if args.names:
        print("\n".join(name for kind in kinds for name in list_models(kind)))
        return 0
    print(_format_models([_model_row(name, kind) for kind in kinds for name in list_models(kind)]))
    return 0


def _run_config(args: argparse.Namespace, extra: list[str] | None = None):
    """The run's config: YAML, then the command's flags (--shards, --caption-lang...), then KEY=VALUE overrides."""
    from dcclip.config import load_config

    flags = {"data.train": args.shards, "data.caption_lang": args.caption_lang, "data.lang_field": args.lang_field}
    given = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, [*(extra or []), *given, *args.overrides])


def _print_config(cfg: object) -> int:
    """--print-config: the resolved config as YAML (every key, with its value), then exit."""
    import yaml

    from dcclip.config import to_dict

    print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from dcclip.stages.distill import run

    cfg = _run_config(args, ["stage=distill"])
    if args.print_config:
        return _print_config(cfg)
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def _align_config_hint(config: str | None) -> str:
    """Which shipped stage-2 config to use: the -align one beside a stage-1 config, else all of them."""
    from dcclip.configs import CONFIG_DIR

    shipped = sorted(path.stem for path in CONFIG_DIR.glob("*-align.yaml"))
    sibling = f"{Path(config).stem}-align" if config else ""
    if sibling in shipped:
        return f"use its stage-2 config: dcclip align --config {sibling}"
    return f"give a stage-2 config: dcclip align --config {' | '.join(shipped)} (the toy world: demo-align)"


def _cmd_align(args: argparse.Namespace) -> int:
    from dcclip.config import ConfigError
    from dcclip.stages.align import run

    extra = ["stage=align"] + ([f"train.init={args.checkpoint}"] if args.checkpoint else [])
    cfg = _run_config(args, extra)
    if args.print_config:
        return _print_config(cfg)
    if cfg.loss.contrastive <= 0:
        what = f"{args.config} is a stage-1 config" if args.config else "no --config given"
        raise ConfigError(f"stage 2 needs loss.contrastive > 0 and {what}; {_align_config_hint(args.config)}")
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_cache_teacher(args: argparse.Namespace) -> int:
    from dcclip.stages.cache_teacher import run

    extra = [f"teacher.spec={args.teacher}"] if args.teacher else []
    cfg = _run_config(args, extra)
    if args.print_config:
        return _print_config(cfg)
    summary = run(cfg, args.out, max_samples=args.max_samples)
    print(json.dumps(summary, indent=2))
    if summary["shards_failed"]:
        print(f"{summary['shards_failed']} shard(s) could not be read; run the same command again to finish them")
        return 1
    return 0


def _cmd_teacher_train_demo(args: argparse.Namespace) -> int:
    from dcclip.demo.teacher import TeacherRecipe, train_demo_teacher

    steps = {"image_steps": args.image_steps, "text_steps": args.text_steps}
    recipe = TeacherRecipe(seed=args.seed, **{k: v for k, v in steps.items() if v is not None})
    summary = train_demo_teacher(Path(args.world), Path(args.out), recipe)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from dcclip.eval.distributed import is_main
    from dcclip.eval.report import console_report, run_eval

    _torch_threads(args.threads)
    report = run_eval(
        args.eval_task,
        [_eval_model(ref, args.precision, args.threads) for ref in args.model],
        args.dataset,
        _split_list(args.langs),
        Path(args.out),
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        device=args.device,
        names=_split_list(args.names),
        teacher_text=args.teacher_text or "",
    )
    if is_main():  # under torchrun every rank holds the report; one prints it
        print(console_report(report))
    return 0


def _torch_threads(threads: int | None) -> None:
    """--threads for the torch models of an eval (checkpoints, teachers); bundles take it in _eval_model."""
    if threads is None:
        return
    try:
        import torch
    except ImportError:  # a bundle-only eval on the core install
        return
    torch.set_num_threads(threads)


def _eval_model(ref: str, precision: str | None, threads: int | None) -> object:
    """A bundle directory opened at --precision with --threads; any other reference (or BUNDLE@int8) as given."""
    if (precision is None and threads is None) or not (Path(ref) / "manifest.json").is_file():
        return ref
    from dcclip.eval.models import OnnxEvalModel
    from dcclip.runtime.bundle import load_bundle_model

    model = OnnxEvalModel(ref, precision=precision)
    if threads is not None:  # reopen its sessions with the thread count; the name and ref stay
        model.runtime = load_bundle_model(Path(ref), precision, intra_op_num_threads=threads)
    return model


def _cmd_export(args: argparse.Namespace) -> int:
    from dcclip.export.bundle import export_bundle
    from dcclip.export.precision import TimingPlan, choice_table

    manifest = export_bundle(
        Path(args.checkpoint),
        Path(args.out),
        precision=args.precision,
        calib_shards=args.shards,
        eval_set=[Path(p) for p in args.eval_set] if args.eval_set else None,
        min_agreement=args.min_agreement,
        timing=TimingPlan(batches=tuple(args.time_batch)) if args.time_batch else None,
        exporter=args.exporter,
        license=args.license,
    )
    print(
        json.dumps({"bundle": args.out, "precisions": manifest["precisions"], "parity": manifest["parity"]}, indent=2)
    )
    if "precision_choice" in manifest:
        print(choice_table(manifest["precision_choice"]))
    return 0


def _cmd_target(args: argparse.Namespace) -> int:
    from dcclip.export.targets import build_target

    if args.images and args.target != "web":
        raise SystemExit(f"dcclip target {args.target}: --images is for the web target only")
    options = {"images": Path(args.images)} if args.images else {}
    summary = build_target(args.target, Path(args.bundle), Path(args.out), **options)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from dcclip.export.card import update_card

    manifest = update_card(Path(args.bundle), Path(args.report), _split_list(args.names))
    print(
        json.dumps({"bundle": args.bundle, "evaluation": manifest["card"]["evaluation"]}, indent=2, ensure_ascii=False)
    )
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from dcclip.runtime.classifier import ZeroShotClassifier
    from dcclip.runtime.labels import split_labels

    labels = split_labels(args.labels)
    classifier = ZeroShotClassifier.from_bundle(
        args.bundle, precision=args.precision, threads=args.threads, allow_unsealed=args.allow_unsealed
    )
    results = classifier.classify(args.images, labels, lang=args.lang, top_k=args.top_k)
    if args.json:
        payload = [
            {"image": image, "labels": [{"label": label, "probability": p} for label, p in ranked]}
            for image, ranked in zip(args.images, results, strict=True)
        ]
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return 0
    for image, ranked in zip(args.images, results, strict=True):
        print(image)
        for label, probability in ranked:
            print(f"  {probability:7.2%}  {label}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dcclip.serve import serve

    serve(
        Path(args.bundle),
        host=args.host,
        port=args.port,
        workers=args.workers,
        precision=args.precision,
        threads=args.threads,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        ui=not args.no_ui,
        index=Path(args.index) if args.index else None,
        request_timeout=args.request_timeout,
        allow_unsealed=args.allow_unsealed,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dcclip.demo import DemoSettings, main_entry

    knobs = (
        "train_samples", "eval_samples", "teacher_image_steps", "teacher_text_steps", "distill_steps", "align_steps",
    )  # fmt: skip
    given = {name: getattr(args, name) for name in knobs if getattr(args, name) is not None}
    settings = DemoSettings(out=Path(args.out), **given)
    return main_entry(settings, fresh=args.fresh)


def _cmd_index_build(args: argparse.Namespace) -> int:
    from dcclip.search import build_index

    summary = build_index(
        args.bundle,
        args.images,
        args.out,
        args.precision,
        args.batch_size,
        progress=not args.no_progress,
        ann=args.ann,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_index_add(args: argparse.Namespace) -> int:
    from dcclip.search import add_to_index

    ann = True if args.ann else False if args.no_ann else None
    summary = add_to_index(
        args.index,
        args.images,
        args.bundle,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        ann=ann,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dcclip.search import search_index

    hits = search_index(
        args.index,
        args.text,
        args.lang,
        args.top_k,
        args.bundle,
        args.templates,
        exact=args.exact,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps([asdict(hit) for hit in hits], indent=2, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>7}  {'id':>7}  source")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.score:7.4f}  {hit.id:>7}  {hit.source}")
    return 0


def _positive_int(text: str) -> int:
    """argparse type for counts such as --threads: an integer >= 1 (-1 or 0 were accepted and passed on)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


UNSEALED_HELP = "load a format-1/2 bundle whose manifest has no seal (its fields are then not verified)"
THREADS_HELP = "onnxruntime intra-op threads (default: onnxruntime's choice, one per core)"
PRECISION_HELP = "fp32 or int8 (default: as the bundle's manifest recommends)"
MAX_SAMPLES_HELP = "read at most this many samples of the source in all, for a dry run (default: all)"
CAPTION_LANG_HELP = "language of single-caption samples (img2dataset's KEY.txt), e.g. en (default: unset)"
LANG_FIELD_HELP = "KEY.json field naming each .txt caption's language, e.g. LANGUAGE (default: unset)"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        shown = bool(action.option_strings) and not unset
        if text == argparse.SUPPRESS or not shown or "default" in text.lower():
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """dcclip's parser: defaults in every --help; subcommands inherit the class, hence the formatter."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


class RenamedOption(argparse.Action):
    """An old spelling kept for a release: stores into the new option's dest, hidden from --help, names the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: object) -> None:
        self.new = new
        kwargs.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None):
        log.warning("%s is now %s; the old name goes in the next release", option_string, self.new)
        if self.nargs == 0:
            values = self.const
        setattr(namespace, self.dest, values)


def _renamed(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: object) -> None:
    """Keep ``old`` working as a hidden alias of ``new`` (same dest) for a release."""
    p.add_argument(old, dest=dest, action=RenamedOption, new=new, **kwargs)


def _split_list(text: str | None) -> list[str] | None:
    """Comma-separated names (languages, model names), trimmed; None when absent."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _caption_format(args: argparse.Namespace) -> CaptionFormat:
    """How single-caption samples (img2dataset's KEY.txt) give their language, from --caption-lang / --lang-field."""
    from dcclip.data.shards import CaptionFormat

    return CaptionFormat(caption_lang=args.caption_lang or "", lang_field=args.lang_field or "")


def _add_caption_format(p: argparse.ArgumentParser) -> None:
    """--caption-lang and --lang-field: the one spelling of a single-language shard's caption language."""
    p.add_argument("--caption-lang", default=None, help=CAPTION_LANG_HELP)
    p.add_argument("--lang-field", default=None, help=LANG_FIELD_HELP)


def _add_shards_source(p: argparse.ArgumentParser) -> None:
    """--shards, with the positional spelling of older releases kept (hidden)."""
    p.add_argument(
        "--shards",
        default=None,
        help="shard directory, tar, brace pattern or URL (https://, pipe:, s3://); "
        "required (the bare positional of older releases still works)",
    )
    p.add_argument("dir", nargs="?", default=None, help=argparse.SUPPRESS)
    p.set_defaults(parser=p)


def _shards_arg(args: argparse.Namespace) -> str:
    """The shard source of validate/inspect: --shards, else the old positional; a usage error without either."""
    if args.shards and args.dir:
        args.parser.error("give the shards once: --shards SRC")
    if not (args.shards or args.dir):
        args.parser.error("the following arguments are required: --shards")
    return args.shards or args.dir


def _add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="generate the multilingual toy world (training shards + eval sets)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train-samples", type=int, default=10000, help="training samples")
    p.add_argument("--eval-samples", type=int, default=500, help="images per classification eval set")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--image-size", type=int, default=128, help="side of the stored images in pixels")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per training shard")
    p.set_defaults(func=_cmd_world)


def _add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="build, validate and inspect WebDataset shards")
    shards = p.add_subparsers(dest="shards_command", required=True, metavar="{build,validate,inspect,translate}")

    b = shards.add_parser("build", help="images + multilingual captions -> WebDataset shards + manifest.json")
    b.add_argument(
        "--from", dest="source_kind", required=True, choices=["folder", "csv", "jsonl", "wds"], help="what src is"
    )
    b.add_argument("src", help="source folder, CSV file, JSONL file, or (wds) any shard source: folder, pattern, URL")
    b.add_argument("--out", required=True, help="output shard directory")
    b.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    b.add_argument("--max-size", type=float, default=256.0, help="MB per shard")
    b.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="downscale images whose longer side exceeds this (default: keep the size)",
    )
    b.add_argument("--max-samples", type=_positive_int, default=None, help=MAX_SAMPLES_HELP)
    b.add_argument(
        "--caption-lang",
        default=None,
        help="language of .txt captions, and of the source caption of rows that do not name one (default: en for "
        "folder/csv/jsonl; wds: unset, so .txt captions need it, or en as the fallback of --lang-field)",
    )
    _renamed(b, "--source-lang", "--caption-lang", "caption_lang")
    b.add_argument("--langs", default=None, help="comma-separated caption columns/fields (default: detect)")
    b.add_argument("--image-column", default="image", help="CSV column / JSONL field holding the image path")
    b.add_argument("--lang-field", default=None, help="wds: " + LANG_FIELD_HELP)
    b.set_defaults(func=_cmd_shards_build)

    v = shards.add_parser("validate", help="decode every image and parse every caption; non-zero exit if any is bad")
    _add_shards_source(v)
    _add_caption_format(v)
    v.set_defaults(func=_cmd_shards_validate)

    i = shards.add_parser("inspect", help="counts per language, sizes, caption lengths; optional contact sheet")
    _add_shards_source(i)
    _add_caption_format(i)
    i.add_argument(
        "--contact-sheet", default=None, help="write a PNG grid of samples with captions here (default: none)"
    )
    i.add_argument("-n", type=int, default=16, help="samples on the contact sheet")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    i.set_defaults(func=_cmd_shards_inspect)

    t = shards.add_parser("translate", help="add machine-translated captions (MarianMT, M2M100, NLLB); resumable")
    t.add_argument("--shards", required=True, help="source shard directory (or tar / brace pattern)")
    t.add_argument("--out", required=True, help="output shard directory (same shard names, captions added)")
    t.add_argument("--model", required=True, help="translation model: a local directory, or a hub name when online")
    t.add_argument("--langs", required=True, help="comma-separated target languages, e.g. zh,ja (or zh=zho_Hant)")
    t.add_argument("--caption-lang", default="en", help="caption language to translate from")
    _renamed(t, "--source-lang", "--caption-lang", "caption_lang")
    t.add_argument("--batch-size", type=int, default=32, help="captions per generate call")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    t.add_argument("--max-new-tokens", type=int, default=256, help="longest translation in tokens")
    t.add_argument("--num-beams", type=int, default=1, help="beam search width (1 = greedy)")
    t.set_defaults(func=_cmd_shards_translate)


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="multilingual tokenizers")
    tok = p.add_subparsers(dest="tokenizer_command", required=True, metavar="{train}")
    t = tok.add_parser("train", help="train a multilingual tokenizer on the captions of shards")
    t.add_argument("--shards", required=True, help="shard directory, tar, brace pattern or URL")
    t.add_argument("--vocab-size", type=int, required=True, help="pieces to learn (32000 keeps a student small)")
    _add_caption_format(t)
    t.add_argument("--out", required=True, help="output directory for tokenizer.json")
    t.add_argument(
        "--algorithm",
        choices=["bpe", "unigram"],
        default="bpe",
        help="bpe, or unigram (its trainer keeps far fewer pieces than asked on short captions)",
    )
    t.add_argument(
        "--keep-han-words",
        action="store_true",
        help="let pieces span several Han ideographs (default: each one is its own piece, as in multilingual BERT)",
    )
    t.add_argument("--langs", default=None, help="comma-separated languages to train on (default: all)")
    t.add_argument("--max-samples", type=_positive_int, default=None, help=MAX_SAMPLES_HELP)
    t.set_defaults(func=_cmd_tokenizer_train)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model architectures shipped as JSON configs")
    models = p.add_subparsers(dest="models_command", required=True, metavar="{list}")
    m = models.add_parser("list", help="registered architectures: family, image size, embed dim, parameters")
    m.add_argument("--kind", choices=["student", "teacher"], default=None, help="one kind (default: both)")
    m.add_argument("--names", action="store_true", help="print the bare names only")
    m.set_defaults(func=_cmd_models_list)


def _shipped_configs() -> str:
    """The shipped run configs, for --help."""
    from dcclip.configs import CONFIG_DIR

    return ", ".join(sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")))


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--config, the shard flags every command shares, --print-config and the dotted overrides."""
    p.add_argument(
        "--config",
        default=None,
        help=f"YAML run config: a path, or a shipped one ({_shipped_configs()}) (default: none, the built-in defaults)",
    )
    p.add_argument("--shards", default=None, help="training shards (sets data.train; default: the config's)")
    p.add_argument(
        "--caption-lang",
        default=None,
        help=CAPTION_LANG_HELP.replace("unset", "the config's") + " (sets data.caption_lang)",
    )
    p.add_argument(
        "--lang-field", default=None, help=LANG_FIELD_HELP.replace("unset", "the config's") + " (sets data.lang_field)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. optim.lr=3e-4 (default: none; --print-config lists every key)",
    )


def _add_stages(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("distill", help="stage 1: distil a small multilingual student from the teacher")
    _add_run_arguments(d)
    d.set_defaults(func=_cmd_distill)

    a = sub.add_parser("align", help="stage 2: contrastive alignment of a stage-1 student over all languages")
    a.add_argument(
        "--checkpoint",
        default=None,
        help="stage-1 checkpoint or run directory to start from (sets train.init; default: the config's)",
    )
    _renamed(a, "--init", "--checkpoint", "checkpoint")
    _add_run_arguments(a)
    a.set_defaults(func=_cmd_align)

    c = sub.add_parser("cache-teacher", help="run the teacher once over shards and store its features")
    c.add_argument("--out", required=True, help="output directory for the feature shards + teacher.json")
    c.add_argument("--teacher", default=None, help="teacher spec (sets teacher.spec; default: the config's)")
    c.add_argument("--max-samples", type=_positive_int, default=None, help=MAX_SAMPLES_HELP)
    _add_run_arguments(c)
    c.set_defaults(func=_cmd_cache_teacher)


def _add_teacher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="teacher utilities")
    teacher = p.add_subparsers(dest="teacher_command", required=True, metavar="{train-demo}")
    t = teacher.add_parser("train-demo", help="train the English-only demo teacher on the toy world")
    t.add_argument("--world", required=True, help="toy world directory (from `dcclip world`)")
    t.add_argument("--out", required=True, help="output directory (an open_clip local-dir checkpoint)")
    t.add_argument("--image-steps", type=int, help="phase 1, image tower on the world's labels (default 1400)")
    t.add_argument("--text-steps", type=int, help="phase 2, text tower against the locked image tower (default 80)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.set_defaults(func=_cmd_teacher_train_demo)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="zero-shot, retrieval and cross-lingual alignment evaluation per language")
    from dcclip.eval.registry import TASKS

    tasks = p.add_subparsers(dest="eval_task", required=True, metavar="{" + ",".join(TASKS) + "}")
    for name, task in TASKS.items():
        t = tasks.add_parser(name, help=task.help)
        t.add_argument(
            "--model",
            action="append",
            required=True,
            help="a student checkpoint or run dir, a teacher spec (openclip:..., hf:...) or a bundle dir; "
            "repeat to compare",
        )
        t.add_argument("--dataset", required=True, help="clip_benchmark WDS directory or URL, or ImageFolder")
        t.add_argument("--langs", default=None, help="comma-separated languages (default: all the dataset has)")
        t.add_argument("--out", required=True, help="report directory (report.json, report.md, charts)")
        t.add_argument(
            "--names",
            default=None,
            help="comma-separated labels for the models in the report (default: from their paths)",
        )
        t.add_argument(
            "--teacher-text",
            default=None,
            help="multilingual text teacher for teacher specs (mclip:DIR) (default: none)",
        )
        t.add_argument("--precision", choices=["fp32", "int8"], default=None, help="bundles only: " + PRECISION_HELP)
        t.add_argument(
            "--threads",
            type=_positive_int,
            default=None,
            help="CPU threads for torch and onnxruntime (default: their own choice)",
        )
        t.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
        t.add_argument("--max-samples", type=_positive_int, default=None, help=MAX_SAMPLES_HELP)
        t.add_argument("--device", default="cpu", help="cpu, cuda or auto (under torchrun: each rank's own GPU)")
        t.set_defaults(func=_cmd_eval)


def _add_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a student checkpoint to an ONNX bundle (fp32 and/or int8), validated")
    e.add_argument("--checkpoint", required=True, help="student checkpoint or run directory")
    e.add_argument("--out", required=True, help="bundle directory to write")
    e.add_argument(
        "--precision",
        choices=["fp32", "int8", "both", "auto"],
        default="both",
        help="auto: export both, time them per tower here and record which one the runtime loads by default",
    )
    e.add_argument(
        "--time-batch",
        type=int,
        action="append",
        default=None,
        help="batch size --precision auto times (repeat for several; default 1 and 32)",
    )
    e.add_argument(
        "--shards",
        default=None,
        help="shards whose images calibrate int8 and check parity (default: none, the built-in images)",
    )
    _renamed(e, "--calib-shards", "--shards", "shards")
    e.add_argument(
        "--eval-set",
        action="append",
        default=None,
        help="clip_benchmark-layout set for the zero-shot agreement checks (repeat for several; default: none)",
    )
    e.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="top-1 agreement an int8 tower needs with fp32 to ship int8 (default 0.97); below it the tower ships fp32",
    )
    e.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="auto: torch's dynamo exporter, TorchScript where dynamo fails or misses parity; torchscript is several "
        "times faster on small models (deprecated by torch); every graph is checked against torch the same way",
    )
    e.add_argument("--license", default=None, help="license id for MODEL_CARD.md, e.g. apache-2.0 (default: unset)")
    e.set_defaults(func=_cmd_export)


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    _add_export(sub)
    from dcclip.export.targets import TARGETS  # no heavy import: the table is plain data

    g = sub.add_parser("target", help="build an edge target (web page, ORT mobile) from a bundle, parity checked")
    g.add_argument("target", choices=sorted(TARGETS), help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    g.add_argument("--bundle", required=True, help="bundle directory written by `dcclip export`")
    g.add_argument("--out", required=True, help="directory to write the target into")
    g.add_argument(
        "--images", default=None, help="web only: a folder of images embedded now, shipped for search (default: none)"
    )
    g.set_defaults(func=_cmd_target)

    k = sub.add_parser("card", help="refresh a bundle's MODEL_CARD.md from an eval or demo report.json (re-sealed)")
    k.add_argument("--bundle", required=True, help="bundle directory written by `dcclip export`")
    k.add_argument("--report", required=True, help="report.json of `dcclip eval zeroshot` or of `dcclip demo`")
    k.add_argument(
        "--names",
        default=None,
        help="comma-separated report model names that are this bundle (default: found from the bundle)",
    )
    _renamed(k, "--model", "--names", "names")
    k.set_defaults(func=_cmd_card)
    _add_classify(sub)
    _add_serve(sub)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("classify", help="zero-shot classify images with a bundle (no torch needed)")
    c.add_argument("--bundle", required=True, help="bundle directory written by `dcclip export`")
    c.add_argument("images", nargs="+", help="image files")
    c.add_argument("--labels", required=True, help=f'labels, split on {LABEL_RULE}, e.g. "猫,狗,鸟"')
    c.add_argument("--lang", default="en", help="language of the labels (picks the prompt templates)")
    c.add_argument("-k", "--top-k", dest="top_k", type=_positive_int, default=5, help="labels shown per image")
    c.add_argument("--precision", choices=["fp32", "int8"], default=None, help=PRECISION_HELP)
    c.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument("--allow-unsealed", action="store_true", help=UNSEALED_HELP)
    c.set_defaults(func=_cmd_classify)


def _serve_defaults() -> dict[str, object]:
    """The defaults of ``dcclip.serve.serve`` itself, so the command and the function can never disagree."""
    import inspect

    from dcclip.serve import server  # plain module: no fastapi/uvicorn import until serve() runs

    return {name: p.default for name, p in inspect.signature(server.serve).parameters.items()}


def _add_serve(sub: argparse._SubParsersAction) -> None:
    default = _serve_defaults()
    s = sub.add_parser("serve", help="HTTP zero-shot classification, embedding and search API (and web page)")
    s.add_argument("--bundle", required=True, help="bundle directory written by `dcclip export`")
    s.add_argument("--host", default=default["host"], help="address to listen on")
    s.add_argument("--port", type=int, default=default["port"], help="port to listen on")
    s.add_argument("--workers", type=_positive_int, default=default["workers"], help="uvicorn worker processes")
    s.add_argument("--precision", choices=["fp32", "int8"], default=default["precision"], help=PRECISION_HELP)
    s.add_argument(
        "--threads",
        type=_positive_int,
        default=default["threads"],
        help="onnxruntime threads per worker, 1 is best under load (default: onnxruntime's choice)",
    )
    s.add_argument(
        "--read-timeout",
        type=float,
        default=default["read_timeout"],
        help="seconds a client may stall mid-request before it is closed",
    )
    s.add_argument(
        "--max-connections",
        type=_positive_int,
        default=default["max_connections"],
        help="open connections before the server answers 503",
    )
    s.add_argument(
        "--index",
        default=default["index"],
        help="image index for POST /v1/search, built from the same bundle (default: none, search off)",
    )
    s.add_argument("--no-ui", action="store_true", help="do not serve the web page at / (the API only)")
    s.add_argument(
        "--request-timeout",
        type=float,
        default=default["request_timeout"],
        help="seconds a client may take to send a request's head+body",
    )
    s.add_argument("--allow-unsealed", action="store_true", help=UNSEALED_HELP)
    s.set_defaults(func=_cmd_serve)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the whole pipeline offline on the toy world, ending in a report")
    d.add_argument("--out", default="runs/demo", help="demo directory (re-runs reuse finished steps)")
    d.add_argument("--train-samples", type=int, help="toy-world training samples (default 6000)")
    d.add_argument("--eval-samples", type=int, help="images per eval set (default 900: 10 per shape class)")
    d.add_argument(
        "--teacher-image-steps", type=int, help="stand-in teacher, phase 1 (image tower) steps (default: the demo's)"
    )
    d.add_argument(
        "--teacher-text-steps", type=int, help="stand-in teacher, phase 2 (text tower) steps (default: the demo's)"
    )
    d.add_argument("--distill-steps", type=int, help="stage-1 steps (default: the demo's)")
    d.add_argument("--align-steps", type=int, help="stage-2 steps (default: the demo's)")
    d.add_argument("--fresh", action="store_true", help="start over instead of reusing finished steps")
    d.set_defaults(func=_cmd_demo)


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="an image index for text search: build it from images or shards, add to it")
    index = p.add_subparsers(dest="index_command", required=True, metavar="{build,add}")
    b = index.add_parser("build", help="embed every image of a folder or shard source (resumable; no torch needed)")
    b.add_argument("--bundle", required=True, help="bundle directory written by `dcclip export`")
    b.add_argument(
        "--images",
        required=True,
        help="an image file, a folder of images (recursive) or a shard source (dir, tar, URL)",
    )
    b.add_argument("--out", required=True, help="index directory to write (run again to resume a killed build)")
    b.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="precision of the image tower")
    b.add_argument("--ann", action="store_true", help="also build an approximate index (pip install 'dcclip[index]')")
    _add_index_run_arguments(b)
    b.set_defaults(func=_cmd_index_build)

    a = index.add_parser("add", help="append images not yet in the index (ids of the others never change)")
    a.add_argument("--index", required=True, help="index directory written by `dcclip index build`")
    a.add_argument("--images", required=True, help="an image file, a folder of images (recursive) or a shard source")
    a.add_argument("--bundle", default=None, help="default: the bundle the index was built with")
    ann = a.add_mutually_exclusive_group()
    ann.add_argument("--ann", action="store_true", help="build the approximate index (default: keep what there is)")
    ann.add_argument("--no-ann", action="store_true", help="drop the approximate index")
    _add_index_run_arguments(a)
    a.set_defaults(func=_cmd_index_add)

    s = sub.add_parser("search", help="the images of an index nearest to a text, in any of the bundle's languages")
    s.add_argument("--index", required=True, help="index directory written by `dcclip index build`")
    s.add_argument("text", help='what to look for, e.g. "红色的圆"')
    s.add_argument("--lang", default="en", help="language of the text")
    s.add_argument("-k", "--top-k", dest="top_k", type=_positive_int, default=10, help="number of images")
    s.add_argument("--bundle", default=None, help="default: the bundle the index was built with")
    s.add_argument(
        "--templates",
        action="append",
        default=None,
        help='a prompt template holding {c} (repeat for several; "default": the language\'s built-in ones; '
        "default: the text as typed)",
    )
    s.add_argument("--exact", action="store_true", help="exact search in numpy even when the index has an ANN")
    s.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_search)


def _add_index_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="images per image-tower run")
    p.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_world,
    _add_shards,
    _add_tokenizer,
    _add_models,
    _add_teacher,
    _add_stages,
    _add_eval,
    _add_deploy,
    _add_search,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each command module adds its own subcommand."""
    parser = Parser(
        prog="dcclip", description="Compress multilingual CLIP models for edge devices: distill, align, export, serve."
    )
    parser.add_argument("--version", action="version", version=f"dcclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe bad input (a path, a spec, a checkpoint), printed without a traceback."""
    errors: list[type[BaseException]] = [FileNotFoundError, ValueError, ImportError]
    known = {
        "dcclip.checkpoint": "CheckpointError",
        "dcclip.models.teachers": "TeacherLoadError",
        "dcclip.runtime.errors": "BundleError",
    }
    for module, name in known.items():
        loaded = sys.modules.get(module)  # a module never imported cannot have raised its error
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The dcclip extra that installs the missing module, if it is one of ours."""
    top = (exc.name or "").split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def configure_environment() -> None:
    """Offline by default: a missing hub file fails at once instead of after long retries."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dcclip`` console script and of ``python -m dcclip`` (torchrun)."""
    configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own messages at INFO; third-party libraries (open_clip logs every model build at INFO) only from WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dcclip").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from dcclip.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"dcclip {args.command}: config error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except ModuleNotFoundError as exc:
        extra = extra_for(exc)
        if extra is None or args.verbose:
            raise
        print(
            f'dcclip {args.command}: error: {exc.name} is not installed: pip install "dcclip[{extra}]"', file=sys.stderr
        )
        return INPUT_EXIT
    except user_errors() as exc:
        if args.verbose:
            raise
        print(f"dcclip {args.command}: error: {exc}", file=sys.stderr)
        return INPUT_EXIT


if __name__ == "__main__":
    sys.exit(main())
