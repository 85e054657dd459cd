"""ADM-style UNet noise predictor (guided-diffusion layout) that can also return three decoder taps.

The taps are the outputs of the three deepest decoder levels' last block, the one that ends in the
×2 upsample (D3N-SPEC §2). With the `paper` preset (64 px, base 128, multipliers 1,2,3,4) they are
256×64×64, 384×32×32 and 512×16×16 — the grids of YOLO's P3/P4/P5 for a 512-px detector input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.config import dataclass_from_mapping
from utils.image_size import check_img_size

NUM_TAPS = 3  # P3, P4, P5


@dataclass
class UNetConfig:
    image_size: int = 64  # input side in pixels (images are stretched to it)
    in_channels: int = 3  # 3 (RGB; grey images replicated) or 1 (grey)
    base_channels: int = 128  # width of the first level
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # width per level, × base
    num_res_blocks: int = 2  # residual blocks per encoder level (decoder levels get one more)
    attention_resolutions: list[int] = field(default_factory=lambda: [16, 8])  # feature sides with self-attention
    num_head_channels: int = 64  # channels per attention head
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.channel_mult = [int(m) for m in self.channel_mult]
        self.attention_resolutions = [int(r) for r in self.attention_resolutions]
        levels = len(self.channel_mult)
        if levels < NUM_TAPS + 1:
            raise ValueError(f"unet.channel_mult {self.channel_mult}: needs >= {NUM_TAPS + 1} levels for {NUM_TAPS} decoder taps")
        # each level halves the side, so the DDPM size is rounded up as the detector's --imgsz is
        self.image_size = check_img_size(self.image_size, 2 ** (levels - 1), "unet.image_size")
        for width in self.widths:
            if width % self.norm_groups or width % self.num_head_channels:
                raise ValueError(f"unet: width {width} is not divisible by norm_groups={self.norm_groups} "
                                 f"and num_head_channels={self.num_head_channels}")

    @property
    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    def tap_shapes(self) -> list[tuple[int, int, int]]:
        """(C, h, w) of the taps, finest (P3) first: decoder level i upsampled to side image_size / 2**(i-1)."""
        levels = range(len(self.channel_mult) - NUM_TAPS, len(self.channel_mult))
        return [(self.widths[i], self.image_size >> (i - 1), self.image_size >> (i - 1)) for i in levels]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "unet") -> "UNetConfig":
        return dataclass_from_mapping(cls, d, source)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, timestep scale-shift on the second norm, dropout, conv; 1×1 skip if widths differ."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.out_norm = nn.GroupNorm(groups, c_out)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Global multi-head self-attention over the H·W positions, residual, output projection zero-initialised."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = channels // head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNetBlock(nn.Module):
    """One residual block, followed by self-attention at the configured resolutions."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, cfg.norm_groups, cfg.dropout)
        self.attn = AttentionBlock(c_out, cfg.num_head_channels, cfg.norm_groups) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ε-predictor ε_θ(x_t, t); `forward(x, t, taps_only=True)` stops after the third decoder tap."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, emb_dim, widths = cfg.base_channels, 4 * cfg.base_channels, cfg.widths
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down_blocks, self.downsamples, skip_widths = nn.ModuleList(), nn.ModuleList(), [base]
        ch, side = base, cfg.image_size
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(UNetBlock(ch, width, emb_dim, cfg, side in cfg.attention_resolutions))
                ch = width
                skip_widths.append(ch)
            self.down_blocks.append(blocks)
            last = level == len(widths) - 1
            self.downsamples.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skip_widths.append(ch)
                side //= 2
        self.middle = nn.ModuleList([UNetBlock(ch, ch, emb_dim, cfg, True), UNetBlock(ch, ch, emb_dim, cfg, False)])
        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(UNetBlock(ch + skip_widths.pop(), width, emb_dim, cfg, side in cfg.attention_resolutions))
                ch = width
            self.up_blocks.append(blocks)
            self.upsamples.append(Upsample(ch) if level else nn.Identity())
            side *= 2 if level else 1
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, cfg.in_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                taps_only: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """x (B, C, S, S), t (B,) -> ε̂ (B, C, S, S), or the taps [P3 (B, C1, S, S), P4, P5] when taps_only."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))  # (B, 4·base)
        h = self.conv_in(x)
        skips = [h]
        for blocks, down in zip(self.down_blocks, self.downsamples):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        taps = []
        for blocks, up in zip(self.up_blocks, self.upsamples):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(h)
                taps.append(h)
                if taps_only and len(taps) == NUM_TAPS:
                    return taps[::-1]
        return self.out(h)
