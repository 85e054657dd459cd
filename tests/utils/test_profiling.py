"""Parameters, GFLOPs and latency as every table in the project counts them."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from models.yolo import Model
from utils.profiling import count_gflops, count_parameters, cpu_latency_ms, forward_gflops

ATEN = torch.ops.aten


def test_yolov5s_at_640_counts_two_flops_per_conv_multiply_add_and_prints_yolov5s_figure(caplog):
    """Every convolution's multiply-adds, twice: 16.43 GFLOPs. thop printed 16.6 here before, counting the
    BatchNorms' and additions' element-wise work too; YOLOv5 reports 16.5 for the fused model."""
    model = Model("yolov5s.yaml")
    macs = []

    def conv_macs(m: nn.Conv2d, _, out: torch.Tensor) -> None:
        macs.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    hooks = [m.register_forward_hook(conv_macs) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with caplog.at_level(logging.INFO, logger="models.yolo"):
        summary = model.info(imgsz=640)
    for h in hooks:
        h.remove()
    assert summary["gflops"] == pytest.approx(2 * sum(macs) / 1e9, rel=1e-12)
    assert summary["gflops"] == pytest.approx(16.6, abs=0.25) and summary["parameters"] == 7_235_389
    assert "7,235,389 parameters, 7,235,389 gradients, 16.4 GFLOPs at 640" in caplog.text


def test_counting_leaves_the_model_as_it_was(tiny_cfg):
    model = Model(tiny_cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_gflops(model, model.example_inputs(64))
    cpu_latency_ms(model, model.example_inputs(64), runs=1, warmup=0)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too


def test_gflops_scale_with_the_input_area(tiny_cfg):
    model = Model(tiny_cfg)
    assert model.gflops(128) == pytest.approx(4 * model.gflops(64), rel=1e-9)


def test_a_custom_mapping_counts_ops_the_counter_does_not_know():
    x = torch.randn(1, 4, 16, 16)
    fft = lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])  # noqa: E731
    assert count_gflops(fft) == 0
    per_call = {ATEN._fft_r2c: lambda *args, **kwargs: 10**9, ATEN._fft_c2r: lambda *args, **kwargs: 10**9}
    assert count_gflops(fft, per_call) == 2.0


def test_latency_is_the_median_of_the_runs_after_warm_up(monkeypatch):
    import utils.profiling as profiling

    class FakeClock(nn.Module):
        """Each forward advances a fake clock by its next duration (s)."""

        def __init__(self, durations: list[float]):
            super().__init__()
            self.now, self.durations = 0.0, iter(durations)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.now += next(self.durations)
            return x

    model = FakeClock([9.0, 9.0, 9.0] + [0.005, 0.001, 0.003, 0.002, 0.004])  # warm-up calls are slow
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: model.now)
    assert cpu_latency_ms(model, (torch.zeros(1),), runs=5, warmup=3) == pytest.approx(3.0)
    with pytest.raises(StopIteration):  # exactly warm-up + runs calls were made
        model(torch.zeros(1))
    assert count_parameters(model) == 0
