"""ResVAE and PCA fitting on the raw train features (section III-B, Table III), and their report.

Inputs are the raw repository (one (N, T, C, h, w) float16 array per scale) restricted to rows of
the train split. Each (image, timestep) map is one sample. Features are standardised per channel
with the train mean/std, stored in the checkpoint beside the weights. The report compares the
ResVAE with a PCA of the same number of components on held-out (val) images: mean squared error
in standardised units, so 1.0 is what predicting the train mean would score.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from d3n_ext.stage1.checkpoints import Compressor
from d3n_ext.stage1.config import VAETrainConfig
from d3n_ext.stage1.features import DDPMFeatureExtractor, read_image
from d3n_ext.stage1.pca import ChannelPCA
from d3n_ext.stage1.repository import LatentRepository
from d3n_ext.stage1.resvae import ResVAE, ResVAEConfig, elbo_loss
from d3n_ext.stage1.training_loop import AdamSchedule, train_steps
from utils.torch_utils import distributed_env

LOGGER = logging.getLogger(__name__)

IN_MEMORY_LIMIT = 4 << 30  # bytes of train features held in RAM; larger sets are read from the memmap per batch


class FeatureSamples:
    """The (image, timestep) maps of one scale for the given rows, served standardised as float32."""

    def __init__(self, array: np.ndarray, rows: list[int]):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.timesteps = array.shape[1]
        nbytes = len(rows) * int(np.prod(array.shape[1:])) * 2
        self.array = np.asarray(array[self.rows]) if nbytes <= IN_MEMORY_LIMIT else array
        self.in_memory = nbytes <= IN_MEMORY_LIMIT

    def __len__(self) -> int:
        return len(self.rows) * self.timesteps

    def get(self, idx: np.ndarray) -> torch.Tensor:
        """(B, C, h, w) float32 for sample indices (row-major over image, timestep)."""
        idx = np.sort(idx)
        r, t = idx // self.timesteps, idx % self.timesteps
        r = r if self.in_memory else self.rows[r]
        return torch.from_numpy(np.asarray(self.array[r, t], dtype=np.float32))

    def chunks(self, size: int = 64):
        for s in range(0, len(self), size):
            yield self.get(np.arange(s, min(s + size, len(self))))


def channel_stats(samples: FeatureSamples) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over all train samples and positions (float64 accumulation)."""
    n, s, ss = 0, 0.0, 0.0
    for x in samples.chunks(256):
        v = x.double().transpose(0, 1).flatten(1)  # (C, N·h·w)
        n, s, ss = n + v.shape[1], s + v.sum(1), ss + (v * v).sum(1)
    mean = s / n
    std = (ss / n - mean * mean).clamp(min=0).sqrt().clamp(min=1e-5)
    return mean.float(), std.float()


