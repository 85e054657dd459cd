"""How scripts end on a user's mistake: one line naming the file and the problem, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from utils.checkpoints import CheckpointError

T = TypeVar("T")

# DataConfigError, ModelConfigError and RepositoryError are ValueErrors; StopTraining a RuntimeError that
# train.py adds. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, FileNotFoundError, ValueError)


def exit_on_user_error(body: Callable[[], T], extra: tuple[type[BaseException], ...] = ()) -> T:
    """Run a script's body; a user error exits with status 1 and its one-line message on stderr."""
    try:
        return body()
    except USER_ERRORS + extra as e:
        sys.exit(f"error: {e}")
