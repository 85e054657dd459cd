"""DDPM features (section III-B, Fig. 3): input rule, noise rule, extraction, online encoding, decoding.

For an image x0 (whole image stretched to the DDPM size, [-1, 1]) and each t in the timesteps,
x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ONE ε for all t; ε is drawn from a generator seeded by the image's
decoded pixels (rule 'per-image') or by the seed alone ('shared'), so extraction is reproducible and
an unseen image encoded online gets the same noise it would have got in the repository. The UNet's
three decoder taps are kept per timestep: (B, T, C, h, w) per scale. Timesteps are combined only
after decoding (`combine_timesteps`): concatenated along channels (DDPM-Seg) or averaged.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from d3n_ext.stage1.checkpoints import Compressor, load_compressors, load_ddpm
from d3n_ext.stage1.config import FeatureConfig
from d3n_ext.stage1.diffusion import GaussianDiffusion
from d3n_ext.stage1.pca import ChannelPCA
from d3n_ext.stage1.repository import LatentRepository
from d3n_ext.stage1.unet import UNet
from utils.images import decode_image

LOGGER = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 (H, W, 3) by the core's reading rule (utils.images); grey files come with the channel replicated."""
    img, problem = decode_image(path)
    if img is None:
        raise ValueError(f"{path}: not a readable image ({problem})")
    return img


def pixel_key(image_bgr: np.ndarray) -> str:
    """sha256 of the decoded pixels (shape, dtype and bytes): the per-image noise seed's source."""
    h = hashlib.sha256(f"{image_bgr.shape}|{image_bgr.dtype}|".encode())
    h.update(np.ascontiguousarray(image_bgr).tobytes())
    return h.hexdigest()


def noise_seed(rule: str, seed: int, image_bgr: np.ndarray) -> int:
    """64-bit generator seed for an image's ε: from its pixels ('per-image') or the seed alone ('shared')."""
    source = pixel_key(image_bgr) if rule == "per-image" else "shared"
    return int.from_bytes(hashlib.sha256(f"{seed}:{source}".encode()).digest()[:8], "little") >> 1


