"""The optimisation loop both stage-1 networks train with: Adam, cosine lr, a stop on a non-finite loss.

The DDPM (ddpm_training.py) and each level's ResVAE (vae_training.py) differ only in what one step's
loss is; each passes that as `loss_step`, and this loop owns the rest, so both report, clip and
fail the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm


def cosine_lr(step: int, total: int, lr: float, lrf: float, warmup: int) -> float:
    """Linear warm-up, then cosine from lr down to lr·lrf at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    return lr * (lrf + (1 - lrf) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass(frozen=True)
class AdamSchedule:
    """How long a stage-1 network trains and at which learning rates."""

    steps: int  # optimiser steps
    lr: float  # Adam's initial learning rate
    lrf: float  # final lr = lr · lrf, cosine decay
    warmup: int = 0  # linear lr warm-up steps
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    steps_per_epoch: int = 0  # > 0: progress and errors count epochs of this many steps


def train_steps(params: Iterable[nn.Parameter], loss_step: Callable[[int], tuple[torch.Tensor, ...]],
                schedule: AdamSchedule, desc: str, hint: str, after_step: Callable[[], None] | None = None,
                quiet: bool = False) -> list[tuple[float, ...]]:
    """Run `schedule.steps` Adam steps on the first tensor `loss_step(step)` returns (the rest are logged terms).

    `after_step` runs after each optimiser step (an EMA update). A NaN/inf loss stops training with a
    FloatingPointError naming `desc`, the step (or epoch) and `hint`. Returns, per step, the values of
    the tensors `loss_step` returned.
    """
    params = list(params)
    opt = torch.optim.Adam(params, lr=schedule.lr)
    per_epoch = schedule.steps_per_epoch
    bar = tqdm(total=schedule.steps // per_epoch if per_epoch else schedule.steps, desc=desc, disable=quiet)
    history: list[tuple[float, ...]] = []
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, schedule.steps, schedule.lr, schedule.lrf, schedule.warmup)
        terms = loss_step(step)
        loss = terms[0]
        if not torch.isfinite(loss):
            where = f"epoch {step // per_epoch}" if per_epoch else f"step {step}"
            bar.close()
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at {where}; {hint}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if schedule.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        history.append(tuple(t.item() for t in terms))
        if not per_epoch or (step + 1) % per_epoch == 0:
            bar.update()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean([h[0] for h in history[-50:]]):.4f}")
    bar.close()
    return history
