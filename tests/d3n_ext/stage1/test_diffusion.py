import pytest
import torch
import torch.nn as nn

from d3n_ext.stage1.diffusion import DiffusionConfig, GaussianDiffusion
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_schedule_matches_the_spec_noise_levels():
    d = GaussianDiffusion(DiffusionConfig())
    got = d.sqrt_alphas_cumprod[[100, 150, 250]]
    assert torch.allclose(got, torch.tensor([0.946, 0.887, 0.722]), atol=1e-3)
    assert torch.allclose(d.sqrt_one_minus_alphas_cumprod[[100, 150, 250]], torch.tensor([0.324, 0.463, 0.692]), atol=1e-3)


def test_cosine_schedule_is_monotone_and_ends_near_pure_noise():
    d = GaussianDiffusion(DiffusionConfig(schedule="cosine"))
    ac = d.alphas_cumprod
    assert (ac[1:] < ac[:-1]).all() and ac[-1] < 1e-3 and d.betas.max() <= 0.999


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match="linear.*cosine"):
        DiffusionConfig(schedule="quadratic")


def test_q_sample_mixes_image_and_noise_with_the_schedule():
    d = GaussianDiffusion()
    x0, noise = torch.ones(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    t = torch.tensor([0, 250])
    xt = d.q_sample(x0, t, noise)
    a, s = d.sqrt_alphas_cumprod[250], d.sqrt_one_minus_alphas_cumprod[250]
    assert torch.allclose(xt[1], a * 1.0 + s * 2.0)
    assert torch.allclose(xt[0], d.sqrt_alphas_cumprod[0] + 2 * d.sqrt_one_minus_alphas_cumprod[0])


def test_schedule_buffers_follow_the_module_but_stay_out_of_checkpoints():
    d = GaussianDiffusion().to(torch.float64)
    assert d.alphas_cumprod.dtype == torch.float64
    assert d.state_dict() == {}


def test_epsilon_loss_of_a_zero_predictor_is_the_noise_variance():
    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    loss = GaussianDiffusion().training_loss(Zero(), torch.zeros(64, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert abs(loss.item() - 1.0) < 0.05


def test_timesteps_outside_the_schedule_are_rejected():
    with pytest.raises(ValueError, match="0..999"):
        GaussianDiffusion().check_timesteps([100, 1000])
