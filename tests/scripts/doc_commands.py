"""The command lines a Markdown page shows, and whether each one parses with its script's parser.

Where commands are found: fenced code blocks (```, ```bash, ```sh, ```shell, ```console), indented
code blocks (4 spaces after a blank line) and inline code spans that start with `python` or `torchrun`
(a span may wrap across lines of its paragraph). A line ending in a backslash continues on the next.

What counts as a command of ours: `python X.py ...`, `python -m pkg.mod ...` and `torchrun [its options]
X.py ...`, anywhere in a shell line (after `&&`, `;`, `|` or environment assignments). `python -m`
of a module this repository does not hold is a third-party tool (pytest, pip) only when listed in
THIRD_PARTY; any other unknown script or module is reported, so a new command cannot be documented
without a parser to check it against.

How placeholders read: `<anything>` is one argument (a number or the first choice where the flag
wants one), `...` stands for a value after a flag that takes one and for "more flags" anywhere else,
`[--flag value]` is an optional part (checked as given), `a|b` lists alternatives and
`pkg.{a,b}` lists modules (each is checked); a module named by a placeholder (`benchmarks.<name>`)
is a family, not a command, and is skipped. A command that elides flags (`...`) or is only
mentioned inline need not give the required ones; every flag it does give must exist and parse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.scripts.cli_parsers import ROOT, build_parser, module_of_script

THIRD_PARTY = {"pytest", "pip", "venv", "tensorboard"}
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = "PLACEHOLDER"
INLINE = re.compile(r"`((?:\w+=\S+ +)*(?:python3?|torchrun) [^`]+)`")  # may start with OMP_NUM_THREADS=1


@dataclass(frozen=True)
class DocCommand:
    """One command line as the page shows it, and where."""

    file: str
    line: int
    text: str
    complete: bool = True  # False for a command only mentioned in a sentence (inline code)

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in a backslash joined with the next (line number of the first)."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        out.append((number, line))
    if pending is not None:
        out.append(pending)
    return out


def code_and_prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(code lines, prose lines), each as (1-based line number, text)."""
    code, prose, fence, previous_blank = [], [], None, True
    in_indented = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                fence = None
            elif fence in SHELL_FENCES:
                code.append((number, re.sub(r"^\$\s+", "", stripped)))
            previous_blank = False
            continue
        if stripped.startswith("```"):
            fence, in_indented = stripped[3:].strip().lower(), False
            continue
        if not stripped:  # a blank line ends a paragraph; an indented block may go on after it
            prose.append((number, line))
            previous_blank = True
            continue
        in_indented = line.startswith(("    ", "\t")) and (in_indented or previous_blank)
        (code if in_indented else prose).append((number, line))
        previous_blank = False
    return code, prose


def inline_commands(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """`python ...` spans of each paragraph, a span that wraps across lines joined into one."""
    found, paragraph = [], []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line.strip()))
            continue
        joined, starts = "", []
        for n, part in paragraph:
            starts.append((len(joined), n))
            joined += part + " "
        for m in INLINE.finditer(joined):
            found.append((max(n for offset, n in starts if offset <= m.start()), m.group(1).strip()))
        paragraph = []
    return found


def doc_commands(path: Path) -> list[DocCommand]:
    """Every command line of ours that the page shows (see the module docstring)."""
    code, prose = code_and_prose(path.read_text(encoding="utf-8"))
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    shown = [(n, line, True) for n, line in _join_continuations(code)]
    shown += [(n, span, False) for n, span in inline_commands(prose)]
    return [DocCommand(name, n, line.strip(), complete) for n, line, complete in sorted(shown)
            if re.search(r"\b(python3?|torchrun)\s", line)]


def _tokens(text: str) -> list[str]:
    text = re.sub(r"<[^<>]*>", PLACEHOLDER, text)  # <data YAML> -> one argument
    text = re.sub(r"\[(\s*--[^\[\]]*)\]", r"\1", text)  # [--half] [--split val] -> given
    return shlex.split(text, comments=True)


def _segments(tokens: list[str]) -> list[list[str]]:
    out, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(token)
    return [*out, current]


