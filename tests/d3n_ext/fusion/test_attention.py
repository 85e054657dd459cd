"""MapAttention computes softmax(QKᵀ/√d_k)V per head and pools keys/values past max_tokens."""

from __future__ import annotations

import pytest
import torch

from d3n_ext.fusion.attention import MapAttention, reduced_grid


@pytest.mark.parametrize("h,w,max_tokens,grid", [
    (80, 80, 4096, (40, 40)), (64, 64, 4096, (64, 64)), (40, 40, 4096, (40, 40)), (9, 9, 50, (5, 5)),
    (7, 30, 10, (2, 5)),
])
def test_reduced_grid_fits_max_tokens(h, w, max_tokens, grid):
    assert reduced_grid(h, w, max_tokens) == grid
    assert grid[0] * grid[1] <= max_tokens


def test_matches_the_written_out_equation():
    torch.manual_seed(0)
    m, heads, d = MapAttention(8, heads=2), 2, 4
    x, y = torch.randn(1, 8, 3, 4), torch.randn(1, 8, 2, 5)
    q = m.q(x.flatten(2).transpose(1, 2)).view(1, 12, heads, d).transpose(1, 2)  # (1, heads, 12, d)
    k, v = (t.view(1, 10, heads, d).transpose(1, 2) for t in m.kv(y.flatten(2).transpose(1, 2)).chunk(2, -1))
    attn = (q @ k.transpose(-1, -2) / d**0.5).softmax(-1) @ v  # eq. 5 with √d_k inside the softmax
    expected = m.proj(attn.transpose(1, 2).reshape(1, 12, 8)).transpose(1, 2).reshape(1, 8, 3, 4)
    torch.testing.assert_close(m(x, y), expected, atol=1e-5, rtol=1e-5)


def test_channels_must_split_into_heads():
    with pytest.raises(ValueError, match="cannot split into 4 heads"):
        MapAttention(6, heads=4)
