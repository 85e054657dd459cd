"""The forward diffusion process (eq. 2) apart from the denoiser: schedules, q_sample, ε-MSE loss.

Kept separate from the UNet (as in lucidrains' GaussianDiffusion) so that feature extraction and
training share one definition of x_t, and the network file holds no process logic. Timesteps are
0-based indices into the schedule: with the linear schedule √ᾱ_t at t = 100/150/250 is
0.946/0.887/0.722 (D3N-SPEC §1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEDULES = ("linear", "cosine")


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T, the number of noising steps
    schedule: str = "linear"  # 'linear' (Ho et al., the paper's anchors) or 'cosine' (Nichol & Dhariwal)
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    cosine_s: float = 0.008  # cosine schedule offset

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"diffusion.schedule {self.schedule!r}: expected one of {SCHEDULES}")
        if self.timesteps < 1:
            raise ValueError(f"diffusion.timesteps {self.timesteps}: must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """β_1..β_T in float64: linear between beta_start and beta_end, or from the cosine ᾱ curve."""
    if cfg.schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=torch.float64)
    steps = torch.arange(cfg.timesteps + 1, dtype=torch.float64) / cfg.timesteps
    alpha_bar = torch.cos((steps + cfg.cosine_s) / (1 + cfg.cosine_s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast against a (B, C, H, W) batch."""
    return values.gather(0, t).view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """q(x_t | x_0) with the schedule held as (non-persistent) buffers, so it follows .to(device)."""

    def __init__(self, cfg: DiffusionConfig | None = None):
        super().__init__()
        self.cfg = cfg or DiffusionConfig()
        betas = make_betas(self.cfg)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt().float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.cfg.timesteps

    def check_timesteps(self, timesteps: list[int]) -> None:
        bad = [t for t in timesteps if not 0 <= int(t) < self.num_timesteps]
        if bad:
            raise ValueError(f"timesteps {bad} outside the schedule's range 0..{self.num_timesteps - 1}")

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (eq. 2); x0, noise (B, C, H, W), t (B,) long."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def training_loss(self, model: nn.Module, x0: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """ε-prediction MSE at uniformly drawn t (Ho et al.'s simple loss)."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return F.mse_loss(model(self.q_sample(x0, t, noise), t), noise)
