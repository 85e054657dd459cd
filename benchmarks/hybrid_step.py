"""Training-step cost of the D3N hybrid (teacher) against its plain YOLOv5 baseline at the same image size.

    python -m benchmarks.hybrid_step [--imgsz 256] [--batch-size 8] [--steps 7] [--threads 2]
                                     [--pairs n:yolov5n-d3n s:yolov5s-d3n-lite ...] [--fusion-cost]

A step is what the Trainer does per batch minus the loader and EMA: forward, YOLOv5 loss, backward,
SGD step. The hybrid's latents are random but shaped like the tiny stage-1 preset's (3 timesteps x
8 channels on the 32/16/8 grids a 256-px detector reads), its rows bound with `preset_levels`;
weights are random (cost does not depend on them). Baseline and hybrid steps alternate, so a busy
machine slows both alike; medians of `--steps` timed steps. GFLOP: the step's forward + backward
(torch FlopCounterMode, CPU flash attention and FFTs counted too). Memory: the CUDA allocator's
peak, or on the CPU the growth of the peak resident set (VmHWM) during two steps over the built
model and batch, in a fresh subprocess per model. `n:yolov5n-d3n` compares yolov5n.yaml with
yolov5n-d3n.yaml. `--fusion-cost` adds benchmarks/fusion_cost.py's figures (FreqFilter and dcf at
P3/P4/P5 of a 640 input, paper preset) and the frozen decoders' cost there.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import d3n_ext  # noqa: F401  (registers FeatureMapper and the fusion blocks)
from d3n_ext.fusion.binding import bind_levels, preset_levels, yaml_rows
from d3n_ext.fusion.blocks import modules_with_role, row_role
from d3n_ext.fusion.feature_mapper import FeatureMapper
from models.yolo import Model, load_model_yaml
from utils.hyp import Hyp
from utils.loss import ComputeLoss
from utils.optim import build_optimizer
from utils.profiling import count_gflops

NC = 6  # NEU-DET's classes
ROOT = Path(__file__).resolve().parents[1]  # the memory subprocess runs `python -m` from here


def build(cfg: str, preset: str, device: torch.device) -> Model:
    d, _ = load_model_yaml(cfg)
    if any(row_role(r) == "mapper" for _, _, r in yaml_rows(d)):
        d = bind_levels(d, preset_levels(preset), f"the {preset} preset")
    torch.manual_seed(0)
    return Model(d, nc=NC).to(device).train()


class Step:
    """One training step of `model` on a fixed random batch (images, boxes, latents)."""

    def __init__(self, model: Model, imgsz: int, batch: int, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.model, self.device = model, device
        self.x = torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device)
        self.targets = torch.tensor([[i, i % NC, 0.5, 0.5, 0.2, 0.3] for i in range(batch)], device=device)
        self.side = {k: torch.randn(batch, c, imgsz // s, imgsz // s, generator=g).half().to(device)
                     for k, (c, s) in model.side_inputs.items()}  # float16, as LatentDataset delivers them
        self.loss = ComputeLoss(model, Hyp(), imgsz)
        self.optimizer = build_optimizer(model, "SGD", 0.01)

    def __call__(self) -> None:
        out = self.model(self.x, self.side) if self.side else self.model(self.x)
        loss, _ = self.loss(out, self.targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def gflop(self) -> float:
        from benchmarks.fusion_cost import AttentionTally  # counts the CPU flash attention and FFTs too

        def forward_backward() -> None:
            out = self.model(self.x, self.side) if self.side else self.model(self.x)
            self.loss(out, self.targets)[0].backward()

        gflop = count_gflops(forward_backward, AttentionTally().mapping())
        self.optimizer.zero_grad(set_to_none=True)
        return gflop


def timed(step: Step) -> float:
    if step.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if step.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def step_times(a: Step, b: Step, steps: int, warmup: int = 2) -> tuple[float, float]:
    """Median ms of a and b, their steps alternating."""
    ta, tb = [], []
    for i in range(warmup + steps):
        ra, rb = timed(a), timed(b)
        if i >= warmup:
            ta.append(ra)
            tb.append(rb)
    return statistics.median(ta), statistics.median(tb)


def peak_memory_mib(cfg: str, opt: argparse.Namespace) -> float:
    """Peak memory of training steps of one model: CUDA allocator peak, or the CPU max-RSS growth (subprocess)."""
    device = torch.device(opt.device)
    if device.type == "cuda":
        step = Step(build(cfg, opt.preset, device), opt.imgsz, opt.batch_size, device)
        step()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) / 2**20
    cmd = [sys.executable, "-m", "benchmarks.hybrid_step", "--memory-of", cfg, "--imgsz", str(opt.imgsz),
           "--batch-size", str(opt.batch_size), "--threads", str(opt.threads), "--preset", opt.preset]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)["peak_mib"]


def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (Linux), else None."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), None)


def memory_child(opt: argparse.Namespace) -> None:
    """In a fresh process: the peak resident-set growth of two steps (activations, gradients, optimizer
    state) over the built model and batch. Linux resets the peak (VmHWM) on request; ru_maxrss, the
    fallback, starts at the parent's size after fork, so it undercounts for small models."""
    step = Step(build(opt.memory_of, opt.preset, torch.device("cpu")), opt.imgsz, opt.batch_size, torch.device("cpu"))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    except OSError:
        pass
    before = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    after = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024}))


