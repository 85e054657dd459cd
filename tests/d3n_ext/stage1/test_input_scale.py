"""features.input_scale: the DDPM trains on crops at k× the pixel scale and its taps are pooled back to the usual grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d3n_ext.stage1.config import FeatureConfig, load_stage1_config
from d3n_ext.stage1.ddpm_training import BatchSampler
from d3n_ext.stage1.diffusion import GaussianDiffusion
from d3n_ext.stage1.features import DDPMFeatureExtractor
from d3n_ext.stage1.repository import LatentRepository
from d3n_ext.stage1.unet import UNet
from extract_features import main
from tests.d3n_ext.stage1_fixtures import TINY_CONFIG, cli_args, one_thread, stage1_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

SCALED_CONFIG = TINY_CONFIG.replace("features: {batch_size: 2}", "features: {batch_size: 2, input_scale: 2}")


def test_training_crops_are_windows_of_the_stored_images():
    side, crop = 8, 4
    coded = torch.arange(side * side, dtype=torch.uint8).view(1, 1, side, side).repeat(6, 1, 1, 1)  # pixel = 8·row + col
    sampler = BatchSampler(coded, 6, hflip=False, generator=torch.Generator().manual_seed(0), crop=crop)
    batch = ((sampler.next(torch.device("cpu")) + 1) * 127.5).round().long()  # back to the codes
    assert batch.shape == (6, 1, crop, crop)
    corners = set()
    for window in batch[:, 0]:
        r, c = divmod(int(window[0, 0]), side)
        corners.add((r, c))
        assert torch.equal(window, coded[0, 0, r:r + crop, c:c + crop].long())
    assert len(corners) > 1  # random, not one fixed window


def test_at_input_scale_k_the_taps_are_those_of_the_k_times_larger_image_pooled_to_the_usual_grids(stage1_run):
    cfg = load_stage1_config(stage1_run["cfg"])
    torch.manual_seed(0)
    unet, diffusion = UNet(cfg.unet).eval(), GaussianDiffusion(cfg.diffusion)
    images = [np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8) for i in range(2)]
    extractor = DDPMFeatureExtractor(unet, diffusion, FeatureConfig(timesteps=[100, 250], input_scale=2))
    taps = extractor(images)
    assert [tuple(t.shape) for t in taps] == [(2, 2, *shape) for shape in cfg.unet.tap_shapes()]

    x0, noise = extractor.inputs(images)
    assert x0.shape[-1] == 2 * cfg.unet.image_size
    t = torch.tensor([100, 250]).repeat(2)
    with torch.no_grad():
        big = unet(diffusion.q_sample(x0.repeat_interleave(2, 0), t, noise.repeat_interleave(2, 0)), t, taps_only=True)
    for got, full in zip(taps, big):
        assert torch.allclose(got.flatten(0, 1), F.avg_pool2d(full, 2), atol=1e-6)


def test_a_scaled_stage1_keeps_the_grids_and_refuses_a_ddpm_trained_at_another_scale(stage1_run, tmp_path, capsys):
    scaled_cfg, out = tmp_path / "scaled.yaml", tmp_path / "scaled"
    scaled_cfg.write_text(SCALED_CONFIG)
    assert main(cli_args("all", stage1_run["data"], scaled_cfg, out)) == 0
    scaled, plain = LatentRepository(out), LatentRepository(stage1_run["out"])
    assert [lv.hw for lv in scaled.levels] == [lv.hw for lv in plain.levels]
    assert scaled.manifest["features"]["input_scale"] == 2

    capsys.readouterr()
    assert main(cli_args("build", stage1_run["data"], stage1_run["cfg"], out)) == 2  # the plain config, scale 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(out / "ddpm.pt") in last and "input_scale 2" in last, last
