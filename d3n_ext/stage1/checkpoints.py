"""The DDPM and compressor (ResVAE or PCA) checkpoints of stage 1: layouts, saving and rebuilding.

Both are plain dicts (configs as dicts, weights as state_dicts) written with utils.checkpoints, so
they load with weights_only=True and rebuild their networks without importing pickled classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from d3n_ext.stage1.diffusion import DiffusionConfig, GaussianDiffusion
from d3n_ext.stage1.pca import ChannelPCA
from d3n_ext.stage1.resvae import ResVAE, ResVAEConfig
from d3n_ext.stage1.unet import UNet, UNetConfig
from utils.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

COMPRESSOR_KINDS = ("resvae", "pca")
LEVEL_NAMES = ("P3", "P4", "P5")
STRIDE_HINTS = (8, 16, 32)


def save_ddpm(path: Path, unet: nn.Module, unet_cfg: UNetConfig, diffusion_cfg: DiffusionConfig,
              info: dict[str, Any]) -> None:
    """`unet` is the EMA copy: the weights that produce the features."""
    save_checkpoint({"kind": "ddpm", "unet": unet_cfg.to_dict(), "diffusion": diffusion_cfg.to_dict(),
                     "state_dict": {k: v.detach().cpu() for k, v in unet.state_dict().items()}, "info": info}, path)


def load_ddpm(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, GaussianDiffusion, dict]:
    """Rebuild the frozen (eval, no-grad) UNet and its diffusion process from ddpm.pt."""
    ckpt = load_checkpoint(path, expect="ddpm")
    try:
        unet = UNet(UNetConfig.from_dict(ckpt["unet"], f"{path}: unet"))
        unet.load_state_dict(ckpt["state_dict"])
        diffusion = GaussianDiffusion(DiffusionConfig(**ckpt["diffusion"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: DDPM checkpoint does not rebuild ({str(e).splitlines()[0][:160]})") from None
    return unet.to(device).eval().requires_grad_(False), diffusion.to(device), ckpt


@dataclass
class Compressor:
    """One scale's compressor with the standardisation it expects: encode((x - mean) / std)."""
    name: str
    module: nn.Module  # ResVAE or ChannelPCA: .encode(x) -> latents, .decoder(z) -> standardised features
    mean: torch.Tensor  # (C,) raw-feature mean over the train split
    std: torch.Tensor  # (C,)


def save_compressors(path: Path, kind: str, compressors: list[Compressor], info: dict[str, Any]) -> None:
    levels = []
    for c in compressors:
        cfg = c.module.cfg.to_dict() if kind == "resvae" else {"channels": c.module.channels, "components": c.module.components}
        levels.append({"name": c.name, "config": cfg, "mean": c.mean.detach().cpu().float(), "std": c.std.detach().cpu().float(),
                       "state_dict": {k: v.detach().cpu() for k, v in c.module.state_dict().items()}})
    save_checkpoint({"kind": kind, "levels": levels, "info": info}, path)


def _build_compressor(kind: str, cfg: dict) -> nn.Module:
    return ResVAE(ResVAEConfig(**cfg)) if kind == "resvae" else ChannelPCA(cfg["channels"], cfg["components"])


def load_compressors(path: str | Path, device: torch.device | str = "cpu") -> tuple[str, list[Compressor], dict]:
    """Rebuild the per-scale compressors of vae.pt / pca.pt, frozen and in eval mode."""
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind")
    if kind not in COMPRESSOR_KINDS:
        raise CheckpointError(f"{path}: holds a {kind!r} checkpoint, expected one of {COMPRESSOR_KINDS}")
    out = []
    try:
        for level in ckpt["levels"]:
            module = _build_compressor(kind, level["config"])
            module.load_state_dict(level["state_dict"])
            module = module.to(device).eval().requires_grad_(False)
            out.append(Compressor(level["name"], module, level["mean"].to(device), level["std"].to(device)))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: {kind} checkpoint does not rebuild ({str(e).splitlines()[0][:160]})") from None
    return kind, out, ckpt
