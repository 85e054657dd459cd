"""Table II's plain fusion operations, the baselines dynamic cross-fusion is compared with.

Each reads the same `[[x, y], 1, Name, []]` row as CrossFusion and returns a map shaped like X:
Concat + Conv1x1 (77.6 mAP@0.5 in the paper), Sum (77.4), Weighted sum (78.2). The optional arg
`[zero]` adds a zero-initialised output gate (inputs.OutputGate): the block starts as X.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from d3n_ext.fusion.inputs import (DDPMProjection, FusionBlock, OutputGate, check_single_repeat, fusion_channels,
                                   resize_to, split_pair)
from models.common import Conv
from models.registry import BuildContext, register_block


class _PairFusion(FusionBlock):
    """Shared YAML builder: two inputs, an optional gate arg, output channels = X's."""

    def __init__(self, c_x: int, c_y: int, gate: str = "none"):
        super().__init__()
        self.c_x, self.c_y = c_x, c_y
        self.gate = OutputGate(c_x, gate)

    @classmethod
    def from_yaml(cls, ch_in: list[int], args: list, n: int, ctx: BuildContext) -> tuple[nn.Module, int]:
        c_x, c_y = fusion_channels(ch_in, cls.__name__)
        check_single_repeat(n, cls.__name__)
        if len(args) > 1:
            raise ValueError(f"{cls.__name__} takes at most one arg [gate], got {args!r}")
        return cls(c_x, c_y, *args), c_x

    def pair(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return split_pair(inputs, self.c_x, self.c_y, type(self).__name__)

    def fusion_weights(self) -> dict[str, float]:
        """Branch name -> weight (and the gate's mean |γ|), logged per epoch (Fig. 11)."""
        return self.gate.log()


@register_block()
class FuseConcat(_PairFusion):
    """Conv1x1(concat(X, Y resized to X's grid)): YOLOv5's Conv (conv-BN-SiLU) back to C_x channels."""

    ablation_variants = {"concat1x1": []}  # 77.6

    def __init__(self, c_x: int, c_y: int, gate: str = "none"):
        super().__init__(c_x, c_y, gate)
        self.conv = Conv(c_x + c_y, c_x, 1)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x, y = self.pair(inputs)
        return self.gate(x, self.conv(torch.cat((x, resize_to(y, x.shape[-2:])), 1)))  # (B, C_x, H, W)


@register_block()
class FuseSum(_PairFusion):
    """X + Y′, with Y′ the 1x1 projection of Y resized to X's grid."""

    ablation_variants = {"sum": []}  # 77.4

    def __init__(self, c_x: int, c_y: int, gate: str = "none"):
        super().__init__(c_x, c_y, gate)
        self.project = DDPMProjection(c_y, c_x)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x, y = self.pair(inputs)
        return self.gate(x, x + self.project(y, x.shape[-2:]))


@register_block()
class FuseWeightedSum(_PairFusion):
    """w_det·X + w_ddpm·Y′ with (w_det, w_ddpm) = softmax(β), β initialised to 0 (equal weights)."""

    ablation_variants = {"wsum": []}  # 78.2

    def __init__(self, c_x: int, c_y: int, gate: str = "none"):
        super().__init__(c_x, c_y, gate)
        self.project = DDPMProjection(c_y, c_x)
        self.beta = nn.Parameter(torch.zeros(2))

    def fusion_weights(self) -> dict[str, float]:
        """Branch name -> weight, logged per epoch like CrossFusion's."""
        w = self.beta.detach().float().softmax(0).cpu()
        return {"det": float(w[0]), "ddpm": float(w[1]), **self.gate.log()}

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x, y = self.pair(inputs)
        w = self.beta.float().softmax(0)  # (2,)
        return self.gate(x, w[0] * x + w[1] * self.project(y, x.shape[-2:]))
