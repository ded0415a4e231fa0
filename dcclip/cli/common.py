"""Shared by the ``dcclip`` command's modules: exit codes, extras, and the argument helpers every command uses."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import TYPE_CHECKING

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


def _print_run_summary(summary: dict) -> None:
    """Print a training run's summary as JSON once: under torchrun only rank 0 (the rank that wrote the checkpoint)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))


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
