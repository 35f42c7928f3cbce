"""The ``fitchat`` command line.

Kept light on purpose: this module and the command modules it registers import no
llama_cpp, textual or huggingface_hub at import time, so ``fitchat --help`` is fast.
Each command module in ``fitchat.cli`` exposes ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from fitchat import __version__
from fitchat.errors import FitchatError
from fitchat.format import printable

COMMAND_MODULES: tuple[str, ...] = (
    "fitchat.cli.hw",
    "fitchat.cli.fit",
    "fitchat.cli.hub",
    "fitchat.cli.chat",
    "fitchat.cli.compare",
    "fitchat.cli.doctor",
    "fitchat.cli.serve",
    "fitchat.cli.worker",
)


#: Longest error message printed: enough for the message and its advice, not for a 250 MB value quoted in it.
ERROR_CHARS = 1000


def error_line(exc: BaseException) -> str:
    """An exception's message as the one line ``main`` prints: printable, bounded.

    Errors quote names, template messages and server answers; an escape sequence among them would
    retitle or clear the terminal, and a newline would break the one-line promise.
    """
    return printable(exc, ERROR_CHARS, one_line=True)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fitchat",
        description="See what your machine can run, pick a GGUF model that fits, download it and chat. "
        "With no command, opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"fitchat {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _open_tui(args: argparse.Namespace) -> int:
    from fitchat.tui.app import run_app

    return run_app()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fitchat`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", _open_tui)
    try:
        return int(func(args) or 0)
    except FitchatError as exc:
        print(f"fitchat: error: {error_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fitchat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("FITCHAT_DEBUG"):
            raise
        print(
            f"fitchat: internal error: {type(exc).__name__}: {error_line(exc)} (set FITCHAT_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
