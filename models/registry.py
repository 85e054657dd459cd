"""The registry of blocks a model YAML may name.

Every block, the core's own included, is registered with a builder that turns one YAML row into a
module and its output channels. A plug-in (such as `d3n_ext`) registers its blocks the same way, so
adding a block is one class plus one decorator, and the core never names the plug-in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of `divisor` that is >= x (how width_multiple scales channels)."""
    return int(math.ceil(x / divisor) * divisor)


@dataclass(frozen=True)
class BuildContext:
    """What a builder may know about the model being built."""

    nc: int
    anchors: Any
    width_multiple: float
    depth_multiple: float

    def width(self, c: int) -> int:
        return make_divisible(c * self.width_multiple, 8)


# builder(cls, ch_in, args, n, ctx) -> (module, ch_out); ch_in lists the channels of each `from` input
Builder = Callable[[type, list[int], list, int, BuildContext], "tuple[nn.Module, int]"]


@dataclass(frozen=True)
class BlockEntry:
    cls: type
    builder: Builder


BLOCKS: dict[str, BlockEntry] = {}


def register_block(name: str | None = None, builder: Builder | None = None):
    """Class decorator: make `cls` nameable in model YAMLs.

    The builder comes from the argument, else from the class's `from_yaml` classmethod.
    """

    def decorate(cls: type) -> type:
        build = builder or getattr(cls, "from_yaml", None)
        if build is None:
            raise TypeError(f"{cls.__name__}: give register_block a builder or define from_yaml")
        key = name or cls.__name__
        if key in BLOCKS and BLOCKS[key].cls is not cls:
            raise KeyError(f"block name {key!r} is already registered by {BLOCKS[key].cls.__module__}")
        BLOCKS[key] = BlockEntry(cls, build if builder else (lambda c, *a: c.from_yaml(*a)))
        return cls

    return decorate


def lookup_block(name: str) -> BlockEntry:
    if name not in BLOCKS:
        raise KeyError(f"unknown module {name!r}; registered: {', '.join(sorted(BLOCKS))}. "
                       "A plug-in block needs its package imported first (e.g. `import d3n_ext`)")
    return BLOCKS[name]


# --- builders shared by many blocks ---------------------------------------------------------

def single_input(ch_in: list[int], what: str) -> int:
    if len(ch_in) != 1:
        raise ValueError(f"{what} takes one input, got {len(ch_in)}")
    return ch_in[0]


def conv_like(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    """args = [c2, *rest]: c2 is scaled by width_multiple, the block repeated n times in sequence."""
    c1 = single_input(ch_in, cls.__name__)
    if not args:
        raise ValueError(f"{cls.__name__} needs at least the output channels as its first arg")
    c2 = ctx.width(args[0])
    layers = [cls(c1 if i == 0 else c2, c2, *args[1:]) for i in range(n)]
    return (layers[0] if n == 1 else nn.Sequential(*layers)), c2


def csp_like(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    """args = [c2, *rest]: like conv_like, but the repeat count goes inside (C3's bottlenecks)."""
    c1 = single_input(ch_in, cls.__name__)
    if not args:
        raise ValueError(f"{cls.__name__} needs at least the output channels as its first arg")
    c2 = ctx.width(args[0])
    return cls(c1, c2, n, *args[1:]), c2


def same_channels(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    """Blocks that keep their input's channels (upsampling, identity)."""
    c1 = single_input(ch_in, cls.__name__)
    return cls(*args), c1
