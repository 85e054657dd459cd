"""The loop the DDPM and the ResVAE share: the lr schedule it follows, what it returns, how it stops."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from d3n_ext.stage1.training_loop import AdamSchedule, cosine_lr, train_steps


def test_lr_warms_up_then_decays_to_lr_times_lrf():
    lrs = [cosine_lr(s, 10, 1.0, 0.1, 2) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_it_steps_adam_on_the_first_term_and_returns_every_term():
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([3.0]))
    seen = []

    def loss_step(step: int):
        seen.append(step)
        return (w ** 2).sum(), w.detach().sum()

    updates = []
    history = train_steps([w], loss_step, AdamSchedule(steps=6, lr=0.1, lrf=0.1, grad_clip=1.0), "toy", "hint",
                          after_step=lambda: updates.append(w.item()), quiet=True)
    assert seen == list(range(6)) and len(history) == 6 and all(len(h) == 2 for h in history)
    assert history[0] == (9.0, 3.0) and w.item() < 3.0 and updates[-1] == w.item()


@pytest.mark.parametrize("per_epoch, where", [(0, "step 2"), (2, "epoch 1")])
def test_a_non_finite_loss_stops_with_where_and_what_to_do(per_epoch, where):
    w = nn.Parameter(torch.ones(1))

    def loss_step(step: int):
        return ((w * (float("nan") if step == 2 else 1.0)).sum(),)

    schedule = AdamSchedule(steps=4, lr=0.1, lrf=1.0, steps_per_epoch=per_epoch)
    with pytest.raises(FloatingPointError, match=rf"^ResVAE P3: loss is nan at {where}; lower --vae-lr$"):
        train_steps([w], loss_step, schedule, "ResVAE P3", "lower --vae-lr", quiet=True)
