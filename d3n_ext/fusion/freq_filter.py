"""The noise filter of Fig. 4: a learnable map in the 2-D frequency domain (MedSegDiff's FF-parser).

The DDPM features come from noisy inputs x_t, so the filter lets training damp the frequencies that
carry noise. W starts at 1+0j, an exact pass-through, so a model with the filter equals one without
it at initialisation and the filter-off ablation (Table III) is clean (D3N-SPEC §4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import BuildContext, register_block, single_input

if TYPE_CHECKING:
    from d3n_ext.fusion.feature_mapper import LevelBinding


def _positive_ints(values: list, n: int, what: str) -> list[int]:
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{what}: expected {n} positive ints, got {values!r}")
    return [int(v) for v in values]


@register_block()
class FreqFilter(nn.Module):
    """y -> irfft2(rfft2(y) ⊙ W), in fp32 outside autocast; W is resized for grids other than `size`.

    W stays out of weight decay: decay would pull the 1+0j pass-through towards 0 (silence).
    """

    no_weight_decay = ("weight",)
    d3n_role = "filter"  # binding gives it the grid of the level its FeatureMapper decodes (blocks.py)

    def __init__(self, c: int, size: tuple[int, int]):
        super().__init__()
        h, w = _positive_ints(list(size), 2, "FreqFilter size")
        self.c, self.size = int(c), (h, w)
        weight = torch.zeros(self.c, h, w // 2 + 1, 2)  # (c, h, w//2+1, re/im)
        weight[..., 0] = 1.0
        self.weight = nn.Parameter(weight)

    @classmethod
    def from_yaml(cls, ch_in: list[int], args: list, n: int, ctx: BuildContext) -> tuple[nn.Module, int]:
        """YAML `[-1, 1, FreqFilter, [h, w]]`: h, w are the DDPM's native grid; channels come from the input."""
        c = single_input(ch_in, "FreqFilter")
        if n != 1:
            raise ValueError(f"FreqFilter: 'number' must be 1, got {n}")
        return cls(c, tuple(_positive_ints(args, 2, "FreqFilter args [h, w]"))), c

    @staticmethod
    def bind_args(args: list, level: LevelBinding) -> list:
        """[h, w] of the level's DDPM grid, where W is exact (no resizing)."""
        return list(level.hw)

    def complex_weight(self, h: int, w: int) -> torch.Tensor:
        """W as a complex (c, h, w//2+1) map for an h x w input.

        Other grids get W resized bilinearly with the zero frequency centred along the full axis
        (fftshift), so a coefficient keeps its frequency in cycles per pixel.
        """
        weight = self.weight.float()  # (c, h0, w0//2+1, 2)
        if (h, w) != self.size:
            shifted = torch.fft.fftshift(weight, dim=1).permute(0, 3, 1, 2)  # (c, 2, h0, w0//2+1)
            resized = F.interpolate(shifted, size=(h, w // 2 + 1), mode="bilinear", align_corners=False)
            weight = torch.fft.ifftshift(resized.permute(0, 2, 3, 1), dim=1)  # (c, h, w//2+1, 2)
        return torch.view_as_complex(weight.contiguous())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[1] != self.c:
            raise ValueError(f"FreqFilter: input has {y.shape[1]} channels, the block was built for {self.c}")
        h, w = y.shape[-2:]
        with torch.autocast(device_type=y.device.type, enabled=False):
            spectrum = torch.fft.rfft2(y.float(), norm="ortho")  # (B, c, h, w//2+1) complex
            out = torch.fft.irfft2(spectrum * self.complex_weight(h, w), s=(h, w), norm="ortho")
        return out.to(y.dtype)

