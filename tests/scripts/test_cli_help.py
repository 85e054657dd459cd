"""Every flag of every command says what it does and what it is when not given.

The rule, checked on each argument of each parser (subcommands included; see cli_parsers.py for how
the commands are found):

- Every argument and every subcommand has a help text.
- A flag that takes a value shows its default in its help: either argparse's "%(default)s" (written
  "(default: %(default)s)", so the shown value is always the real one), or, when the stored value
  means nothing to a reader (None, '', [], False: "no weights", "the checkpoint's model"), the word
  "default" followed by what happens in words; a flag that must be given says "required" instead.
  "%(default)s" on such a sentinel is an error: it would print "None" or nothing.
- Exempt from showing a default: on/off switches (store_true, store_false, store_const, count: off
  unless given, which the switch itself says), --help, required arguments and positionals without a
  default, and internal flags hidden with help=argparse.SUPPRESS.
- Every help text renders (a stray "%" breaks `--help`).
"""

from __future__ import annotations

import argparse

import pytest

from tests.scripts.cli_parsers import build_parser, command_modules, walk_actions

SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
            argparse._CountAction, argparse._HelpAction, argparse._VersionAction)


def is_sentinel(default) -> bool:
    """None, False, '' or []: stored values that stand for "not given" rather than for a setting (0 is a setting)."""
    return default is None or default is False or (isinstance(default, (str, list, tuple)) and not default)


def help_problem(parser: argparse.ArgumentParser, action: argparse.Action) -> str | None:
    """What is wrong with one argument's help under the rule above, or None."""
    if action.help == argparse.SUPPRESS:
        return None
    if not (action.help or "").strip():
        return "has no help text"
    try:
        shown = parser._get_formatter()._expand_help(action)
    except (KeyError, TypeError, ValueError) as e:
        return f"help does not render ({type(e).__name__}: {e}); write a literal % as %%"
    if isinstance(action, SWITCHES) or not action.option_strings and action.default is None:
        return None
    if action.required:
        return None
    if "%(default)" in action.help and is_sentinel(action.default):
        return f"help shows the default as {action.default!r}; say in words what happens when it is not given"
    if "default" not in shown.lower() and "required" not in shown.lower():
        return "help does not show the default: add '(default: %(default)s)' or '(default: <what happens>)'"
    return None


def problems_of(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    """One line per argument that breaks the rule: `command --flag: what is wrong`."""
    out = []
    for command, owner, action in walk_actions(parser, prog):
        problem = help_problem(owner, action)
        if problem:
            out.append(f"{command} {'/'.join(action.option_strings) or action.dest}: {problem}")
    return out


def test_the_commands_are_found():
    """The scripts users run are all discovered (so the test below cannot pass by finding nothing)."""
    found = set(command_modules())
    expected = {"train", "val", "detect", "export", "extract_features", "train_distill", "segment.train",
                "segment.val", "segment.predict", "d3n_ext.experiments.pipeline", "d3n_ext.experiments.ablation",
                "d3n_ext.experiments.probe", "d3n_ext.experiments.model_table", "models.yolo", "data.synthetic",
                "data.scripts.neu_det"}
    assert expected <= found, f"not found: {sorted(expected - found)}"
    assert "hubconf" not in found  # torch.hub's entry point is not a command


@pytest.mark.parametrize("module", command_modules())
def test_every_flag_has_a_help_text_with_its_default(module):
    problems = problems_of(build_parser(module), module)
    assert not problems, "\n".join(problems)


def test_the_rule_catches_a_flag_without_help_or_default():
    """The checker itself: each kind of mistake is reported, the exempt kinds are not."""
    p = argparse.ArgumentParser()
    p.add_argument("--silent", type=int, default=3)
    p.add_argument("--no-default", type=int, default=3, help="how many")
    p.add_argument("--none-shown", default=None, help="a path (default: %(default)s)")
    p.add_argument("--broken", type=int, default=5, help="5% of it (default: %(default)s)")
    p.add_argument("--fine", type=int, default=3, help="how many (default: %(default)s)")
    p.add_argument("--words", default="", help="a path (default: none, read nothing)")
    p.add_argument("--must", help="a path (required)")
    p.add_argument("--switch", action="store_true", help="turn it on")
    p.add_argument("--needed", required=True, help="a path")
    p.add_argument("--hidden", default="", help=argparse.SUPPRESS)
    p.add_argument("source", help="an image")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run", help="run it").add_argument("--steps", type=int, default=2)
    sub.add_parser("undocumented")
    reported = {line.split(":")[0] for line in problems_of(p, "cmd")}
    assert reported == {"cmd --silent", "cmd --no-default", "cmd --none-shown", "cmd --broken",
                        "cmd run --steps", "cmd undocumented"}