def make_noise(rule: str, seed: int, image_bgr: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """ε (C, S, S) on the CPU: the same numbers on every machine and device."""
    generator = torch.Generator().manual_seed(noise_seed(rule, seed, image_bgr))
    return torch.randn(shape, generator=generator)


def to_ddpm_input(image_bgr: np.ndarray, size: int, channels: int = 3) -> torch.Tensor:
    """The whole image stretched (no letterbox) to size×size, RGB (or grey), scaled to [-1, 1]: (C, S, S)."""
    img = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_AREA)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None] if channels == 1 else img[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 127.5 - 1.0


class DDPMFeatureExtractor:
    """Frozen UNet + process -> per scale (B, T, C, h, w) float32 features, finest (P3) first."""

    def __init__(self, unet: UNet, diffusion: GaussianDiffusion, features: FeatureConfig):
        diffusion.check_timesteps(features.timesteps)
        self.unet, self.diffusion, self.features = unet.eval(), diffusion, features
        self.device = next(unet.parameters()).device

    def level_shapes(self) -> list[tuple[int, int, int]]:
        return self.unet.cfg.tap_shapes()

    def inputs(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 and ε, each (B, C, k·S, k·S) on the extractor's device (k = features.input_scale)."""
        cfg, f = self.unet.cfg, self.features
        size = cfg.image_size * f.input_scale
        x0 = torch.stack([to_ddpm_input(im, size, cfg.in_channels) for im in images])
        shape = (cfg.in_channels, size, size)
        noise = torch.stack([make_noise(f.noise, f.noise_seed, im, shape) for im in images])
        return x0.to(self.device), noise.to(self.device)

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        x0, noise = self.inputs(images)
        b, n_t = len(images), len(self.features.timesteps)
        t = torch.tensor(self.features.timesteps, device=self.device).repeat(b)  # (B·T,) image-major
        xt = self.diffusion.q_sample(x0.repeat_interleave(n_t, 0), t, noise.repeat_interleave(n_t, 0))
        taps = self.unet(xt, t, taps_only=True)  # [(B·T, C, k·h, k·w)] × 3
        k = self.features.input_scale
        taps = [F.avg_pool2d(f, k) if k > 1 else f for f in taps]  # back to tap_shapes(): (B·T, C, h, w)
        return [f.view(b, n_t, *f.shape[1:]) for f in taps]


class LatentEncoder:
    """Features -> stored latents: standardise per channel, compressor's encode (μ); raw features if none."""

    def __init__(self, extractor: DDPMFeatureExtractor, compressors: list[Compressor] | None):
        self.extractor, self.compressors = extractor, compressors

    def level_channels(self) -> list[int]:
        if self.compressors is None:
            return [c for c, _, _ in self.extractor.level_shapes()]
        return [_latent_channels(c) for c in self.compressors]

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Per scale (B, T, C_latent, h, w) float32."""
        feats = self.extractor(images)
        if self.compressors is None:
            return feats
        out = []
        for f, comp in zip(feats, self.compressors):
            b, t = f.shape[:2]
            x = (f.flatten(0, 1) - comp.mean[:, None, None]) / comp.std[:, None, None]
            z = comp.module.encode(x)
            out.append(z.view(b, t, *z.shape[1:]))
        return out


def _latent_channels(comp: Compressor) -> int:
    return comp.module.components if isinstance(comp.module, ChannelPCA) else comp.module.cfg.latent_channels


def encoder_from_repository(repo: LatentRepository, device: torch.device | str = "cpu") -> LatentEncoder:
    """The exact encoder a repository was built with, from the weights its manifest fingerprints."""
    unet, diffusion, _ = load_ddpm(repo.weight_file("ddpm"), device)
    features = FeatureConfig(**repo.manifest["features"])
    compressors = None
    if repo.kind == "latent":
        _, compressors, _ = load_compressors(repo.weight_file("compressor"), device)
    return LatentEncoder(DDPMFeatureExtractor(unet, diffusion, features), compressors)


class OnlineLatentEncoder:
    """Latents for images that are not in the repository (detect.py with the teacher on new images).

    Same input rule, noise rule and weights as the build, so an image that *is* in the repository
    gets the stored values back (up to float16 rounding and batch-size-dependent kernels).
    """

    def __init__(self, repo_root: str | Path, device: torch.device | str = "cpu"):
        self.repo = LatentRepository(repo_root)
        self.encoder = encoder_from_repository(self.repo, device)

    def __call__(self, image_bgr: np.ndarray) -> list[torch.Tensor]:
        """Per scale (T, C_latent, h, w) float16 on the encoder's device, like LatentRepository.lookup."""
        return [z[0] for z in self.encode_batch([image_bgr])]

    def encode_batch(self, images_bgr: list[np.ndarray]) -> list[torch.Tensor]:
        """Per scale (B, T, C_latent, h, w) float16."""
        return [z.half() for z in self.encoder(images_bgr)]


class FeatureDecoder(nn.Module):
    """Frozen FeatureMapper core (Fig. 5): latents -> DDPM features in raw feature units.

    Output = decoder(z)·std + mean with the train statistics of the compressor checkpoint (the
    manifest fingerprints it); `destandardise=False` keeps the standardised units the decoder
    was trained in. Accepts (B, C_latent, h, w) or (B, T, C_latent, h, w); any float dtype in.
    """

    def __init__(self, decoder: nn.Module, mean: torch.Tensor, std: torch.Tensor, destandardise: bool = True):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("mean", mean.float().clone() if destandardise else torch.zeros_like(mean).float())
        self.register_buffer("std", std.float().clone() if destandardise else torch.ones_like(std).float())
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FeatureDecoder":
        return super().train(False)  # frozen: BatchNorm must keep its running statistics

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-3]
        y = self.decoder(z.reshape(-1, *z.shape[-3:]).to(self.mean.dtype))  # (N, C_feature, h, w); fp16 latents in
        y = y * self.std[:, None, None] + self.mean[:, None, None]
        return y.view(*lead, *y.shape[1:])


def load_feature_decoders(repo_root: str | Path, device: torch.device | str = "cpu",
                          destandardise: bool = True) -> list[nn.Module]:
    """One frozen FeatureDecoder per scale (P3, P4, P5); identity-like for a raw repository."""
    repo = LatentRepository(repo_root)
    if repo.kind == "raw":
        return [FeatureDecoder(nn.Identity(), torch.zeros(lv.channels_feature), torch.ones(lv.channels_feature)).to(device)
                for lv in repo.levels]
    _, compressors, _ = load_compressors(repo.weight_file("compressor"), device)
    return [FeatureDecoder(c.module.decoder, c.mean, c.std, destandardise).to(device) for c in compressors]


def combine_timesteps(features: torch.Tensor, mode: str = "concat") -> torch.Tensor:
    """(B, T, C, h, w) -> (B, T·C, h, w) ('concat', DDPM-Seg's choice) or (B, C, h, w) ('mean')."""
    if mode == "concat":
        return features.flatten(1, 2)
    if mode == "mean":
        return features.mean(1)
    raise ValueError(f"combine mode {mode!r}: expected 'concat' or 'mean'")
