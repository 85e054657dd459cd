"""The linear probe itself: per-channel standardisation, a class-balanced 1×1 conv fitted with Adam, and its scores.

A 1×1 conv on a feature map is one linear map applied to every cell, so the probe is fitted on
cells as rows: x (N, C) -> logits (N, nc + 1), the last class being background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ProbeSettings:
    epochs: int = 30  # passes over the train cells
    batches: int = 10  # Adam steps per epoch (cells / batches per step): 300 steps converge at any cell count
    lr: float = 0.01  # Adam, constant
    weight_decay: float = 1e-4  # keeps the weights finite on separable cells
    seed: int = 0  # cell order of the mini-batches


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of train cells (N, ...) in float64; constant channels get std 1."""
    mean = x.mean(0, dtype=np.float64)
    std = x.std(0, dtype=np.float64)
    return mean, np.where(std > 1e-8, std, 1.0)


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(N, ...) cells -> (N, C) float32 in units of the train statistics, channels flattened."""
    return torch.from_numpy(((x - mean) / std).astype(np.float32).reshape(len(x), -1))


def class_weights(y: torch.Tensor, classes: int) -> torch.Tensor:
    """Cross-entropy weights N / (K·n_c) over the K classes present, 0 for absent ones: background dominates."""
    counts = torch.bincount(y, minlength=classes).double()
    present = counts > 0
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, s: ProbeSettings) -> nn.Linear:
    """Fit logits = W·x + b on the train cells x (N, C), y (N,) with class-balanced cross-entropy.

    Starts from zero weights and shuffles with a seeded generator, so a probe is a function of its
    data and settings alone.
    """
    probe = nn.Linear(x.shape[1], classes).to(x.device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    weights = class_weights(y.cpu(), classes).to(x.device)
    opt = torch.optim.Adam(probe.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    generator = torch.Generator().manual_seed(s.seed)
    batch_size = max(1, -(-len(x) // s.batches))
    for _ in range(s.epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            idx = idx.to(x.device)
            loss = F.cross_entropy(probe(x[idx]), y[idx], weight=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return probe.eval().requires_grad_(False)


@torch.no_grad()
def predict(probe: nn.Linear, x: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """(N, C) cells -> (N, nc + 1) float32 class probabilities."""
    return torch.cat([probe(part).softmax(1).cpu() for part in x.split(chunk)]).numpy()


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve, sum of (R_n − R_{n−1})·P_n over distinct score thresholds.

    Cells with equal scores enter together, so a constant score gives the positives' share, the chance level.
    """
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last cell of each score value
    tp = np.cumsum(positive)[ends]
    precision, recall = tp / (ends + 1), tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def probe_scores(probs: np.ndarray, y: np.ndarray, nc: int) -> dict[str, float]:
    """mIoU and mean per-cell AP over the defect classes present in y, and defect-vs-background AP.

    probs (N, nc + 1), y (N,) with nc = background. The last score asks only *where* the defects are.
    """
    classes = [c for c in range(nc) if (y == c).any()]
    pred = probs.argmax(1)
    conf = np.bincount(y * (nc + 1) + pred, minlength=(nc + 1) ** 2).reshape(nc + 1, nc + 1)  # (true, predicted)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    nan = float("nan")
    return {"mIoU": float(np.mean(tp[classes] / union[classes])) if classes else nan,
            "cell AP": float(np.mean([average_precision(probs[:, c], y == c) for c in classes])) if classes else nan,
            "defect AP": average_precision(1.0 - probs[:, nc], y != nc)}
