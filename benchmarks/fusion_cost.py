"""Cost of each fusion block at a 640 input of YOLOv5s, per level: CPU time at batch 1, parameters,
FLOPs and memory, next to YOLOv5s itself.

    python -m benchmarks.fusion_cost [--repeat 1] [--threads 2] [--levels P3 P4 P5] [--blocks dcf sum ...]

Shapes: detector maps 128x80x80 / 256x40x40 / 512x20x20 (P3/P4/P5); DDPM features of the paper
preset after decoding and timestep concatenation, 768x64x64 / 1152x32x32 / 1536x16x16.
FLOPs count matmuls, convolutions, attention (2 per multiply-add) and FFTs (~2.5 N log2 N per real
transform); element-wise ops are left out. "saved" is the activation memory held for backward
(unique storages, parameters excluded); "scores" is what the attention matrices would take if
materialised (the math path; CPU/GPU flash kernels avoid it).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

import d3n_ext  # noqa: F401  (registers the fusion blocks)
from d3n_ext.fusion.blocks import blocks_with_role, fusion_row, fusion_variants
from models.registry import BuildContext, lookup_block
from models.yolo import Model
from utils.profiling import count_gflops, count_parameters

LEVELS = {  # level: ((C, H, W) of the detector map, (C_y, h, w) of the DDPM map)
    "P3": ((128, 80, 80), (768, 64, 64)),
    "P4": ((256, 40, 40), (1152, 32, 32)),
    "P5": ((512, 20, 20), (1536, 16, 16)),
}
FILTERS = blocks_with_role("filter")  # YAML name -> class
BLOCK_NAMES = (*FILTERS, *fusion_variants())  # filters by name, fusion blocks by their ablation name
CTX = BuildContext(nc=80, anchors=None, width_multiple=1.0, depth_multiple=1.0)
ATEN = torch.ops.aten


class AttentionTally:
    """FLOP-counter entries for ops FlopCounterMode misses on CPU (flash attention, FFTs); also
    sums the bytes the attention scores would take if materialised."""

    def __init__(self):
        self.score_bytes = 0

    def sdpa(self, q, k, v, *args, **kwargs) -> int:
        self.score_bytes += math.prod(q[:-1]) * k[-2] * 4  # (B, heads, Nq, Nk) fp32
        return sdpa_flop_count(q, k, v)

    @staticmethod
    def sdpa_backward(grad_out, q, k, v, *args, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, q, k, v)

    @staticmethod
    def fft(x, dim, *args, out_shape=None, **kwargs) -> int:
        real = x if math.prod(x) >= math.prod(out_shape) else out_shape  # the real side of r2c / c2r
        n = math.prod(real[d] for d in dim)
        return int(2.5 * math.prod(real) * math.log2(max(n, 2)))

    def mapping(self) -> dict:
        return {ATEN._scaled_dot_product_flash_attention_for_cpu: self.sdpa,
                ATEN._scaled_dot_product_flash_attention_for_cpu_backward: self.sdpa_backward,
                ATEN._fft_r2c: self.fft, ATEN._fft_c2r: self.fft}


def make_block(name: str, level: str) -> tuple[nn.Module, tuple]:
    """The block and its inputs at `level`, built from a YAML row as a model would build it: X needs
    gradients (the detector trains), Y does not (frozen decoder). A filter reads Y on its own grid."""
    (c, h, w), (c_y, hy, wy) = LEVELS[level]
    x, y = torch.randn(1, c, h, w, requires_grad=True), torch.randn(1, c_y, hy, wy)
    if name in FILTERS:
        entry, ch_in, args, inputs = lookup_block(name), [c_y], [hy, wy], (y,)
    else:
        block_name, args = fusion_row(name)
        entry, ch_in, inputs = lookup_block(block_name), [c, c_y], ([x, y],)
    block, _ = entry.builder(entry.cls, ch_in, args, 1, CTX)
    return block, inputs


def count(block: nn.Module, inputs: tuple) -> tuple[float, float, float]:
    """(forward GFLOPs, forward+backward GFLOPs, attention-score MiB of the forward)."""
    tally = AttentionTally()
    fwd = count_gflops(lambda: block(*inputs), tally.mapping())
    fwd_bwd = count_gflops(lambda: block(*inputs).sum().backward(), AttentionTally().mapping())
    return fwd, fwd_bwd, tally.score_bytes / 2**20


def saved_mib(block: nn.Module, inputs: tuple) -> float:
    """MiB of unique non-parameter storages autograd keeps for backward."""
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(*inputs)
    del out
    return sum(storages.values()) / 2**20


def best_ms(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls (the least disturbed by other load); callers warm up first."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def timings(block: nn.Module, inputs: tuple, repeat: int) -> tuple[float, float]:
    """(forward ms without autograd, forward+backward ms)."""
    def forward():
        with torch.no_grad():
            block(*inputs)

    def forward_backward():
        block.zero_grad(set_to_none=True)
        block(*inputs).sum().backward()

    return best_ms(forward, repeat), best_ms(forward_backward, repeat)


def measure(name: str, level: str, repeat: int) -> dict:
    torch.manual_seed(0)
    block, inputs = make_block(name, level)
    gf, gfb, scores = count(block, inputs)
    fwd, fwd_bwd = timings(block, inputs, repeat)
    kv = ""
    if hasattr(block, "kv_grids"):  # blocks with attention say where their keys/values live
        (_, h, w), (_, hy, wy) = LEVELS[level]
        kv = " ".join(f"{k}:{a}x{b}" for k, (a, b) in block.kv_grids((h, w), (hy, wy)).items())
    return {"level": level, "block": name, "params": count_parameters(block), "gflops": gf,
            "gflops_fb": gfb, "saved": saved_mib(block, inputs), "scores": scores, "fwd": fwd, "fb": fwd_bwd,
            "kv": kv}


def yolov5s_reference(repeat: int) -> dict:
    """YOLOv5s (80 classes) at 640, batch 1: the yardstick the fusion costs are read against."""
    torch.manual_seed(0)
    model = Model("yolov5s.yaml").train()
    x = torch.randn(1, 3, 640, 640)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        sum(r.sum() for r in model(x)).backward()

    forward_backward()  # warm-up
    return {"params": count_parameters(model), "gflops": model.gflops(640),
            "fwd": best_ms(forward, repeat), "fb": best_ms(forward_backward, repeat)}


SUMMED = ("params", "gflops", "gflops_fb", "saved", "scores", "fwd", "fb")
ROW = ("{level:<5} {block:<12} {params:>10,} {gflops:>8.2f} {gflops_fb:>9.2f} {saved:>8.1f} {scores:>8.1f} "
       "{fwd:>9.1f} {fb:>9.1f}  {kv}")
HEAD = (f"{'level':<5} {'block':<12} {'params':>10} {'GFLOPs':>8} {'GFLOPs+b':>9} {'saved':>8} {'scores':>8} "
        f"{'fwd ms':>9} {'f+b ms':>9}  kv grids / ratios to YOLOv5s")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs per figure (best of); 3 is steadier (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS),
                        help="detector levels measured (default: all)")
    parser.add_argument("--blocks", nargs="+", default=list(BLOCK_NAMES), choices=list(BLOCK_NAMES),
                        help="filters and fusion blocks measured (default: all)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    opt = parse_args(argv)
    torch.set_num_threads(opt.threads)
    ref = yolov5s_reference(opt.repeat)
    print(f"YOLOv5s at 640, batch 1, {opt.threads} CPU threads: {ref['params']:,} params, "
          f"{ref['gflops']:.1f} GFLOPs, fwd {ref['fwd']:.0f} ms, fwd+bwd {ref['fb']:.0f} ms  (saved, scores: MiB)")
    print(HEAD)
    totals: dict[str, dict] = {}
    for level in opt.levels:
        for name in opt.blocks:
            r = measure(name, level, opt.repeat)
            print(ROW.format(**r), flush=True)
            t = totals.setdefault(name, dict.fromkeys(SUMMED, 0))
            for k in SUMMED:
                t[k] += r[k]
    print(f"\nsum over {'/'.join(opt.levels)}")
    for name, t in totals.items():
        ratios = (f"x{t['gflops'] / ref['gflops']:.2f} GFLOPs, x{t['fwd'] / ref['fwd']:.2f} fwd, "
                  f"x{t['fb'] / ref['fb']:.2f} f+b")
        print(ROW.format(level="all", block=name, kv=ratios, **t))

if __name__ == "__main__":
    main()