def train_level_vae(samples: FeatureSamples, mean: torch.Tensor, std: torch.Tensor, cfg: ResVAEConfig,
                    tc: VAETrainConfig, device: torch.device, seed: int, desc: str, quiet: bool) -> tuple[ResVAE, dict]:
    """Adam + cosine lr on the ELBO of standardised features; DDP-averaged under torchrun."""
    rank, _, world = distributed_env()
    torch.manual_seed(seed)
    vae = ResVAE(cfg).to(device)
    model = DistributedDataParallel(vae) if world > 1 else vae
    rng = np.random.default_rng(seed + rank)
    batch = max(1, min(tc.batch_size, len(samples)) // world)
    steps_per_epoch = max(1, -(-len(samples) // tc.batch_size))
    schedule = AdamSchedule(tc.epochs * steps_per_epoch, tc.lr, tc.lrf, steps_per_epoch=steps_per_epoch)
    t0, order = time.time(), np.empty(0, dtype=np.int64)
    mean, std = mean.to(device)[:, None, None], std.to(device)[:, None, None]

    def loss_step(step: int) -> tuple[torch.Tensor, ...]:
        """(ELBO, its MSE term, its KL term) on the next batch; each epoch visits the samples in a new order."""
        nonlocal order
        i = step % steps_per_epoch
        if i == 0:
            order = rng.permutation(len(samples))
        idx = order[(i * batch) % len(order):][:batch]
        x = (samples.get(idx).to(device) - mean) / std
        return elbo_loss(x, *model(x), tc.kl_weight, tc.reduction)

    hist = train_steps(vae.parameters(), loss_step, schedule, desc, "lower --vae-lr", quiet=quiet or rank != 0)
    last = np.mean(hist[-steps_per_epoch:], axis=0)
    return vae.eval(), {"epochs": tc.epochs, "steps": len(hist), "seconds": round(time.time() - t0, 1),
                        "loss": float(last[0]), "mse_term": float(last[1]), "kl_term": float(last[2])}


def fit_compressors(raw: LatentRepository, tc: VAETrainConfig, device: torch.device, seed: int = 0,
                    quiet: bool = False) -> tuple[list[Compressor], list[Compressor], list[dict]]:
    """Per scale: train statistics, a ResVAE and a same-width PCA, from the train and unlabeled rows of `raw`."""
    rows = [i for i, splits in enumerate(raw.splits) if {"train", "unlabeled"} & set(splits)]
    if not rows:
        raise ValueError(f"{raw.root}: no train or unlabeled rows to fit the ResVAE on")
    arrays = raw._open_arrays()  # noqa: SLF001 (same package)
    vaes, pcas, logs = [], [], []
    for level, array in zip(raw.levels, arrays):
        samples = FeatureSamples(array, rows)
        mean, std = channel_stats(samples)
        cfg = ResVAEConfig(level.channels_feature, tc.latent_channels, tc.hidden_channels, tc.num_blocks)
        vae, log = train_level_vae(samples, mean, std, cfg, tc, device, seed, f"ResVAE {level.name}", quiet)
        standardised = ((x - mean[:, None, None]) / std[:, None, None] for x in samples.chunks())
        pca = ChannelPCA.fit(standardised, level.channels_feature, tc.latent_channels)
        vaes.append(Compressor(level.name, vae, mean.to(device), std.to(device)))
        pcas.append(Compressor(level.name, pca.to(device), mean.to(device), std.to(device)))
        log["pca_explained_variance"] = float(pca.explained_variance_ratio.sum())
        logs.append({"level": level.name, "samples": len(samples), **log})
        LOGGER.info("ResVAE %s: %d samples, loss %.1f (mse %.1f + kl %.1f), %.0f s", level.name, len(samples),
                    log["loss"], log["mse_term"], log["kl_term"], log["seconds"])
    return vaes, pcas, logs


@torch.no_grad()
def reconstruction_errors(batches, compressors: dict[str, list[Compressor]]) -> dict[str, list[float]]:
    """Mean squared error per scale of each compressor's encode -> decode, in standardised units.

    `batches` yields per-scale raw feature lists [(B, T, C, h, w)] × 3; all compressors share the
    train standardisation, so the errors are comparable (1.0 = predicting the train mean).
    """
    names = list(compressors)
    reference = compressors[names[0]]
    sse = {n: np.zeros(len(reference)) for n in names}
    count = np.zeros(len(reference))
    for feats in batches:
        for i, f in enumerate(feats):
            mean, std = reference[i].mean[:, None, None], reference[i].std[:, None, None]
            x = (f.flatten(0, 1).to(mean.device) - mean) / std  # (B·T, C, h, w)
            count[i] += x.numel()
            for n in names:
                module = compressors[n][i].module
                sse[n][i] += (module.decoder(module.encode(x)) - x).pow(2).sum().item()
    if not count.any():
        raise ValueError("reconstruction report: no images to evaluate")
    return {n: (sse[n] / count).tolist() for n in names}


def image_feature_batches(extractor: DDPMFeatureExtractor, paths: list[Path], batch_size: int, quiet: bool = True):
    """Raw features of images computed on the fly (for held-out images that have no raw storage)."""
    for s in tqdm(range(0, len(paths), batch_size), desc="held-out features", disable=quiet, leave=False):
        yield extractor([read_image(p) for p in paths[s:s + batch_size]])


def repository_feature_batches(raw: LatentRepository, rows: list[int], batch_size: int = 32):
    """Raw features of stored rows, as float32 tensors on the CPU."""
    arrays = raw._open_arrays()  # noqa: SLF001 (same package)
    for s in range(0, len(rows), batch_size):
        r = rows[s:s + batch_size]
        yield [torch.from_numpy(np.asarray(a[r], dtype=np.float32)) for a in arrays]
