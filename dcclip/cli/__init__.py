"""The ``dcclip`` command: parse arguments, build a config, call one library function. Nothing else lives here.

``common`` holds exit codes and argument helpers, ``commands`` what each subcommand does, ``parser`` the parser.
"""

from __future__ import annotations

import logging
import os
import sys

from dcclip.cli.common import EXTRAS, INPUT_EXIT, USAGE_EXIT
from dcclip.cli.parser import build_parser

__all__ = ["build_parser", "main"]


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
