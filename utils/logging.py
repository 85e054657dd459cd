"""One logging setup for all scripts: plain messages, quiet under --quiet and on DDP ranks > 0."""

from __future__ import annotations

import logging
import os


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
