"""LatentDataset: the real repository's latents come out aligned with the augmented pixels they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d3n_ext.fusion.latent_dataset import LatentDataset
from d3n_ext.stage1.repository import LatentRepository, MissingLatentError
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401  (fixture)
from tests.d3n_ext.teacher_fixtures import SIZE, coordinate_image, teacher_repo  # noqa: F401  (fixture)
from utils.hyp import Hyp

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: faster, and immune to a busy machine

SIDE_INPUTS = {"latents_p3": (12, 8), "latents_p4": (12, 16), "latents_p5": (12, 32)}  # T·C = 3·4 channels
STILL = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0,
             flipud=0.0, fliplr=0.0, mosaic=0.0, mixup=0.0)  # no augmentation unless a test turns one on


def train_images(paths: dict) -> list[Path]:
    return sorted((paths["data"].parent / "images" / "train").glob("*.png"))


def dataset(paths: dict, **hyp) -> LatentDataset:
    return LatentDataset(train_images(paths), imgsz=SIZE, augment=True, hyp=Hyp().replace(**{**STILL, **hyp}),
                         scale_mode=True, repository=paths["repo"], side_inputs=SIDE_INPUTS)


def stored(paths: dict, image: Path, level: int) -> torch.Tensor:
    """(T·C, h, w) float16 latents of `image` as the repository holds them."""
    return torch.from_numpy(LatentRepository(paths["repo"]).lookup(image)[level]).flatten(0, 1)


def test_unaugmented_latents_are_the_stored_ones_on_the_stride_grids(teacher_repo):
    ds = dataset(teacher_repo)
    _, _, path, _, extras = ds[1]
    for level, name in enumerate(SIDE_INPUTS):
        assert extras[name].dtype == torch.float16  # workers move the stored half-precision latents
        assert torch.equal(extras[name], stored(teacher_repo, Path(path), level))  # 32/16/8 grids: exact


def test_a_flipped_image_gets_flipped_latents(teacher_repo):
    plain, flipped = dataset(teacher_repo), dataset(teacher_repo, fliplr=1.0)
    img, _, path, _, _ = plain[2]
    img_f, _, _, _, extras = flipped[2]
    assert torch.equal(img_f, img.flip(-1))
    for level, name in enumerate(SIDE_INPUTS):
        assert torch.equal(extras[name], stored(teacher_repo, Path(path), level).flip(-1))


def bilinear(latents: torch.Tensor, x: float, y: float, stride: int) -> torch.Tensor:
    """Latents (C, h, w) laid over a whole image, read at image point (x, y) px (edges clamped)."""
    h, w = latents.shape[-2:]
    u, v = min(max(x / stride - 0.5, 0.0), w - 1.0), min(max(y / stride - 0.5, 0.0), h - 1.0)
    j0, i0 = int(u), int(v)
    j1, i1, a, b = min(j0 + 1, w - 1), min(i0 + 1, h - 1), u - j0, v - i0
    lat = latents.float()
    top, bottom = (1 - a) * lat[:, i0, j0] + a * lat[:, i0, j1], (1 - a) * lat[:, i1, j0] + a * lat[:, i1, j1]
    return (1 - b) * top + b * bottom


def test_a_mosaic_places_each_tiles_latents_where_its_pixels_went(teacher_repo):
    """Every P3 cell centre's pixel names its source image and position (B = id, G = x, R = y); the
    latents there must be that image's latents read at that position, and zero over the grey fill."""
    ds = dataset(teacher_repo, mosaic=1.0)
    sources = {int(coordinate_image(k)[0, 0, 0]): stored(teacher_repo, f, 0)  # B value -> (T·C, 32, 32) P3 latents
               for k, f in enumerate(train_images(teacher_repo))}
    tiles_seen = set()
    for index in range(len(ds)):
        img, _, _, _, extras = ds[index]
        rgb = img.permute(1, 2, 0).numpy()  # (H, W, 3) R=y, G=x, B=id
        lat = extras["latents_p3"]
        for i in range(lat.shape[1]):
            for j in range(lat.shape[2]):
                r, g, b = (int(c) for c in rgb[8 * i + 4, 8 * j + 4])
                if b not in sources:  # the mosaic's grey fill: no image, no latents
                    assert (r, g, b) == (114, 114, 114) and not lat[:, i, j].any()
                    continue
                tiles_seen.add((index, b))
                expected = bilinear(sources[b], g, r, 8)
                torch.testing.assert_close(lat[:, i, j].float(), expected, atol=2e-3, rtol=2e-3)
    assert len(tiles_seen) > len(ds)  # several source images per sample: real mosaics were checked


def test_images_missing_from_the_repository_fail_early_in_one_line(teacher_repo, tmp_path):
    new = tmp_path / "images" / "new.png"
    new.parent.mkdir(parents=True)
    new.write_bytes(train_images(teacher_repo)[0].read_bytes() + b"\0")  # other bytes: another key
    with pytest.raises(MissingLatentError) as e:
        LatentDataset([*train_images(teacher_repo), new, new.with_name("b.png")], imgsz=64,
                      repository=teacher_repo["repo"], side_inputs=SIDE_INPUTS)
    assert "\n" not in str(e.value) and str(new) in str(e.value) and str(teacher_repo["repo"]) in str(e.value)
    assert isinstance(e.value, ValueError)  # the scripts report it as `error: ...`, no traceback


def test_a_model_bound_to_another_repository_is_refused(teacher_repo):
    with pytest.raises(ValueError, match="side input 'latents_p3' takes 192 channels, level P3 holds 3 x 4"):
        LatentDataset(train_images(teacher_repo), imgsz=64, repository=teacher_repo["repo"],
                      side_inputs={"latents_p3": (192, 8)})
    with pytest.raises(ValueError, match="stride 4; the repository's levels have strides"):
        LatentDataset(train_images(teacher_repo), imgsz=64, repository=teacher_repo["repo"],
                      side_inputs={"latents_p2": (12, 4)})
