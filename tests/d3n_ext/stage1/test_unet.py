import pytest
import torch

from d3n_ext.stage1.checkpoints import load_ddpm, save_ddpm
from d3n_ext.stage1.config import load_stage1_config
from d3n_ext.stage1.diffusion import DiffusionConfig
from d3n_ext.stage1.unet import UNet, UNetConfig
from utils.checkpoints import CheckpointError, save_checkpoint
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(image_size=32, base_channels=8, num_res_blocks=1, attention_resolutions=[16, 8],
             num_head_channels=8, norm_groups=4, dropout=0.0)


def test_paper_preset_taps_are_the_spec_shapes():
    cfg = load_stage1_config("ddpm-paper").unet
    assert cfg.tap_shapes() == [(256, 64, 64), (384, 32, 32), (512, 16, 16)]


def test_tiny_preset_taps_match_a_256px_detector_grid():
    cfg = load_stage1_config("ddpm-tiny").unet
    taps = UNet(cfg)(torch.zeros(1, 3, 32, 32), torch.tensor([100]), taps_only=True)
    assert [tuple(t.shape[1:]) for t in taps] == cfg.tap_shapes() == [(32, 32, 32), (48, 16, 16), (64, 8, 8)]
    assert [256 // s for s in (8, 16, 32)] == [t.shape[-1] for t in taps]  # P3/P4/P5 grids of 256 px


def test_cpu_preset_taps_are_twice_a_160px_detector_grid():
    """ddpm-cpu's taps are 2x P3/P4/P5 of 160 px, so the warp to the detector grid averages 2x2 blocks."""
    cfg = load_stage1_config("ddpm-cpu").unet
    taps = UNet(cfg)(torch.zeros(1, 3, 40, 40), torch.tensor([100]), taps_only=True)
    assert [tuple(t.shape[1:]) for t in taps] == cfg.tap_shapes() == [(64, 40, 40), (96, 20, 20), (128, 10, 10)]
    assert [2 * 160 // s for s in (8, 16, 32)] == [t.shape[-1] for t in taps]


def test_taps_are_the_outputs_of_the_decoder_upsamples():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**SMALL)).eval()
    seen = []
    hooks = [up.register_forward_hook(lambda m, i, o: seen.append(o)) for up in net.upsamples if len(list(up.parameters()))]
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 250])
    eps = net(x, t)
    taps = net(x, t, taps_only=True)
    for h in hooks:
        h.remove()
    assert eps.shape == x.shape
    assert all(torch.equal(a, b) for a, b in zip(taps, seen[:3][::-1]))


def test_bad_widths_and_unknown_keys_are_reported():
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(**{**SMALL, "norm_groups": 3})
    with pytest.raises(ValueError, match="levels"):
        UNetConfig(**{**SMALL, "channel_mult": [1, 2, 3]})
    with pytest.raises(ValueError, match="unknown keys.*widht"):
        UNetConfig.from_dict({"widht": 3})


def test_ddpm_checkpoint_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    cfg = UNetConfig(**SMALL)
    net = UNet(cfg)
    for p in net.parameters():  # zero-initialised output layers would hide a missed load
        p.data.normal_(0, 0.02)
    save_ddpm(tmp_path / "ddpm.pt", net, cfg, DiffusionConfig(), {"iterations": 0})
    loaded, diffusion, ckpt = load_ddpm(tmp_path / "ddpm.pt")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([150])
    assert torch.equal(net.eval()(x, t), loaded(x, t))
    assert not any(p.requires_grad for p in loaded.parameters()) and diffusion.num_timesteps == 1000


def test_foreign_checkpoint_is_refused_by_kind(tmp_path):
    save_checkpoint({"kind": "detector"}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="expected 'ddpm'"):
        load_ddpm(tmp_path / "x.pt")
