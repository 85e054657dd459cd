"""Multi-head attention between feature maps, pixels as tokens (eqs. 4–5), with key/value pooling.

Global attention over P3 of a 640 input (6,400 tokens) costs ~21 GFLOPs per op, so keys and values
are average-pooled (PVT's spatial reduction) whenever their grid holds more than `max_tokens`
pixels; queries are never pooled, so the output keeps the query map's grid. No positional
encoding: the paper found it hurt (D3N-SPEC §4).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def reduced_grid(h: int, w: int, max_tokens: int) -> tuple[int, int]:
    """The grid keys/values are pooled to: h x w shrunk by the smallest integer ratio r (PVT's
    sr_ratio) with ceil(h/r) * ceil(w/r) <= max_tokens."""
    r = 1
    while math.ceil(h / r) * math.ceil(w / r) > max_tokens:
        r += 1
    return math.ceil(h / r), math.ceil(w / r)


class MapAttention(nn.Module):
    """softmax(QKᵀ/√d_k)V over `heads` heads of d_k = C / heads, queries from one map, keys/values
    from another (or the same); Q, K, V are linear maps of the tokens, then an output projection."""

    def __init__(self, c: int, heads: int = 4, max_tokens: int = 4096, kv_norm: bool = False):
        super().__init__()
        if heads < 1 or c % heads:
            raise ValueError(f"attention over {c} channels cannot split into {heads} heads (C must divide by heads)")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.c, self.heads, self.max_tokens = c, heads, max_tokens
        self.q = nn.Linear(c, c)
        self.kv = nn.Linear(c, 2 * c)
        self.proj = nn.Linear(c, c)
        self.kv_norm = nn.LayerNorm(c) if kv_norm else nn.Identity()  # Table I's "norm" on the cross branch

    def kv_grid(self, h: int, w: int) -> tuple[int, int]:
        """The grid keys/values from an h x w map are computed on."""
        return reduced_grid(h, w, self.max_tokens)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from x (B, C, H, W), keys/values from y (B, C, h, w) or x itself; returns (B, C, H, W)."""
        b, c, h, w = x.shape
        src = x if y is None else y
        grid = self.kv_grid(*src.shape[-2:])
        if grid != tuple(src.shape[-2:]):
            src = F.adaptive_avg_pool2d(src, grid)  # (B, C, hk, wk)
        q = self.q(x.flatten(2).transpose(1, 2))  # (B, H*W, C)
        k, v = self.kv(self.kv_norm(src.flatten(2).transpose(1, 2))).chunk(2, dim=-1)  # (B, hk*wk, C) each
        q, k, v = (t.unflatten(-1, (self.heads, c // self.heads)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, d_k)
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, H*W, C)
        return out.transpose(1, 2).reshape(b, c, h, w)
