"""CrossFusion: shapes across grids, the α = 0 start, Table I's switches, key/value pooling, YAML rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d3n_ext.fusion import attention
from d3n_ext.fusion.cross_fusion import TABLE_I_VARIANTS, CrossFusion, FusionSwitches
from d3n_ext.fusion.inputs import resize_to
from models.registry import BuildContext, lookup_block

CTX = BuildContext(nc=3, anchors=None, width_multiple=0.25, depth_multiple=0.33)
C_X, C_Y = 16, 24


def build(ch_in: list[int], args: list, n: int = 1):
    entry = lookup_block("CrossFusion")
    return entry.builder(entry.cls, ch_in, args, n, CTX)


def pair(x_hw=(10, 12), y_hw=(7, 6), seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, C_X, *x_hw, generator=g), torch.randn(2, C_Y, *y_hw, generator=g)]


@pytest.mark.parametrize("x_hw,y_hw", [((10, 12), (7, 6)), ((8, 8), (8, 8)), ((5, 7), (9, 11))])
def test_output_is_shaped_like_x(x_hw, y_hw):
    torch.manual_seed(0)
    x, y = pair(x_hw, y_hw)
    assert CrossFusion(C_X, C_Y)([x, y]).shape == x.shape


def test_at_init_the_output_is_x_plus_the_mean_of_the_branches():
    torch.manual_seed(0)
    m, (x, y) = CrossFusion(C_X, C_Y), pair()
    assert m.fusion_weights() == pytest.approx({"det": 1 / 3, "ddpm": 1 / 3, "cross": 1 / 3})
    yp = m.project(y)
    branches = [m.sa_det(x), resize_to(m.sa_ddpm(yp), x.shape[-2:]), m.cross(x, yp)]
    torch.testing.assert_close(m([x, y]), x + sum(branches) / 3, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter_including_alpha():
    torch.manual_seed(0)
    m, (x, y) = CrossFusion(C_X, C_Y), pair()
    (m([x, y]) * torch.randn(2, C_X, 10, 12)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert m.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("variant,branches,alpha", [
    ("cross", ("cross",), False), ("cross+sa", ("det", "ddpm", "cross"), False),
    ("cross+sa+ws", ("det", "ddpm", "cross"), True), ("ws+res", ("det", "ddpm", "cross"), True),
    ("sa+ws+res", ("det", "ddpm", "cross"), True), ("dcf", ("det", "ddpm", "cross"), True),
])
def test_table_i_variants_build_and_run(variant, branches, alpha):
    torch.manual_seed(0)
    m, c_out = build([C_X, C_Y], [variant, 4])
    x, y = pair()
    out = m([x, y])
    out.sum().backward()
    assert c_out == C_X and out.shape == x.shape and torch.isfinite(out).all()
    assert m.branches == branches and (m.alpha is not None) == alpha
    assert (m.sa_det is not None) == m.switches.dual_self_attention


def test_plain_cross_attention_is_the_cross_branch_alone():
    torch.manual_seed(0)
    m, (x, y) = CrossFusion(C_X, C_Y, variant="cross"), pair()
    assert m.fusion_weights() == {"cross": 1.0}
    assert isinstance(m.cross.kv_norm, torch.nn.Identity)
    torch.testing.assert_close(m([x, y]), m.cross(x, m.project(y)))


def test_ws_without_self_attention_weighs_the_unrefined_maps():
    torch.manual_seed(0)
    m, (x, y) = CrossFusion(C_X, C_Y, variant="ws+res"), pair()
    yp = m.project(y)
    expected = x + (x + resize_to(yp, x.shape[-2:]) + m.cross(x, yp)) / 3
    torch.testing.assert_close(m([x, y]), expected, atol=1e-5, rtol=1e-5)


def test_residual_switch_adds_exactly_x():
    torch.manual_seed(0)
    with_res = CrossFusion(C_X, C_Y, variant="sa+ws+res")
    without = CrossFusion(C_X, C_Y, variant="sa+ws+res", residual=False)
    without.load_state_dict(with_res.state_dict())
    x, y = pair()
    torch.testing.assert_close(with_res([x, y]), x + without([x, y]))


def test_switch_arguments_override_the_variant():
    assert CrossFusion(C_X, C_Y, variant="dcf", norm=False).switches == FusionSwitches.from_variant("sa+ws+res")
    assert FusionSwitches.from_variant("dcf") == FusionSwitches(True, True, True, True)
    assert FusionSwitches.from_variant("cross+sa") == FusionSwitches.from_variant("sa")


def test_keys_and_values_are_pooled_above_max_tokens(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    x, y = pair((12, 12), (9, 9))  # 144 and 81 tokens
    m = CrossFusion(C_X, C_Y, max_tokens=50)
    m([x, y])
    assert sorted(seen) == sorted([(144, 36), (81, 25), (144, 25)])  # det (6x6), ddpm (5x5), cross (5x5)
    assert m.kv_grids((12, 12), (9, 9)) == {"det": (6, 6), "ddpm": (5, 5), "cross": (5, 5)}
    seen.clear()
    CrossFusion(C_X, C_Y, max_tokens=4096)([x, y])
    assert sorted(seen) == sorted([(144, 144), (81, 81), (144, 81)])  # small grids stay global


def test_runs_under_bf16_autocast():
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = CrossFusion(C_X, C_Y)(pair())
    assert out.shape == (2, C_X, 10, 12) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("ch_in,args,match", [
    ([C_X], ["dcf", 4], "takes two inputs"),
    ([C_X, C_Y], ["dcf", 4, 4096, "zero", 1], "args are \\[variant, heads, max_tokens, gate\\]"),
    ([C_X, C_Y], ["dcf", 4, 4096, 1], "fusion gate 1"),
    ([C_X, C_Y], ["dcf", True], "must be ints"),
    ([C_X, C_Y], ["fancy", 4], "unknown part"),
    ([18, C_Y], ["dcf", 4], "18 channels cannot split into 4 heads"),
])
def test_bad_rows_are_explained(ch_in, args, match):
    with pytest.raises(ValueError, match=match):
        build(ch_in, args)


def test_wrong_input_channels_at_run_time_are_explained():
    x, y = pair()
    with pytest.raises(ValueError, match="got X with 16 and Y with 24 channels, built for 16 and 32"):
        CrossFusion(C_X, 32)([x, y])
