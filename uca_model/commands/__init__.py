"""The ``uca`` commands, one module each: ``synth``, ``demo``, ``train``, ``eval``
(:mod:`.evaluate`), ``search``. Each module defines ``COMMAND``, a :class:`Command` (name, help
line, the function that declares its arguments, the function that runs it); :data:`COMMANDS`
collects them in the order ``uca --help`` lists them, and :mod:`uca_model.cli` builds the parser
from it. A new command is a new module here and one entry below.
"""

from __future__ import annotations

import argparse
from typing import Callable

from . import demo, evaluate, search, synth, train
from ._common import Command, ceiling_lines, format_metrics_table

__all__ = ["COMMANDS", "Command", "ceiling_lines", "format_metrics_table", "register"]

COMMANDS: dict[str, Command] = {c.name: c for c in (synth.COMMAND, demo.COMMAND, train.COMMAND, evaluate.COMMAND,
                                                     search.COMMAND)}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add (or replace) the subcommand ``name`` at run time (plug-ins, tests)."""
    COMMANDS[name] = Command(name, help, add_arguments, run)
