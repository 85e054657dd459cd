"""Find the repository's commands and their argparse parsers, for the help-text and README tests.

A command is any module of the repository with an `if __name__ == "__main__":` block (train.py,
`python -m d3n_ext.experiments.pipeline`, a benchmark, a converter). Each exposes `build_parser()`,
which builds its parser, plug-in flags included, and parses nothing; so a new script is found here
without being listed, and one without `build_parser()` fails the tests that use this module.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

from engine.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[2]
NOT_COMMANDS = {"tests", "runs", "datasets", "docs"}  # top-level folders whose files are not the project's commands
MAIN_BLOCK = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)


def command_modules() -> list[str]:
    """Dotted names of every module with a __main__ block (train, segment.train, benchmarks.deploy, ...)."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in NOT_COMMANDS or any(p.startswith(".") for p in parts):
            continue
        if MAIN_BLOCK.search(path.read_text(encoding="utf-8")):
            names.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return names


def module_of_script(script: str) -> str:
    """`train.py` or `segment/train.py` (as typed after `python`) -> its dotted module name."""
    return ".".join(Path(script).with_suffix("").parts)


def build_parser(module: str) -> argparse.ArgumentParser:
    """The module's parser, with the plug-ins of plugins.yaml loaded as the scripts load them."""
    load_plugins()
    builder = getattr(importlib.import_module(module), "build_parser", None)
    if builder is None:
        raise AssertionError(f"{module}: a command without build_parser(); add one that returns its "
                             "argparse parser without parsing, so its flags can be checked")
    return builder()


def walk_actions(parser: argparse.ArgumentParser,
                 prog: str) -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    """(command, its parser, action) for every argument, descending into subcommands (`extract_features all`);
    a subcommand itself comes as its one-line help in the listing (an action without help when it has none)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            yield prog, parser, action
            continue
        listed = {choice.dest: choice for choice in action._choices_actions}
        for name, sub in action.choices.items():
            yield prog, parser, listed.get(name) or argparse.Action([], dest=name, help=None)
            yield from walk_actions(sub, f"{prog} {name}")
