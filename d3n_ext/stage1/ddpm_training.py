"""DDPM pre-training on the train split (section III-B, IV-A): ε-prediction, Adam, cosine lr, EMA.

The images are small at the DDPM's size (64 px: 12 KiB each), so the whole train split is held in
memory as uint8 and batches are drawn from it; under torchrun every rank draws its own batches
(seeded by rank) and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from d3n_ext.stage1.checkpoints import save_ddpm
from d3n_ext.stage1.config import Stage1Config
from d3n_ext.stage1.diffusion import GaussianDiffusion
from d3n_ext.stage1.reuse import ddpm_training_record
from d3n_ext.stage1.features import read_image, to_ddpm_input
from d3n_ext.stage1.training_loop import AdamSchedule, train_steps
from d3n_ext.stage1.unet import UNet
from utils.torch_utils import ModelEMA, distributed_env

LOGGER = logging.getLogger(__name__)


def load_ddpm_images(paths: list[Path], size: int, channels: int, quiet: bool = False) -> torch.Tensor:
    """(N, C, S, S) uint8: every image stretched to the DDPM size (the same rule as extraction)."""
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc="loading DDPM images", disable=quiet, leave=False)):
        out[i] = ((to_ddpm_input(read_image(p), size, channels) + 1) * 127.5).round().to(torch.uint8)
    return out


@dataclass
class BatchSampler:
    """Random epochs over the in-memory images, with optional horizontal flips and random crops, on the device."""
    images: torch.Tensor  # (N, C, S, S) uint8
    batch_size: int
    hflip: bool
    generator: torch.Generator
    crop: int = 0  # side of a random crop per sample (features.input_scale > 1); 0 = the whole image

    def __post_init__(self) -> None:
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def next(self, device: torch.device) -> torch.Tensor:
        """(B, C, S, S) float in [-1, 1]."""
        if self.pos + self.batch_size > len(self.order):
            self.order, self.pos = torch.randperm(len(self.images), generator=self.generator), 0
            if len(self.order) < self.batch_size:  # fewer images than a batch: repeat them
                self.order = self.order.repeat(-(-self.batch_size // len(self.order)))
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        x = self.images[idx]
        if self.crop and self.crop < x.shape[-1]:
            corners = torch.randint(0, x.shape[-1] - self.crop + 1, (len(idx), 2), generator=self.generator).tolist()
            x = torch.stack([im[:, r:r + self.crop, c:c + self.crop] for im, (r, c) in zip(x, corners)])
        x = x.to(device).float() / 127.5 - 1
        if self.hflip:
            flip = torch.rand(len(idx), generator=self.generator) < 0.5
            x[flip.to(device)] = x[flip.to(device)].flip(-1)
        return x


def train_ddpm(cfg: Stage1Config, train_images: list[Path], out: Path, device: torch.device,
               seed: int = 0, quiet: bool = False) -> dict:
    """Train the UNet from scratch and save its EMA weights to `out` (ddpm.pt); returns the log."""
    rank, _, world = distributed_env()
    if not train_images:
        raise ValueError("train-ddpm: the data's train split has no images")
    tc = cfg.ddpm_train
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = UNet(cfg.unet).to(device)
    diffusion = GaussianDiffusion(cfg.diffusion).to(device)
    ema = ModelEMA(model, decay=tc.ema_decay, tau=tc.ema_tau)
    ddp = DistributedDataParallel(model) if world > 1 else model
    scale = cfg.features.input_scale  # the pixel scale the features will be taken at: train on crops of it
    images = load_ddpm_images(train_images, cfg.unet.image_size * scale, cfg.unet.in_channels, quiet or rank != 0)
    sampler = BatchSampler(images, max(1, tc.batch_size // world), tc.hflip, torch.Generator().manual_seed(seed + rank),
                           crop=cfg.unet.image_size)  # the whole image at scale 1
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1000 + rank)
    LOGGER.info("DDPM: %d train images, %d iterations, batch %d, Adam lr %g -> %g (cosine, warm-up %d), EMA %g",
                len(images), tc.iterations, tc.batch_size, tc.lr, tc.lr * tc.lrf, tc.warmup_iters, tc.ema_decay)

    def loss_step(step: int) -> tuple[torch.Tensor]:
        return (diffusion.training_loss(ddp, sampler.next(device), generator=noise_gen),)  # ε-prediction MSE

    schedule = AdamSchedule(tc.iterations, tc.lr, tc.lrf, tc.warmup_iters, tc.grad_clip)
    t0 = time.time()
    history = train_steps(model.parameters(), loss_step, schedule, "DDPM training", "lower --lr",
                          after_step=lambda: ema.update(model), quiet=quiet or rank != 0)
    losses = [h[0] for h in history]
    log = {"iterations": tc.iterations, "train_images": len(images), "seconds": round(time.time() - t0, 1),
           "final_loss": float(np.mean(losses[-50:])) if losses else None, "lr": tc.lr, "lrf": tc.lrf, "world": world,
           "input_scale": scale, **ddpm_training_record(cfg, train_images, seed)}
    if rank == 0:
        save_ddpm(out, ema.ema, cfg.unet, cfg.diffusion, log)
        LOGGER.info("DDPM: saved %s (final loss %.4f, %.0f s)", out, log["final_loss"] or float("nan"), log["seconds"])
    return log
