"""Reading a config YAML (model, data, hyp, stage-1 preset) the one way: a mapping with only known keys.

Every error is one line naming the file (or the section) and what was expected, raised as the
caller's own error class, so a typo never falls back to a default silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def read_yaml_mapping(path: str | Path, expected: str, error: type[Exception] = ValueError,
                      empty_ok: bool = False) -> dict:
    """The mapping a YAML file holds; `expected` completes "expected ..." in the error for anything else
    (an empty file reads as {} when `empty_ok`)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: expected {expected}")
    return raw


def reject_unknown(keys: Iterable[Any], known: Iterable[str], where: str, what: str = "keys",
                   error: type[Exception] = ValueError) -> None:
    """Raise `error` naming the keys that are not `known` (and listing the known ones), if any."""
    known = sorted(known)
    unknown = sorted(set(keys) - set(known), key=str)
    if unknown:
        raise error(f"{where}: unknown {what} {unknown} (known: {known})")


def dataclass_from_mapping(cls: type[T], mapping: Any, where: str, error: type[Exception] = ValueError) -> T:
    """`cls(**mapping)` for a mapping of `cls`'s fields; a non-mapping, an unknown key or a value the
    dataclass refuses with a TypeError is a one-line `error` naming `where`."""
    if not isinstance(mapping, dict):
        raise error(f"{where}: expected a mapping")
    reject_unknown(mapping, [f.name for f in fields(cls)], where, error=error)
    try:
        return cls(**mapping)
    except TypeError as e:  # a value of the wrong kind met inside the dataclass's checks (a list for a number, ...)
        raise error(f"{where}: {e}") from None
