"""FeatureMapper and binding: D3N YAMLs build unbound, bind to a repository, decode like stage 1, stay frozen."""

from __future__ import annotations

import copy

import pytest
import torch

from d3n_ext.fusion.binding import bind_repository, check_bound_to, load_repository_weights, repository_fingerprint
from d3n_ext.fusion.feature_mapper import FeatureMapper, MapperSpec
from d3n_ext.fusion.latent_dataset import LatentDataset
from d3n_ext.stage1.features import load_feature_decoders
from d3n_ext.stage1.repository import LatentRepository
from models.loading import build_from_checkpoint, model_payload
from models.yolo import Model, ModelConfigError, load_model_yaml, parse_model
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401  (fixture)
from tests.d3n_ext.teacher_fixtures import bound_model, teacher_repo  # noqa: F401  (fixture)
from utils.dataloaders import collate_fn
from utils.hyp import Hyp
from utils.loss import ComputeLoss
from utils.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: faster, and immune to a busy machine

D3N_YAMLS = ("yolov5s-d3n.yaml", "yolov5n-d3n.yaml", "yolov5s-d3n-neckin.yaml", "yolov5n-d3n-lite.yaml",
             "yolov5s-d3n-lite.yaml")


def mappers(model: torch.nn.Module) -> list[FeatureMapper]:
    return [m for m in model.modules() if isinstance(m, FeatureMapper)]


@pytest.mark.parametrize("name", D3N_YAMLS)
def test_unbound_yamls_build_with_the_paper_preset(name):
    cfg, source = load_model_yaml(name)
    layers, _ = parse_model(cfg, 3, source)
    found = [m for m in layers if isinstance(m, FeatureMapper)]
    assert [m.spec.feature_channels for m in found] == [256, 384, 512]  # the paper's decoder taps
    assert [m.spec.in_channels for m in found] == [192] * 3  # 3 timesteps x 64 latent channels
    assert all(not p.requires_grad for m in found for p in m.parameters())


@pytest.mark.parametrize("name", ("yolov5n-d3n.yaml", "yolov5s-d3n-neckin.yaml", "yolov5n-d3n-lite.yaml"))
def test_binding_sizes_every_d3n_row_from_the_repository(teacher_repo, name):
    repo = LatentRepository(teacher_repo["repo"])
    model = bound_model(teacher_repo["repo"], name)
    assert model.side_inputs == {"latents_p3": (12, 8), "latents_p4": (12, 16), "latents_p5": (12, 32)}
    found = mappers(model)
    assert [m.spec.out_channels for m in found] == [3 * 16, 3 * 24, 3 * 32]
    assert {m.spec.fingerprint for m in found} == {repository_fingerprint(repo)}
    filters = [m for m in model.model if m.type == "FreqFilter"]
    assert [f.size for f in filters] == [(32, 32), (16, 16), (8, 8)]
    x = torch.rand(1, 3, 256, 256)
    assert [r.shape[2:4] for r in model.train()(x, model.dummy_side(x))] == [(32, 32), (16, 16), (8, 8)]


@pytest.mark.parametrize("kind", ["repo", "pca", "raw"])  # ResVAE latents, PCA coefficients, raw features
def test_feature_mapper_decodes_exactly_like_the_stage1_decoders(teacher_repo, kind):
    repo = LatentRepository(teacher_repo[kind])
    model = bound_model(teacher_repo[kind])
    reference = load_feature_decoders(teacher_repo[kind])
    assert {m.spec.decoder for m in mappers(model)} == {{"repo": "resvae"}.get(kind, kind)}
    for level, (mapper, decoder) in enumerate(zip(mappers(model), reference)):
        z = torch.from_numpy(repo.lookup_key(repo.keys[level])[level])[None]  # (1, T, C, h, w) float16
        expected = decoder(z).flatten(1, 2)  # timesteps concatenated after decoding
        torch.testing.assert_close(mapper(z.flatten(1, 2)), expected)  # frozen BN folds its affine: rounding only


