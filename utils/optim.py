"""Optimizer parameter groups and learning-rate schedules as YOLOv5 trains them."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    decay: float = 5e-4) -> torch.optim.Optimizer:
    """Three groups: normalisation weights (no decay), other weights (decay), biases (no decay).

    A block keeps a weight out of decay by naming it in a `no_weight_decay` class attribute.
    """
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    no_decay, decay_w, biases = [], [], []
    for module in model.modules():
        exempt = getattr(module, "no_weight_decay", ())
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                biases.append(p)
            elif isinstance(module, norm_types) or p.ndim <= 1 or pname in exempt:
                no_decay.append(p)
            else:
                decay_w.append(p)
    if not (no_decay or decay_w or biases):
        raise ValueError("no trainable parameters (is everything frozen with --freeze?)")
    groups = [{"params": no_decay}, {"params": decay_w, "weight_decay": decay}, {"params": biases, "weight_decay": 0.0}]
    if name == "SGD":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"--optimizer {name!r}: expected SGD, Adam or AdamW")
    return opt


def lr_factor(epochs: int, lrf: float, cosine: bool):
    """epoch -> multiplier of lr0: linear or cosine from 1 down to lrf over `epochs`."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def warmup_step(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch_factor: float, lr0: float,
                warmup_bias_lr: float, warmup_momentum: float, momentum: float) -> None:
    """During the first nw iterations ramp lr (biases down from warmup_bias_lr) and momentum."""
    for j, group in enumerate(optimizer.param_groups):
        start = warmup_bias_lr if j == 2 else 0.0
        group["lr"] = start + (lr0 * epoch_factor - start) * ni / nw
        if "momentum" in group:
            group["momentum"] = warmup_momentum + (momentum - warmup_momentum) * ni / nw