def compare(name: str, base_cfg: str, hybrid_cfg: str, opt: argparse.Namespace) -> None:
    device = torch.device(opt.device)
    base, hybrid = (Step(build(c, opt.preset, device), opt.imgsz, opt.batch_size, device)
                    for c in (base_cfg, hybrid_cfg))
    tb, th = step_times(base, hybrid, opt.steps)
    gb, gh = base.gflop(), hybrid.gflop()
    mb, mh = (peak_memory_mib(c, opt) for c in (base_cfg, hybrid_cfg))
    frozen = sum(p.numel() for _, m in modules_with_role(hybrid.model, "mapper") for p in m.parameters())
    trainable = sum(p.numel() for p in hybrid.model.parameters() if p.requires_grad)
    print(f"{name:<4} {base_cfg:<24} {tb:>9.0f} {gb:>9.2f} {mb:>9.0f}")
    print(f"{'':<4} {hybrid_cfg:<24} {th:>9.0f} {gh:>9.2f} {mh:>9.0f}   "
          f"trainable {trainable:,}, frozen decoders {frozen:,}")
    print(f"{'':<4} {'ratio hybrid / baseline':<24} {th / tb:>8.2f}x {gh / gb:>8.2f}x "
          f"{(mh / mb if mb > 0 else float('nan')):>8.2f}x", flush=True)


def decoder_cost_640(threads: int) -> None:
    """The frozen paper-preset decoders at P3/P4/P5 of a 640 input (latents warped to 80/40/20 grids), batch 1."""
    print("\nFeatureMapper (frozen ResVAE decoder, paper preset: 3 timesteps x 64 ch) at 640, batch 1, no_grad:")
    for level in preset_levels("ddpm-paper"):
        mapper = FeatureMapper(level.spec)
        side = 640 // level.stride
        z = torch.randn(1, level.spec.in_channels, side, side)
        gflops = count_gflops(lambda: mapper(z))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            mapper(z)
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"  P{level.stride.bit_length() - 1}  {level.spec.in_channels} x {side}x{side} -> "
              f"{level.spec.out_channels} ch: {gflops:6.1f} GFLOPs, {min(times):7.0f} ms "
              f"({threads} threads)")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=256, help="image size in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=7,
                   help="timed steps per model (median), after 2 warm-up steps (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="device: cpu or a CUDA index such as 0 (default: %(default)s)")
    p.add_argument("--preset", default="ddpm-tiny",
                   help="stage-1 preset whose latent shapes the hybrid reads (default: %(default)s)")
    p.add_argument("--pairs", nargs="*", default=["n:yolov5n-d3n", "n:yolov5n-d3n-lite", "s:yolov5s-d3n",
                                                  "s:yolov5s-d3n-lite"],
                   help="SIZE:HYBRID_YAML, compared with yolov5SIZE.yaml; none: only --fusion-cost "
                        "(default: the n and s hybrids, full and lite)")
    p.add_argument("--fusion-cost", action="store_true", help="also print the fusion blocks' and decoders' cost at 640")
    p.add_argument("--memory-of", default="", help=argparse.SUPPRESS)  # internal: the memory subprocess
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    opt = parse_args(argv)
    torch.set_num_threads(opt.threads)
    if opt.memory_of:
        return memory_child(opt)
    if opt.pairs:
        print(f"training step at {opt.imgsz} px, batch {opt.batch_size}, {opt.device} ({opt.threads} threads), "
              f"latents of the {opt.preset} preset; median of {opt.steps} alternating steps")
        print(f"{'':<4} {'model':<24} {'step ms':>9} {'GFLOP':>9} {'peak MiB':>9}")
    for pair in opt.pairs:
        size, _, hybrid = pair.partition(":")
        compare(size, f"yolov5{size}.yaml", f"{hybrid.removesuffix('.yaml')}.yaml", opt)
    if opt.fusion_cost:
        from benchmarks import fusion_cost

        print("\nFusion blocks at P3/P4/P5 of a 640 input (benchmarks/fusion_cost.py):")
        fusion_cost.main(["--threads", str(opt.threads), "--blocks", "FreqFilter", "dcf"])
        decoder_cost_640(opt.threads)


if __name__ == "__main__":
    main()
