"""One logging setup for all scripts: plain messages, quiet under --quiet and on DDP ranks > 0."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator


def set_logging(verbose: bool = True) -> logging.Logger:
    """Configure the root logger once; non-zero torchrun ranks only show warnings and errors."""
    rank = int(os.environ.get("RANK", -1))
    level = logging.INFO if verbose and rank in (-1, 0) else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    return root


@contextmanager
def quieter(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise loggers to `level` for a while: ORT's quantizer logs a line per tensor on the root logger,
    and the mAP check needs no per-class table."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, lv in zip(loggers, before):
            lg.setLevel(lv)
