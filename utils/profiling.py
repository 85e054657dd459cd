"""Parameters, GFLOPs and CPU latency of a model: one way of counting them for the layer table, the pipeline's
results table and the benchmarks, so that two tables never disagree on the same model and input size.

GFLOPs follow YOLOv5's convention, two FLOPs per multiply-add, counted by torch's FlopCounterMode on one
forward at the real input size (convolutions, matmuls and attention; element-wise ops are left out).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(fn: Callable[[], Any], custom_mapping: dict | None = None) -> float:
    """GFLOPs of everything `fn` runs: a forward, or a forward and its backward.

    `custom_mapping` ({aten op: count function}, FlopCounterMode's own format) adds ops the counter does
    not know, such as FFTs.
    """
    with FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a measurement (BatchNorm statistics untouched), the caller's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def forward_gflops(model: nn.Module, inputs: tuple, custom_mapping: dict | None = None) -> float:
    """GFLOPs of one forward `model(*inputs)` in eval mode without autograd."""
    with _eval_mode(model), torch.no_grad():
        return count_gflops(lambda: model(*inputs), custom_mapping)


def cpu_latency_ms(model: nn.Module, inputs: tuple, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of `model(*inputs)` over `runs` calls after `warmup` untimed ones, in eval and
    inference mode; model and inputs are expected on the CPU."""
    times = []
    with _eval_mode(model), torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(*inputs)
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)
