"""How scripts end on a user's mistake: one line naming the file and the problem, not a traceback."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable, TypeVar

from utils.checkpoints import CheckpointError
from utils.text import plain_text

T = TypeVar("T")

# DataConfigError, ModelConfigError and RepositoryError are ValueErrors; StopTraining a RuntimeError that
# train.py adds. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, FileNotFoundError, ValueError)

# OSErrors of the machine rather than the code: a read-only or full disk, a folder without permission
DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG, errno.EIO}
DISK_HINTS = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
              errno.EROFS: "write elsewhere (--project, or export.py --save-dir)",
              errno.EACCES: "write elsewhere or fix its permissions",
              errno.EPERM: "write elsewhere or fix its permissions"}


def disk_error_message(e: OSError) -> str:
    """`path: problem; what to do` for an OSError of the file system (read-only, full, no permission)."""
    where = e.filename if e.filename is not None else "writing"
    problem = e.strerror or plain_text(str(e)) or type(e).__name__
    hint = DISK_HINTS.get(e.errno or 0)
    return f"{where}: {problem}" + (f"; {hint}" if hint else "")


def is_disk_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno in DISK_ERRNOS


def exit_on_user_error(body: Callable[[], T], extra: tuple[type[BaseException], ...] = ()) -> T:
    """Run a script's body; a user error (or a read-only or full disk) exits with status 1 and its one-line,
    plain-text message on stderr."""
    try:
        return body()
    except USER_ERRORS + extra as e:
        sys.exit(f"error: {plain_text(str(e))}")
    except OSError as e:
        if not is_disk_error(e):
            raise
        sys.exit(f"error: {plain_text(disk_error_message(e))}")


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags the user actually typed (not their defaults): parsed a second time
    with every default suppressed. `--resume` uses it to keep the run's own settings unless repeated."""
    quiet = argparse.ArgumentParser(add_help=False, allow_abbrev=parser.allow_abbrev)
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        if action.option_strings and action.dest != "help":
            takes = {"action": "store_const", "const": True} if action.nargs == 0 else {"nargs": action.nargs}
            quiet.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS, **takes)
    known, _ = quiet.parse_known_args(sys.argv[1:] if argv is None else argv)
    return set(vars(known))


def check_flag_ranges(opt: object, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                      fractions: tuple[str, ...] = ()) -> None:
    """Refuse numbers no run can use before anything is loaded: one line naming the flag as the user typed it.
    `opt` holds the parsed flags by destination (conf_thres is --conf-thres); None means not given."""
    rules = [(positive, lambda v: v > 0, "expected a positive number"),
             (non_negative, lambda v: v >= 0, "expected 0 or more"),
             (fractions, lambda v: 0 <= v <= 1, "expected a value in [0, 1]")]
    for dests, ok, expected in rules:
        for dest in dests:
            value = getattr(opt, dest, None)
            if value is not None and not ok(value):
                raise ValueError(f"--{dest.replace('_', '-')} {value}: {expected}")