def test_binding_errors_are_one_line_and_name_the_yaml_and_repository(teacher_repo):
    repo = LatentRepository(teacher_repo["repo"])
    cfg, _ = load_model_yaml("yolov5n-d3n.yaml")
    wrong_level = copy.deepcopy(cfg)
    wrong_level["head"][15][3][0] = 3
    with pytest.raises(ModelConfigError) as e:
        bind_repository(wrong_level, repo)
    assert "\n" not in str(e.value)
    assert "yolov5n-d3n.yaml: head row 15 (layer 25) FeatureMapper asks for level 3" in str(e.value)
    assert f"the repository {repo.root} has 3 levels" in str(e.value)
    no_side_input = copy.deepcopy(cfg)
    no_side_input["head"][15][0] = 17
    with pytest.raises(ModelConfigError, match="must read a SideInput row"):
        bind_repository(no_side_input, repo)
    with pytest.raises(ModelConfigError, match="yolov5n.yaml: no FeatureMapper rows"):
        bind_repository(load_model_yaml("yolov5n.yaml")[0], repo)
    with pytest.raises(ModelConfigError, match="FeatureMapper: its input has 192 channels"):
        Model({**copy.deepcopy(cfg), "head": cfg["head"][:15] + [[-1, 1, "FeatureMapper", [0, 3, 4, 16, 8, 1]]]
               + cfg["head"][16:]})


def test_bad_feature_mapper_args_are_reported():
    with pytest.raises(ValueError, match="decoder 'vq'"):
        MapperSpec.from_args([0, 3, 4, 16, 8, 1, "vq"])
    with pytest.raises(ValueError, match="the last 3 optional"):
        MapperSpec.from_args([0, 3, 4])


def test_a_model_bound_to_other_weights_is_refused(teacher_repo):
    repo = LatentRepository(teacher_repo["repo"])
    cfg = bind_repository(load_model_yaml("yolov5n-d3n.yaml")[0], repo)
    cfg["head"][15][3][8] = "0123456789abcdef"
    with pytest.raises(ValueError, match="trained on latents of a repository with fingerprint 0123456789abcdef"):
        check_bound_to(cfg, repo, "teacher.pt")
    with pytest.raises(ValueError, match="bound to a repository with fingerprint 0123456789abcdef"):
        load_repository_weights(Model(cfg, nc=2), repo)


def test_gradients_reach_fusion_and_detector_but_never_the_decoders(teacher_repo):
    torch.manual_seed(0)
    model = bound_model(teacher_repo["repo"]).train()
    data = teacher_repo["data"].parent
    ds = LatentDataset(sorted((data / "images" / "train").glob("*.png"))[:2], imgsz=128, scale_mode=True,
                       repository=teacher_repo["repo"], side_inputs=model.side_inputs)
    imgs, targets, _, _, extras = collate_fn([ds[0], ds[1]])
    before = {k: v.clone() for k, v in model.state_dict().items() if ".decoder." in k}
    optimizer = build_optimizer(model, "SGD", lr=0.1, decay=0.05)
    loss, _ = ComputeLoss(model, Hyp(), 128)(model(imgs.float() / 255, extras), targets)
    loss.backward()
    optimizer.step()
    assert all(not m.training and all(p.grad is None and not p.requires_grad for p in m.parameters())
               for m in mappers(model))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN statistics too
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for layer in (26, 27, 31, 35, 36, 0, 17):  # FreqFilter, CrossFusions (alpha too), Detect, backbone, neck
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(f"model.{layer}."))
    assert model.model[27].alpha.grad is not None


def test_checkpoint_rebuilds_the_teacher_without_the_repository(teacher_repo):
    model = bound_model(teacher_repo["repo"]).eval()
    rebuilt = build_from_checkpoint(model_payload(model), "teacher.pt").eval()
    x = torch.rand(1, 3, 256, 256)
    side = {k: torch.randn_like(v) for k, v in model.dummy_side(x).items()}
    with torch.no_grad():
        assert torch.equal(model(x, side)[0], rebuilt(x, side)[0])
    assert all(not p.requires_grad for m in mappers(rebuilt) for p in m.parameters())
    rebuilt.train()
    assert all(not m.training for m in mappers(rebuilt))