def targets_of(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """(module, its arguments) of a `python` or `torchrun` segment, one per module a `{a,b}` lists; none for
    other programs, third-party modules and families. Raises ValueError for a script or module of ours that
    does not exist."""
    while tokens and re.match(r"^\w+=", tokens[0]):  # OMP_NUM_THREADS=1 python ...
        tokens = tokens[1:]
    if not tokens or tokens[0] not in ("python", "python3", "torchrun"):
        return []
    rest = tokens[1:]
    if tokens[0] == "torchrun":  # its own options come before the script
        while rest and not (rest[0].endswith(".py") or rest[0] == "-m"):
            rest = rest[1:]
    if not rest or rest[0] == "-c":
        return []
    if rest[0] == "-m":
        if len(rest) < 2:
            raise ValueError("`python -m` without a module")
        if PLACEHOLDER in rest[1] or rest[1].split(".")[0] in THIRD_PARTY:
            return []
        return [(_checked_module(module), rest[2:]) for module in _braces(rest[1])]
    if not rest[0].endswith(".py"):
        return []  # python -V and the like
    scripts = _braces(rest[0])
    for script in scripts:
        if not (ROOT / script).is_file():
            raise ValueError(f"unknown script {script!r}: no such file in this repository")
    return [(module_of_script(script), rest[1:]) for script in scripts]


def _braces(name: str) -> list[str]:
    """`segment.{train,val}` -> segment.train, segment.val (one brace group, as the docs write it)."""
    m = re.search(r"\{([^{}]*)\}", name)
    return [name[:m.start()] + part + name[m.end():] for part in m.group(1).split(",")] if m else [name]


def _checked_module(module: str) -> str:
    path = ROOT / Path(*module.split("."))
    if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
        raise ValueError(f"unknown module {module!r}: not in this repository and not a known tool "
                         f"({', '.join(sorted(THIRD_PARTY))})")
    return module


def _takes_value(parser, option: str) -> bool:
    action = parser._option_string_actions.get(option)
    return action is not None and action.nargs != 0


def _placeholder_value(parser, option: str | None) -> str:
    """What `<...>` stands for after `option`: its first choice, a number for a numeric flag, else a word."""
    action = parser._option_string_actions.get(option or "")
    if action is not None and action.choices:
        return str(next(iter(action.choices)))
    if action is not None and action.type in (int, float):
        return "1"
    return PLACEHOLDER


def _optional_everything(parser) -> None:
    """Required flags, positionals and subcommands become optional (for elided or inline commands)."""
    for action in parser._actions:
        action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _optional_everything(sub)


def _variants(args: list[str]) -> list[list[str]]:
    """`val|test` alternatives: one argument list per alternative (the others at their first)."""
    alternatives = [(i, a.split("|")) for i, a in enumerate(args) if "|" in a and not a.startswith("-")]
    if not alternatives:
        return [args]
    out = []
    for i, options in alternatives:
        for option in options:
            variant = [a.split("|")[0] if "|" in a and not a.startswith("-") else a for a in args]
            variant[i] = option
            out.append(variant)
    return out


def parse_error(module: str, args: list[str], complete: bool = True) -> str | None:
    """The parser's own error message for these arguments, or None when they parse; an incomplete command
    (elided or inline) is not asked for the required flags."""
    parser = build_parser(module)
    if not complete:
        _optional_everything(parser)
    filled: list[str] = []
    for token in args:
        previous = filled[-1] if filled else None
        if token == "...":
            if previous and _takes_value(parser, previous):
                filled.append(_placeholder_value(parser, previous))
            continue
        filled.append(_placeholder_value(parser, previous) if token == PLACEHOLDER else token)
    for variant in _variants(filled):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(variant)
        except SystemExit as e:
            if e.code:
                return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else f"exit {e.code}"
    return None


def check_command(command: DocCommand) -> list[str]:
    """Problems of one shown command line: an unknown script or module, or arguments its parser refuses."""
    try:
        segments = _segments(_tokens(command.text))
    except ValueError as e:  # unbalanced quotes
        return [f"{command.where()}\n    cannot split into words: {e}"]
    problems = []
    for segment in segments:
        try:
            targets = targets_of(segment)
        except ValueError as e:
            problems.append(f"{command.where()}\n    {e}")
            continue
        for module, args in targets:
            try:
                error = parse_error(module, args, complete=command.complete and "..." not in args)
            except AssertionError as e:  # a command without build_parser()
                error = str(e)
            if error:
                problems.append(f"{command.where()}\n    {module}: {error}")
    return problems
