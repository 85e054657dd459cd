"""Devices, seeds, EMA, fusing and distributed helpers shared by every script."""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

LOGGER = logging.getLogger(__name__)


def select_device(device: str = "") -> torch.device:
    """'' -> first CUDA GPU if any, else CPU; 'cpu', '0', 'cuda:1' as YOLOv5 users type them."""
    spec = str(device).strip().lower().replace("cuda:", "")
    if spec in ("", None):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.isdigit():
        if not torch.cuda.is_available() or int(spec) >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: no such CUDA device here (available: {torch.cuda.device_count()})")
        return torch.device(f"cuda:{spec}")
    raise ValueError(f"--device {device!r}: expected '', 'cpu' or a CUDA index such as 0")


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; determinism is a feature, seeds flow from flags."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU features whose bf16 matmuls beat fp32


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 bf16); without, bf16 autocast is emulated and
    slower than fp32 (measured 1.56x yolov5s's fp32 time on such a Xeon). Unknown (no cpuinfo) counts as no."""
    try:
        flags = next((line for line in open(cpuinfo) if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in FAST_BF16_FLAGS)


def time_sync() -> float:
    """Wall time after the GPU (if any) has finished its queued work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside a DataParallel/DistributedDataParallel wrapper."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution (same outputs, one op less)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D weights NHWC: oneDNN (CPU) and cuDNN pick faster convolution kernels for it, and every
    conv output follows the weights' layout. Measured here: yolov5s@640 inference -20 %, yolov5n training
    steps +22 % images/s (benchmarks/cpu_inference.py, benchmarks/train_throughput.py). Same numbers up
    to float rounding; the state_dict keys and shapes do not change."""
    return model.to(memory_format=torch.channels_last)


class ModelEMA:
    """Exponential moving average of weights; decay ramps up as 0.9999 * (1 - exp(-updates / 2000))."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_at = lambda n: decay * (1 - math.exp(-n / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        model_state = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(model_state[k].detach(), alpha=1 - d)


# --- distributed (torchrun) -------------------------------------------------------------------

def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group (nccl on GPU, gloo on CPU); False when not under torchrun."""
    _, local_rank, world = distributed_env()
    if world == 1 or dist.is_initialized():
        return dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first():
    """Rank 0 does the work first (datasets, caches), the others then reuse it."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()
