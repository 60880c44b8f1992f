"""Command-line interface: ``uca <command> ...`` (also ``python -m uca_model <command> ...``).

The commands live in :mod:`uca_model.commands` (one module each, collected in
:data:`~uca_model.commands.COMMANDS`); this module only turns them into an ``argparse`` parser and
runs the one asked for.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .commands import COMMANDS, Command, register

__all__ = ["Command", "COMMANDS", "register", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uca", description="Uncertainty-aware text-image person retrieval.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``uca`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
