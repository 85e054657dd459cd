"""Dynamic cross-fusion (Fig. 6, Table I): detector map X refined by DDPM map Y through attention.

    Y′      = Conv1x1(Y)                   on Y's native grid (h, w)
    B_det   = SA(X)                        on X's grid, keys/values pooled past max_tokens
    B_ddpm  = resize(SA(Y′), (H, W))       attention on Y's grid, then bilinear to X's
    B_cross = Attn(Q = X, K = V = LN(Y′))  keys/values on Y's grid (LayerNorm after any pooling)
    Z       = X + Σ softmax(α)_i · B_i     α: three scalars, 0 at init (equal weights)

Table I's four switches turn parts of this off; `variant` names a combination (D3N-SPEC §4).
The optional `gate` arg `zero` blends the block's output into X through a zero-initialised,
per-channel γ (Z = X + γ ⊙ (F − X), inputs.OutputGate): the block starts as the identity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from d3n_ext.fusion.attention import MapAttention
from d3n_ext.fusion.inputs import (DDPMProjection, FusionBlock, OutputGate, check_single_repeat, fusion_channels,
                                   resize_to, split_pair)
from models.registry import BuildContext, register_block

SWITCH_TOKENS = {"sa": "dual_self_attention", "ws": "weighted_sum", "res": "residual", "norm": "norm"}
VARIANT_ALIASES = {"dcf": "sa+ws+res+norm"}
TABLE_I_VARIANTS = ("cross", "cross+sa", "cross+sa+ws", "ws+res", "sa+ws+res", "dcf")  # paper: 77.2 ... 79.0


@dataclass(frozen=True)
class FusionSwitches:
    """Table I's components; each says what the block does when it is off.

    dual_self_attention: on, the det and ddpm branches are SA(X) and SA(Y′); off, they carry X and
        Y′ unrefined — and only when `weighted_sum` is on (Table I's `ws+res` row weighs three
        features; under a plain sum X + Y′ would merely duplicate the residual), else they are dropped.
    weighted_sum: on, the branches are weighed by softmax(α); off, they are added as they are.
    residual: on, Z = X + fused branches; off, Z = the fused branches alone.
    norm: on, the cross branch's keys/values are LayerNorm(Y′); off, Y′ itself.
    """

    dual_self_attention: bool = True
    weighted_sum: bool = True
    residual: bool = True
    norm: bool = True

    @classmethod
    def from_variant(cls, variant: str) -> "FusionSwitches":
        """Parse a variant: parts joined by '+' from cross/sa/ws/res/norm, `dcf` standing for all four.

        The cross branch is always there, so `cross` only reads well: `cross+sa` == `sa`.
        """
        if not isinstance(variant, str) or not variant:
            raise ValueError(f"CrossFusion variant must be a string such as 'dcf' or 'ws+res', got {variant!r}")
        tokens = [part for token in variant.split("+") for part in VARIANT_ALIASES.get(token, token).split("+")]
        unknown = [t for t in tokens if t != "cross" and t not in SWITCH_TOKENS]
        if unknown:
            raise ValueError(f"CrossFusion variant {variant!r}: unknown part(s) {unknown}; use 'dcf' or '+'-joined "
                             f"parts of cross, {', '.join(SWITCH_TOKENS)} (Table I: {', '.join(TABLE_I_VARIANTS)})")
        return cls(**{field: token in tokens for token, field in SWITCH_TOKENS.items()})

    def branch_names(self) -> tuple[str, ...]:
        return ("det", "ddpm", "cross") if self.dual_self_attention or self.weighted_sum else ("cross",)


@register_block()
class CrossFusion(FusionBlock):
    """Z = [X +] Σ w_i B_i over the branches the switches leave (module docstring); output like X."""

    ablation_variants = {v: [v, 4] for v in TABLE_I_VARIANTS}  # [variant, heads]

    def __init__(self, c_x: int, c_y: int, heads: int = 4, variant: str = "dcf", max_tokens: int = 4096,
                 gate: str = "none", dual_self_attention: bool | None = None, weighted_sum: bool | None = None,
                 residual: bool | None = None, norm: bool | None = None):
        super().__init__()
        overrides = {"dual_self_attention": dual_self_attention, "weighted_sum": weighted_sum,
                     "residual": residual, "norm": norm}
        self.switches = dataclasses.replace(FusionSwitches.from_variant(variant),
                                            **{k: bool(v) for k, v in overrides.items() if v is not None})
        self.c_x, self.c_y, self.branches = c_x, c_y, self.switches.branch_names()
        self.project = DDPMProjection(c_y, c_x)
        self.cross = MapAttention(c_x, heads, max_tokens, kv_norm=self.switches.norm)
        sa = self.switches.dual_self_attention
        self.sa_det = MapAttention(c_x, heads, max_tokens) if sa else None
        self.sa_ddpm = MapAttention(c_x, heads, max_tokens) if sa else None
        self.alpha = nn.Parameter(torch.zeros(len(self.branches))) if self.switches.weighted_sum else None
        self.gate = OutputGate(c_x, gate)

    @classmethod
    def from_yaml(cls, ch_in: list[int], args: list, n: int, ctx: BuildContext) -> tuple[nn.Module, int]:
        """YAML `[[x, y], 1, CrossFusion, [variant, heads, max_tokens, gate]]`, all args optional."""
        c_x, c_y = fusion_channels(ch_in, "CrossFusion")
        check_single_repeat(n, "CrossFusion")
        if len(args) > 4:
            raise ValueError(f"CrossFusion args are [variant, heads, max_tokens, gate], got {len(args)}: {args!r}")
        if any(not isinstance(a, int) or isinstance(a, bool) for a in args[1:3]):
            raise ValueError(f"CrossFusion heads and max_tokens must be ints, got {args[1:3]!r}")
        return cls(c_x, c_y, **dict(zip(("variant", "heads", "max_tokens", "gate"), args))), c_x

    @classmethod
    def ablation_args(cls, variant: str, kv_tokens: int | None = None) -> list:
        """[variant, heads] and, given `kv_tokens`, the key/value cap (the lite YAMLs' way of staying affordable)."""
        args = super().ablation_args(variant)
        return args if kv_tokens is None else args + [kv_tokens]

    def branch_weights(self) -> torch.Tensor:
        """softmax(α) over the branches, or ones for a plain sum; (len(branches),)."""
        if self.alpha is None:
            return torch.ones(len(self.branches))
        return self.alpha.float().softmax(0)

    def fusion_weights(self) -> dict[str, float]:
        """Branch name -> weight (and the gate's mean |γ|), for the per-epoch log of Fig. 11."""
        weights = {name: float(w) for name, w in zip(self.branches, self.branch_weights().detach().cpu())}
        return {**weights, **self.gate.log()}

    def kv_grids(self, x_hw: tuple[int, int], y_hw: tuple[int, int]) -> dict[str, tuple[int, int]]:
        """Branch name -> the grid its attention's keys/values live on, for X of x_hw and Y of y_hw."""
        grids = {"cross": self.cross.kv_grid(*y_hw)}
        if self.sa_det is not None:
            grids.update(det=self.sa_det.kv_grid(*x_hw), ddpm=self.sa_ddpm.kv_grid(*y_hw))
        return grids

    def _branch(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One branch on X's grid; x (B, C, H, W), y = Y′ (B, C, h, w) on the DDPM grid."""
        if name == "cross":
            return self.cross(x, y)
        if name == "det":
            return x if self.sa_det is None else self.sa_det(x)
        refined = y if self.sa_ddpm is None else self.sa_ddpm(y)  # ddpm: attention on the native grid
        return resize_to(refined, x.shape[-2:])

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x, y = split_pair(inputs, self.c_x, self.c_y, "CrossFusion")
        y = self.project(y)  # (B, C, h, w)
        branches = [self._branch(name, x, y) for name in self.branches]
        if self.alpha is None:
            fused = sum(branches[1:], branches[0])
        else:
            fused = sum(w * b for w, b in zip(self.branch_weights(), branches))
        return self.gate(x, x + fused if self.switches.residual else fused)
