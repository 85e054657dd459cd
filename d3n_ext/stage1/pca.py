"""Per-pixel channel PCA, the paper's alternative compressor (Table III).

Each feature vector (one grid cell, C channels) is projected onto the top-K principal directions of
the train features; projection and inverse are both 1×1 convolutions, so a PCA repository is read
exactly like a ResVAE one (`encode` -> latents, `decoder` -> features).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn


class CovarianceAccumulator:
    """Streaming mean and covariance of channel vectors over many (B, C, h, w) batches, in float64."""

    def __init__(self, channels: int):
        self.n = 0
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        v = x.detach().to("cpu", torch.float64).transpose(0, 1).flatten(1)  # (C, B·h·w)
        self.n += v.shape[1]
        self.sum += v.sum(1)
        self.outer += v @ v.T

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ValueError("PCA needs at least two feature vectors")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return mean, cov


class ChannelPCA(nn.Module):
    """encode: (B, C, h, w) -> (B, K, h, w) coefficients; decoder: the inverse projection plus mean."""

    def __init__(self, channels: int, components: int):
        super().__init__()
        if not 0 < components <= channels:
            raise ValueError(f"PCA components {components}: must be in 1..{channels} (the feature's channels)")
        self.channels, self.components = channels, components
        self.encoder = nn.Conv2d(channels, components, 1)
        self.decoder = nn.Conv2d(components, channels, 1)
        self.register_buffer("explained_variance_ratio", torch.zeros(components))
        self.requires_grad_(False)

    @classmethod
    def fit(cls, batches: Iterable[torch.Tensor], channels: int, components: int) -> "ChannelPCA":
        acc = CovarianceAccumulator(channels)
        for x in batches:
            acc.update(x)
        mean, cov = acc.mean_cov()
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = eigvals.flip(0)[:components].clamp(min=0)
        basis = eigvecs.flip(1)[:, :components]  # (C, K), orthonormal columns
        pca = cls(channels, components)
        pca.encoder.weight.copy_(basis.T[:, :, None, None].float())
        pca.encoder.bias.copy_((-basis.T @ mean).float())
        pca.decoder.weight.copy_(basis[:, :, None, None].float())
        pca.decoder.bias.copy_(mean.float())
        pca.explained_variance_ratio.copy_((order / eigvals.clamp(min=0).sum().clamp(min=1e-12)).float())
        return pca

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The rank-K reconstruction of x."""
        return self.decoder(self.encoder(x))
