"""FreqFilter starts as an exact pass-through, learns, resizes its map and stays fp32 under autocast."""

from __future__ import annotations

import pytest
import torch

from d3n_ext.fusion.freq_filter import FreqFilter
from models.registry import BuildContext, lookup_block

CTX = BuildContext(nc=3, anchors=None, width_multiple=0.25, depth_multiple=0.33)


def build(ch_in: list[int], args: list, n: int = 1):
    entry = lookup_block("FreqFilter")
    return entry.builder(entry.cls, ch_in, args, n, CTX)


@pytest.mark.parametrize("size,grid", [((8, 8), (8, 8)), ((7, 9), (7, 9)), ((8, 8), (11, 13)), ((6, 5), (16, 16))])
def test_identity_at_init(size, grid):
    torch.manual_seed(0)
    y = torch.randn(2, 5, *grid)
    torch.testing.assert_close(FreqFilter(5, size)(y), y, atol=1e-5, rtol=0)


def test_gradients_reach_the_weight_and_change_the_output():
    torch.manual_seed(0)
    f, y = FreqFilter(4, (6, 7)), torch.randn(2, 4, 6, 7)
    (f(y) * torch.randn(2, 4, 6, 7)).sum().backward()
    assert f.weight.grad is not None and f.weight.grad.abs().sum() > 0
    with torch.no_grad():
        f.weight.sub_(f.weight.grad)
    assert (f(y) - y).abs().max() > 1e-3


def test_dc_only_filter_keeps_the_channel_means():
    y = torch.randn(1, 3, 8, 10)
    f = FreqFilter(3, (8, 10))
    with torch.no_grad():
        f.weight.zero_()
        f.weight[:, 0, 0, 0] = 1.0  # pass the zero frequency only
    expected = y.mean((2, 3), keepdim=True).expand_as(y)
    torch.testing.assert_close(f(y), expected, atol=1e-5, rtol=0)


def test_resized_constant_filter_scales_any_grid():
    f = FreqFilter(2, (4, 4))
    with torch.no_grad():
        f.weight[..., 0] = 0.5
    y = torch.randn(1, 2, 9, 12)
    torch.testing.assert_close(f(y), 0.5 * y, atol=1e-5, rtol=0)
    assert f.complex_weight(9, 12).shape == (2, 9, 7)


def test_fp32_inside_bf16_autocast():
    torch.manual_seed(0)
    f, y = FreqFilter(3, (8, 8)), torch.randn(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = f(y)
        out16 = f(y.bfloat16())  # torch.fft rejects bf16: the block must compute in fp32
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    torch.testing.assert_close(out32, y, atol=1e-5, rtol=0)
    torch.testing.assert_close(out16, y.bfloat16())


def test_builds_from_a_yaml_row_with_the_input_channels():
    module, c_out = build([96], [16, 16])
    assert isinstance(module, FreqFilter) and c_out == 96
    assert module.weight.shape == (96, 16, 9, 2)


@pytest.mark.parametrize("ch_in,args,n,match", [
    ([96], [16], 1, "expected 2 positive ints"),
    ([96], [16, 0], 1, "expected 2 positive ints"),
    ([96, 32], [16, 16], 1, "takes one input"),
    ([96], [16, 16], 2, "'number' must be 1"),
])
def test_bad_rows_are_explained(ch_in, args, n, match):
    with pytest.raises(ValueError, match=match):
        build(ch_in, args, n)


def test_channel_mismatch_at_run_time_is_explained():
    with pytest.raises(ValueError, match="input has 4 channels, the block was built for 3"):
        FreqFilter(3, (4, 4))(torch.zeros(1, 4, 4, 4))


def test_filter_weights_stay_out_of_weight_decay():
    """Decay would pull the pass-through W = 1+0j towards silence; the optimizer leaves it out."""
    from utils.optim import build_optimizer

    model = torch.nn.Sequential(FreqFilter(4, (8, 8)), torch.nn.Conv2d(4, 4, 1))
    opt = build_optimizer(model, "Adam", decay=0.1)
    decayed = {id(p) for g in opt.param_groups if g.get("weight_decay", 0) > 0 for p in g["params"]}
    assert id(model[0].weight) not in decayed and id(model[1].weight) in decayed
