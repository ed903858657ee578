"""The ``attnctl`` command (also ``python -m attnctl``): a thin front end over the batch runner and the UI.

Subcommands: ``generate`` (batch images and videos), ``parse`` (the phrases structured guidance would use),
``ui`` (the Gradio app). Input is validated here, at the edge, and errors are printed as one line a person
can act on. Exit codes: 0 all good, 1 some items failed (the others were written), 2 usage or setup error
(nothing was generated), 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from attnctl import __version__

from . import generate, parse, ui
from .common import EXIT_INTERRUPTED, EXIT_USAGE, quiet_import_notices


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; each sets ``run``, a function of the parsed args."""
    parser = argparse.ArgumentParser(
        prog="attnctl",
        description="Training-free attention control for diffusion models: batch generation, phrase parsing, UI.",
    )
    parser.add_argument("--version", action="version", version=f"attnctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (generate, parse, ui):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    quiet_import_notices()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's own usage errors (code 2), --help and --version (code 0)
        return int(exit_.code or 0)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:  # bad input, or a folder that cannot be created or written
        print(f"attnctl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"attnctl {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
