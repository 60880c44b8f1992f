"""Command-line interface: ``uca <command> ...`` (also ``python -m uca_model <command> ...``).

The commands live in :mod:`uca_model.commands` (one module each, collected in
:data:`~uca_model.commands.COMMANDS`); this module only turns them into an ``argparse`` parser and
runs the one asked for.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Sequence

from .commands import COMMANDS, Command, register

__all__ = ["Command", "COMMANDS", "MODEL_EXTRA", "register", "build_parser", "main", "missing_model_extra"]

#: what ``pip install 'uca[model]'`` adds to the loss library: import name -> distribution name
MODEL_EXTRA = {"transformers": "transformers", "tokenizers": "tokenizers", "PIL": "pillow",
               "matplotlib": "matplotlib", "tqdm": "tqdm"}


def missing_model_extra() -> list[str]:
    """The distributions of the ``model`` extra that cannot be imported here (empty when installed)."""
    return [dist for name, dist in MODEL_EXTRA.items() if importlib.util.find_spec(name) is None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uca", description="Uncertainty-aware text-image person retrieval.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``uca`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    missing = missing_model_extra()
    if missing:
        print(f"uca: error: uca needs the model extra (not installed: {', '.join(missing)}): "
              "pip install 'uca[model]' (in a source checkout: pip install --no-build-isolation '.[model]')",
              file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
