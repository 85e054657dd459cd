"""ResVAE (section III-B): a residual convolutional VAE that compresses one scale of DDPM features.

No spatial downsampling: the latent map keeps the feature's grid so that it stays aligned with the
detector's P3/P4/P5 cells; only channels are compressed (512 -> 64 in the paper). Inputs are
features standardised per channel with train statistics (see vae_training.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class ResVAEConfig:
    in_channels: int  # the DDPM feature's channels at this scale
    latent_channels: int = 64
    hidden_channels: int | None = None  # None = in_channels
    num_blocks: int = 2  # basic blocks in the encoder; the decoder mirrors them
    logvar_min: float = -30.0  # log σ² is clamped so exp() stays finite
    logvar_max: float = 20.0

    @property
    def width(self) -> int:
        return self.hidden_channels or self.in_channels

    def to_dict(self) -> dict:
        return asdict(self)


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus identity, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _stem(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResVAEEncoder(nn.Module):
    """(B, C_feature, h, w) -> μ, log σ² each (B, C_latent, h, w)."""

    def __init__(self, cfg: ResVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.body = nn.Sequential(_stem(cfg.in_channels, cfg.width), *[BasicBlock(cfg.width) for _ in range(cfg.num_blocks)])
        self.mu = nn.Conv2d(cfg.width, cfg.latent_channels, 1)
        self.logvar = nn.Conv2d(cfg.width, cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(self.cfg.logvar_min, self.cfg.logvar_max)


class ResVAEDecoder(nn.Module):
    """(B, C_latent, h, w) -> (B, C_feature, h, w), with a linear output layer (features are signed)."""

    def __init__(self, cfg: ResVAEConfig):
        super().__init__()
        self.body = nn.Sequential(_stem(cfg.latent_channels, cfg.width), *[BasicBlock(cfg.width) for _ in range(cfg.num_blocks)])
        self.out = nn.Conv2d(cfg.width, cfg.in_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))


class ResVAE(nn.Module):
    def __init__(self, cfg: ResVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResVAEEncoder(cfg)
        self.decoder = ResVAEDecoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean μ: what the repository stores."""
        return self.encoder(x)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised reconstruction in training; the posterior mean's reconstruction in eval."""
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z), mu, logvar


def elbo_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              kl_weight: float = 1.0, reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MSE + kl_weight·KL(q(z|x) ‖ N(0, I)) -> (loss, mse, kl).

    'sum' sums both terms over each sample and averages over the batch (the ELBO up to constants);
    'mean' averages both per element. Mixing a mean MSE with a summed KL collapses the posterior.
    """
    se = (recon - x).pow(2).flatten(1)  # (B, C·h·w)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).flatten(1)  # (B, C_latent·h·w)
    if reduction == "sum":
        mse, kld = se.sum(1).mean(), kl.sum(1).mean()
    elif reduction == "mean":
        mse, kld = se.mean(), kl.mean()
    else:
        raise ValueError(f"reduction {reduction!r}: expected 'sum' or 'mean'")
    return mse + kl_weight * kld, mse, kld
