"""What every fusion block does with its two inputs: the detector map X and the DDPM map Y.

A fusion row reads `[[x, y], 1, Name, [...]]`: X (B, C, H, W) from the detector and Y (B, C_y, h, w)
decoded from the feature repository, on the DDPM's native grid (h, w may differ from H, W). The
blocks share one projection of Y to C channels, one resize to X's grid and one base class, defined here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F


def fusion_channels(ch_in: list[int], what: str) -> tuple[int, int]:
    """(C_x, C_y) of a fusion row, or a ValueError saying the row needs [detector, DDPM] inputs."""
    if len(ch_in) != 2:
        raise ValueError(f"{what} takes two inputs [detector map, DDPM map], got {len(ch_in)}")
    return int(ch_in[0]), int(ch_in[1])


def check_single_repeat(n: int, what: str) -> None:
    if n != 1:
        raise ValueError(f"{what}: 'number' must be 1 (a fusion block is not repeated), got {n}")


def resize_to(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (B, C, h, w) map to `size`; a no-op when it is already there."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def split_pair(inputs: list[torch.Tensor], c_x: int, c_y: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y) from a fusion row's input list, checked against the channels the row was built for."""
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise ValueError(f"{what}: expected a list [X, Y] of two maps")
    x, y = inputs
    if x.shape[1] != c_x or y.shape[1] != c_y:
        raise ValueError(f"{what}: got X with {x.shape[1]} and Y with {y.shape[1]} channels, "
                         f"built for {c_x} and {c_y}")
    return x, y


class DDPMProjection(nn.Module):
    """Y -> Y′: a 1x1 conv from C_y to the detector's C channels, optionally resized to X's grid.

    The projection is linear (no norm, no activation): with the three timesteps concatenated along
    channels it is also what weighs the timesteps (D3N-SPEC §2).
    """

    def __init__(self, c_y: int, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c_y, c, 1)

    def forward(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.conv(y)  # (B, C, h, w): projected before resizing (at 640 px the DDPM grid is the smaller)
        return y if size is None else resize_to(y, size)


GATES = ("none", "zero")


class OutputGate(nn.Module):
    """Z = X + γ ⊙ (F − X): a fusion block's output F blended into X per channel.

    `zero` starts γ at 0 (ReZero/LayerScale), so the hybrid is exactly its detector at step 0 and
    the DDPM branch enters only as far as training pulls it in; `none` is the paper's block (Z = F).
    γ is one value per channel, left out of weight decay by being 1-D.
    """

    def __init__(self, c: int, gate: str = "none"):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"fusion gate {gate!r}: expected one of {GATES}")
        self.gamma = nn.Parameter(torch.zeros(c)) if gate == "zero" else None

    def forward(self, x: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        if self.gamma is None:
            return fused
        return x + self.gamma.view(1, -1, 1, 1).to(x.dtype) * (fused - x)

    def log(self) -> dict[str, float]:
        """{'gate': mean |γ|} for the per-epoch fusion log, empty without a gate."""
        return {} if self.gamma is None else {"gate": float(self.gamma.detach().abs().mean())}


class FusionBlock(nn.Module):
    """Base of the fusion blocks: what each tells the ablation and the fusion log about itself (blocks.py).

    A subclass lists its `ablation_variants` (the ablation's `fusion=` name -> the YAML args of a row
    set to it) and reports its branch weights in `fusion_weights`; registering it is all else it needs.
    """

    d3n_role = "fusion"
    ablation_variants: ClassVar[dict[str, list]] = {}

    @classmethod
    def ablation_args(cls, variant: str, kv_tokens: int | None = None) -> list:
        """YAML args of a row the ablation sets to `variant`; `kv_tokens` matters only to blocks with attention."""
        return list(cls.ablation_variants[variant])

    def fusion_weights(self) -> dict[str, float]:
        """Branch name -> weight for the per-epoch log (Fig. 11); empty for a block without learned weights."""
        return {}
