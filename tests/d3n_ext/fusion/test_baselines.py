"""Table II's baselines: what each computes, built from YAML rows like CrossFusion's."""

from __future__ import annotations

import pytest
import torch

import d3n_ext.fusion.cross_fusion  # noqa: F401  (registers CrossFusion)
from d3n_ext.fusion.baselines import FuseConcat, FuseSum, FuseWeightedSum
from d3n_ext.fusion.inputs import resize_to
from models.registry import BuildContext, lookup_block

CTX = BuildContext(nc=3, anchors=None, width_multiple=0.25, depth_multiple=0.33)
NAMES = ("FuseConcat", "FuseSum", "FuseWeightedSum")


def build(name: str, ch_in: list[int], args: list, n: int = 1):
    entry = lookup_block(name)
    return entry.builder(entry.cls, ch_in, args, n, CTX)


def pair() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 8, 6, 10, generator=g), torch.randn(2, 20, 4, 5, generator=g)]


@pytest.mark.parametrize("name", NAMES)
def test_builds_from_a_row_and_outputs_x_shaped_maps(name):
    torch.manual_seed(0)
    module, c_out = build(name, [8, 20], [])
    x, y = pair()
    out = module([x, y])
    out.sum().backward()
    assert c_out == 8 and out.shape == x.shape
    assert all(p.grad is not None for p in module.parameters())


def test_sum_adds_the_resized_projection():
    torch.manual_seed(0)
    m, (x, y) = FuseSum(8, 20), pair()
    torch.testing.assert_close(m([x, y]), x + resize_to(m.project.conv(y), (6, 10)))


def test_weighted_sum_starts_at_equal_weights():
    torch.manual_seed(0)
    m, (x, y) = FuseWeightedSum(8, 20), pair()
    assert m.fusion_weights() == {"det": 0.5, "ddpm": 0.5}
    torch.testing.assert_close(m([x, y]), 0.5 * x + 0.5 * m.project(y, (6, 10)))
    m([x, y]).sum().backward()
    assert m.beta.grad.abs().sum() > 0


def test_concat_sees_both_maps():
    torch.manual_seed(0)
    m, (x, y) = FuseConcat(8, 20).eval(), pair()
    base = m([x, y])
    assert (m([x, y + 1]) - base).abs().max() > 1e-3
    assert (m([x + 1, y]) - base).abs().max() > 1e-3
    assert m.conv.conv.in_channels == 28


@pytest.mark.parametrize("name", NAMES)
def test_bad_rows_are_explained(name):
    with pytest.raises(ValueError, match=r"takes at most one arg \[gate\]"):
        build(name, [8, 20], ["zero", 4])
    with pytest.raises(ValueError, match="takes two inputs"):
        build(name, [8], [])
    with pytest.raises(ValueError, match="built for 8 and 16"):
        build(name, [8, 16], [])[0](pair())


@pytest.mark.parametrize("name, args", [("FuseConcat", ["zero"]), ("FuseSum", ["zero"]), ("FuseWeightedSum", ["zero"]),
                                        ("CrossFusion", ["dcf", 4, 64, "zero"])])
def test_zero_gate_starts_as_the_detector_map_then_learns(name, args):
    """With `zero` the block returns X exactly at init, and the gate still receives a gradient."""
    torch.manual_seed(0)
    module, _ = build(name, [8, 20], args)
    x, y = pair()
    z = module([x, y])
    assert torch.equal(z, x)
    (z * torch.randn_like(z)).sum().backward()
    assert module.gate.gamma.grad.abs().sum() > 0
    assert module.fusion_weights()["gate"] == 0.0


def test_unknown_gate_lists_the_choices():
    with pytest.raises(ValueError, match=r"fusion gate 'half'.*\('none', 'zero'\)"):
        build("FuseSum", [8, 20], ["half"])
