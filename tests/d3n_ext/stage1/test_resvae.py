import pytest
import torch

from d3n_ext.stage1.pca import ChannelPCA
from d3n_ext.stage1.resvae import ResVAE, ResVAEConfig, elbo_loss
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resvae_compresses_channels_and_keeps_the_grid():
    vae = ResVAE(ResVAEConfig(in_channels=32, latent_channels=4, num_blocks=1)).eval()
    x = torch.randn(2, 32, 8, 6)
    recon, mu, logvar = vae(x)
    assert mu.shape == logvar.shape == (2, 4, 8, 6) and recon.shape == x.shape
    assert torch.equal(vae.encode(x), mu)


def test_elbo_terms_and_reductions():
    x = torch.zeros(2, 3, 4, 4)
    zeros = torch.zeros(2, 1, 4, 4)
    loss, mse, kl = elbo_loss(x, x + 1, zeros, zeros)
    assert mse.item() == 48 and kl.item() == 0 and loss.item() == 48  # per-sample sum 3·4·4, batch mean
    loss, mse, kl = elbo_loss(x, x + 1, zeros + 1, zeros, kl_weight=2.0, reduction="mean")
    assert mse.item() == 1 and kl.item() == 0.5 and loss.item() == 2.0
    with pytest.raises(ValueError, match="sum"):
        elbo_loss(x, x, zeros, zeros, reduction="max")


def test_logvar_is_clamped_so_the_kl_stays_finite():
    vae = ResVAE(ResVAEConfig(in_channels=8, latent_channels=2, num_blocks=1))
    with torch.no_grad():
        vae.encoder.logvar.bias.fill_(1e4)
    recon, mu, logvar = vae.eval()(torch.randn(1, 8, 4, 4))
    assert logvar.max() <= 20 and torch.isfinite(elbo_loss(torch.zeros_like(recon), recon, mu, logvar)[0])


def test_resvae_learns_to_reconstruct_low_rank_features():
    torch.manual_seed(0)
    basis = torch.randn(16, 2)
    x = torch.einsum("ck,bkhw->bchw", basis, torch.randn(16, 2, 4, 4))
    vae = ResVAE(ResVAEConfig(in_channels=16, latent_channels=4, num_blocks=1))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = elbo_loss(x, *vae(x))[0]
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_pca_reconstructs_features_of_its_rank_exactly():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 3))[0]  # (12, 3) orthonormal
    x = torch.einsum("ck,bkhw->bchw", basis, torch.randn(6, 3, 5, 5)) + torch.arange(12.0)[None, :, None, None]
    pca = ChannelPCA.fit([x[:3], x[3:]], channels=12, components=3)
    assert pca.encode(x).shape == (6, 3, 5, 5)
    assert torch.allclose(pca(x), x, atol=1e-4)
    assert abs(pca.explained_variance_ratio.sum().item() - 1) < 1e-5
    assert not any(p.requires_grad for p in pca.parameters())


def test_pca_with_more_components_than_channels_is_refused():
    with pytest.raises(ValueError, match="1..8"):
        ChannelPCA(8, 9)
