"""The ``dcclip`` argument parser: one ``_add_*`` function per command group, defaults shown in every --help."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dcclip import __version__
from dcclip.cli.commands import (
    _cmd_align,
    _cmd_cache_teacher,
    _cmd_card,
    _cmd_classify,
    _cmd_demo,
    _cmd_distill,
    _cmd_eval,
    _cmd_export,
    _cmd_index_add,
    _cmd_index_build,
    _cmd_models_list,
    _cmd_search,
    _cmd_serve,
    _cmd_shards_build,
    _cmd_shards_inspect,
    _cmd_shards_translate,
    _cmd_shards_validate,
    _cmd_target,
    _cmd_teacher_convert_mclip,
    _cmd_teacher_train_demo,
    _cmd_tokenizer_train,
    _cmd_world,
)
from dcclip.cli.common import (
    CAPTION_LANG_HELP,
    LABEL_RULE,
    LANG_FIELD_HELP,
    MAX_SAMPLES_HELP,
    PRECISION_HELP,
    THREADS_HELP,
    UNSEALED_HELP,
    Parser,
    _add_caption_format,
    _add_shards_source,
    _positive_int,
    _renamed,
)


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
    teacher = p.add_subparsers(dest="teacher_command", required=True, metavar="{train-demo,convert-mclip}")
    t = teacher.add_parser("train-demo", help="train the English-only demo teacher on the toy world")
    t.add_argument("--world", required=True, help="toy world directory (from `dcclip world`)")
    t.add_argument("--out", required=True, help="output directory (an open_clip local-dir checkpoint)")
    t.add_argument("--image-steps", type=int, help="phase 1, image tower on the world's labels (default 1400)")
    t.add_argument("--text-steps", type=int, help="phase 2, text tower against the locked image tower (default 80)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.set_defaults(func=_cmd_teacher_train_demo)

    m = teacher.add_parser(
        "convert-mclip", help="a published Multilingual-CLIP checkpoint (M-CLIP/...) -> an mclip: teacher directory"
    )
    m.add_argument("src", help="the downloaded checkpoint: config.json (modelBase, ...), weights, tokenizer files")
    m.add_argument("--out", required=True, help="output directory, used as teacher.text_spec=mclip:DIR")
    m.add_argument(
        "--base-config",
        default=None,
        help="the encoder's architecture: a directory or config.json, or a hub name in the local cache "
        "(default: the checkpoint's modelBase)",
    )
    m.set_defaults(func=_cmd_teacher_convert_mclip)


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
        "--batch-max",
        type=_positive_int,
        default=default["batch_max"],
        help="micro-batch the image tower: up to this many concurrent requests' images per call (default 1: off)",
    )
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=default["batch_wait_ms"],
        help="with --batch-max > 1: milliseconds a batch waits for requests still decoding (0-100)",
    )
    s.add_argument(
        "--threads",
        type=_positive_int,
        default=default["threads"],
        help="onnxruntime threads per worker (default: cores / concurrent model runs, 1 on 2 cores)",
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
