"""Messages fit for one line: what a library's error becomes before it reaches a user's terminal or log."""

from __future__ import annotations

import re

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")  # colours, cursor moves (CSI) and 2-byte codes


def plain_text(text: str) -> str:
    """`text` on one plain line: terminal escape codes removed (PyTorch colours its messages), a library's
    multi-line detail cut to its first non-empty line, runs of whitespace folded."""
    lines = [ln.strip() for ln in ANSI_ESCAPE.sub("", text).splitlines() if ln.strip()]
    return re.sub(r"\s+", " ", lines[0]) if lines else ""


def readable(value: object) -> str:
    """A derived number as a person would write it (0.16, not 0.16000000000000003): floats to 4 significant
    digits, tuples and lists element-wise; the value itself is left unchanged."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(readable(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value) if isinstance(value, str) else str(value)
