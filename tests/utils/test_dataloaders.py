"""Label checks and caching, letterbox/scale geometry, reproducible augmentation, and extras alignment."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.utils.counting import CountsSamples
from utils.boxes import scale_boxes, xywhn2xyxy
from utils.dataloaders import LoadImagesAndLabels, collate_fn, create_dataloader, label_cache_path
from utils.epoch_stream import epoch_heads, epoch_stream, epochs
from utils.hyp import Hyp

# (w, h) and boxes as normalised (cls, x, y, w, h); every image differs in shape and content
IMAGES = [
    ((160, 96), [(0, 0.3, 0.4, 0.2, 0.3), (1, 0.7, 0.6, 0.25, 0.2)]),
    ((128, 128), [(2, 0.5, 0.5, 0.3, 0.3)]),
    ((96, 160), [(1, 0.35, 0.3, 0.3, 0.2), (0, 0.6, 0.7, 0.25, 0.15)]),
    ((120, 80), [(2, 0.55, 0.45, 0.3, 0.35)]),
    ((64, 96), [(0, 0.5, 0.4, 0.4, 0.3)]),
    ((140, 140), [(1, 0.3, 0.3, 0.2, 0.2), (2, 0.7, 0.7, 0.2, 0.2)]),
]
NO_AUG = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, fliplr=0, mosaic=0)


def _write_image(path: Path, size: tuple[int, int], boxes, seed: int) -> None:
    w, h = size
    im = np.random.default_rng(seed).integers(60, 90, (h, w, 3), dtype=np.uint8)
    for k, (c, x, y, bw, bh) in enumerate(boxes):
        x1, y1, x2, y2 = xywhn2xyxy(np.array([x, y, bw, bh]), w, h).round().astype(int)
        cv2.rectangle(im, (x1, y1), (x2 - 1, y2 - 1), (40 * c + 100, 200 - 30 * k, 255), -1)
    cv2.imwrite(str(path), im)


def _label_text(boxes) -> str:
    return "".join(f"{c} {x} {y} {w} {h}\n" for c, x, y, w, h in boxes)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    for i, (size, boxes) in enumerate(IMAGES):
        _write_image(tmp_path / "images" / "train" / f"im{i}.png", size, boxes, i)
        (tmp_path / "labels" / "train" / f"im{i}.txt").write_text(_label_text(boxes))
    return tmp_path


def _files(root: Path) -> list[Path]:
    return sorted((root / "images" / "train").glob("*.png"))


class CoordDataset(LoadImagesAndLabels):
    """Extras: channel 0 = x, channel 1 = y of the original image (0-1), channel 2 = the image index."""

    extra_strides = {"coords": 4}

    def load_extras(self, index: int) -> dict[str, torch.Tensor]:
        n = 64
        ramp = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        return {"coords": torch.stack((ramp.expand(n, n), ramp[:, None].expand(n, n), torch.full((n, n), index)))}


def _cell(extra: torch.Tensor, x: float, y: float, stride: int) -> tuple[torch.Tensor, float, float]:
    """The extra's cell containing output pixel (x, y), and the offset (px) of that point from the cell centre."""
    j, i = int(x // stride), int(y // stride)
    return extra[:, i, j], (j + 0.5) * stride - x, (i + 0.5) * stride - y


def _expected_source_point(src_box, out_box_px, dx: float, dy: float) -> np.ndarray:
    """Source-normalised point under an output point offset (dx, dy) px from a box centre (no rotation)."""
    x, y, w, h = src_box
    return np.array([x + dx * w / out_box_px[2], y + dy * h / out_box_px[3]])


def _unclipped(xywh_px: np.ndarray, width: int, height: int) -> bool:
    x, y, w, h = xywh_px
    return x - w / 2 > 1 and y - h / 2 > 1 and x + w / 2 < width - 1 and y + h / 2 < height - 1


# ---------------------------------------------------------------- geometry of the output

def test_letterbox_mode_records_equal_ratios_and_pad_that_map_boxes_back(dataset_dir):
    ds = LoadImagesAndLabels(_files(dataset_dir), imgsz=128, augment=False)
    img, labels, path, ((h0, w0), ratio_pad), extras = ds[0]  # 160x96 image
    assert img.shape == (3, 128, 128) and img.dtype == torch.uint8 and extras == {}
    (rh, rw), (padw, padh) = ratio_pad
    assert rh == rw == 0.8 and (padw, padh) == (0.0, 25.0)  # 96 * 0.8 = 76.8 -> 77 rows, 51 of padding
    boxes = xywhn2xyxy(labels[:, 2:].double(), 128, 128)
    back = scale_boxes((128, 128), boxes, (h0, w0), ratio_pad)
    np.testing.assert_allclose(back.numpy(), xywhn2xyxy(ds.labels[0][:, 1:].astype(float), w0, h0), atol=1e-3)


def test_scale_mode_stretches_with_unequal_ratios_and_scale_boxes_maps_back_exactly(dataset_dir):
    ds = LoadImagesAndLabels(_files(dataset_dir), imgsz=128, augment=False, scale_mode=True)
    img, labels, _, ((h0, w0), ratio_pad), _ = ds[0]
    assert img.shape == (3, 128, 128) and (h0, w0) == (96, 160)
    assert ratio_pad == ((128 / 96, 128 / 160), (0.0, 0.0))
    boxes = xywhn2xyxy(labels[:, 2:].double(), 128, 128)
    back = scale_boxes((128, 128), boxes, (h0, w0), ratio_pad)
    expected = xywhn2xyxy(np.array([b[1:] for b in IMAGES[0][1]], float), w0, h0)
    np.testing.assert_allclose(back.numpy(), expected, atol=1e-4)


def test_rect_batches_share_one_stride_multiple_shape(dataset_dir, caplog):
    loader, ds = create_dataloader(_files(dataset_dir), 128, 2, 32, rect=True, shuffle=True, workers=0)
    assert "incompatible with shuffle" in caplog.text
    assert ds.batch_shapes.shape == (3, 2) and (ds.batch_shapes % 32 == 0).all()
    for k, (imgs, targets, paths, shapes, _) in enumerate(loader):
        assert tuple(imgs.shape[2:]) == tuple(ds.batch_shapes[k]) and len(paths) == len(shapes) == 2
        assert set(targets[:, 0].tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- label checks and cache

def test_corrupt_images_and_bad_rows_are_counted_skipped_and_named(dataset_dir, caplog):
    images, labels = dataset_dir / "images" / "train", dataset_dir / "labels" / "train"
    (images / "broken.png").write_bytes(b"this is not a png")
    (labels / "im1.txt").write_text("2 0.5 0.5 0.3 0.3\n"
                                    "1 0.5 0.5 0.3\n"  # 4 numbers
                                    "7 0.5 0.5 0.1 0.1\n"  # class >= nc
                                    "0 1.5 0.5 0.1 0.1\n"  # outside the image
                                    "2 0.5 0.5 0.3 0.3\n"  # duplicate
                                    "0 0.2 0.2 0 0.1\n"  # zero width
                                    "1 1.0005 0.5 0.1 0.1\n")  # rounding overshoot: clipped, kept
    (labels / "im2.txt").unlink()
    (labels / "im3.txt").write_text("")
    with caplog.at_level(logging.INFO, logger="utils.dataloaders"):
        ds = LoadImagesAndLabels(sorted(images.glob("*.png")), imgsz=96, augment=True, nc=3, prefix="train: ")
    assert ("train: Scanning 7 images: 4 labelled, 1 missing labels, 1 empty, 1 corrupt, 5 label rows dropped"
            in caplog.text)
    assert "broken.png" in caplog.text and f"{labels / 'im1.txt'}:2:" in caplog.text
    assert f"{labels / 'im1.txt'}:5: duplicate row" in caplog.text
    assert len(ds) == 6 and all(Path(f).name != "broken.png" for f in ds.im_files)
    np.testing.assert_allclose(ds.labels[1], [[2, 0.5, 0.5, 0.3, 0.3], [1, 1.0, 0.5, 0.1, 0.1]], atol=1e-6)
    assert len(ds.labels[2]) == len(ds.labels[3]) == 0
    imgs, targets, *_ = collate_fn([ds[i] for i in range(len(ds))])  # the rest still trains
    assert imgs.shape == (6, 3, 96, 96) and targets.shape[1] == 6


def test_label_cache_is_reused_then_rebuilt_when_a_label_changes(dataset_dir, monkeypatch):
    files = _files(dataset_dir)
    first = LoadImagesAndLabels(files, imgsz=64)
    cache = label_cache_path(first.label_files)
    assert cache == dataset_dir / "labels" / "train.cache.json" and not first.from_cache
    assert json.loads(cache.read_text())["entries"][0]["status"] == "found"  # JSON, not pickle
    monkeypatch.setattr("utils.dataloaders.verify_image_label", lambda *a: pytest.fail("cache not used"))
    second = LoadImagesAndLabels(files, imgsz=64)
    assert second.from_cache and all(np.array_equal(a, b) for a, b in zip(first.labels, second.labels))
    monkeypatch.undo()
    (dataset_dir / "labels" / "train" / "im0.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    third = LoadImagesAndLabels(files, imgsz=64)
    assert not third.from_cache and third.labels[0].tolist() == [[1, 0.5, 0.5, 0.5, 0.5]]


def test_unwritable_cache_only_warns(dataset_dir, monkeypatch, caplog):
    def refuse(*_):
        raise PermissionError("read-only")

    monkeypatch.setattr("utils.dataloaders.atomic_write_text", refuse)
    ds = LoadImagesAndLabels(_files(dataset_dir), imgsz=64)
    assert len(ds) == 6 and "cannot write the label cache" in caplog.text


def test_ram_cache_gives_the_same_samples(dataset_dir):
    plain = LoadImagesAndLabels(_files(dataset_dir), imgsz=96, augment=True, seed=1)
    cached = LoadImagesAndLabels(_files(dataset_dir), imgsz=96, augment=True, seed=1, cache="ram")
    assert all(im is not None for im in cached.ims)
    for i in (0, 3):
        assert torch.equal(plain[i][0], cached[i][0]) and torch.equal(plain[i][1], cached[i][1])


# ---------------------------------------------------------------- reproducible augmentation

def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and all(torch.equal(a[4][k], b[4][k]) for k in a[4])


def test_seed_epoch_and_index_fix_the_sample(dataset_dir):
    hyp = Hyp(mixup=0.5, degrees=5)
    a = CoordDataset(_files(dataset_dir), imgsz=96, augment=True, hyp=hyp, seed=7)
    b = CoordDataset(_files(dataset_dir), imgsz=96, augment=True, hyp=hyp, seed=7)
    first = a[(3, 2)]  # a key (epoch, index)
    assert _same(first, a[(3, 2)]) and _same(first, b[(3, 2)])
    assert not _same(first, a[(4, 2)])
    assert _same(a[2], a[(0, 2)])  # a plain index is stream 0


def _epoch_batches(ds, loader, epoch: int) -> list[tuple]:
    """The batches a loader restarted for `epoch` yields, prepared here in the main process."""
    loader.sampler.set_epoch(epoch)
    order = list(loader.sampler)
    return [collate_fn([ds[(epoch, i)] for i in order[k:k + loader.batch_size]])
            for k in range(0, len(order), loader.batch_size)]


def test_a_stream_over_epochs_yields_each_epochs_own_batches(dataset_dir):
    """One worker pool spans the epochs; each epoch's batches are its own shuffle and augmentation."""
    loader, ds = create_dataloader(_files(dataset_dir), 64, 3, 32, augment=True, workers=2, seed=5, shuffle=True,
                                   dataset_cls=CoordDataset)
    assert loader.num_workers == 2
    streamed = list(epoch_stream(loader, epochs(1, 3)))
    expected = _epoch_batches(ds, loader, 1) + _epoch_batches(ds, loader, 2)
    assert len(streamed) == len(expected) == 4
    for got, want in zip(streamed, expected):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
        assert torch.equal(got[4]["coords"], want[4]["coords"]) and got[4]["coords"].shape == (3, 3, 16, 16)
    assert not torch.equal(streamed[0][0], streamed[2][0])  # epoch 2 is a new shuffle / augmentation


# ---------------------------------------------------------------- extras alignment

@pytest.mark.parametrize("stride", [4, 24])
def test_flipped_extras_are_the_flipped_extras(dataset_dir, stride):
    class Strided(CoordDataset):
        extra_strides = {"coords": stride}

    flipped = Strided(_files(dataset_dir), imgsz=96, augment=True, hyp=NO_AUG.replace(fliplr=1.0))
    plain = Strided(_files(dataset_dir), imgsz=96, augment=True, hyp=NO_AUG)
    for i in (0, 2):
        img_f, lab_f, _, (_, ((rh, rw), (padw, _))), ext_f = flipped[i]
        img_p, lab_p, _, (hw0, _), ext_p = plain[i]
        assert torch.equal(img_f, img_p.flip(-1))
        torch.testing.assert_close(lab_f[:, 2], 1 - lab_p[:, 2])
        coords = ext_f["coords"]
        if 96 % stride == 0:
            assert torch.equal(coords, ext_p["coords"].flip(-1))
        # either way: a cell at x in the flipped image shows the source point under 96 - x
        x = (torch.arange(coords.shape[-1]) + 0.5) * stride
        u = (96 - x - padw) / (rw * hw0[1])
        inside = (u > 0.02) & (u < 0.98)
        torch.testing.assert_close(coords[0, coords.shape[1] // 2, inside], u[inside].float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mixup", [0.0, 1.0])
def test_mosaic_tiles_cover_the_output_once(tmp_path, mixup):
    """Square images fill every quadrant: a map of ones stays exactly one (no gaps, no double tiles)."""
    (tmp_path / "images").mkdir()
    for i in range(4):
        _write_image(tmp_path / "images" / f"sq{i}.png", (80, 80), IMAGES[1][1], i)

    class Ones(LoadImagesAndLabels):
        extra_strides = {"ones": 8}

        def load_extras(self, index):
            return {"ones": torch.ones(1, 5, 5)}

    ds = Ones(sorted((tmp_path / "images").glob("*.png")), imgsz=64, augment=True,
              hyp=Hyp(scale=0, translate=0, mixup=mixup))
    for i in range(4):
        torch.testing.assert_close(ds[i][4]["ones"], torch.ones(1, 8, 8))


def _check_boxes_against_coords(ds: CoordDataset, hyp: Hyp, indices) -> int:
    """For every intact output box: the extra at its centre names its source image and the source point."""
    stride, checked = ds.extra_strides["coords"], 0
    for index in indices:
        img, labels, _, _, extras = ds[index]
        height, width = img.shape[1:]
        for cls, *xywh in labels[:, 1:].tolist():
            box_px = np.array(xywh) * [width, height, width, height]
            if not _unclipped(box_px, width, height):
                continue
            value, dx, dy = _cell(extras["coords"], box_px[0], box_px[1], stride)
            source = round(float(value[2]))
            candidates = [b for b in ds.labels[source] if b[0] == cls]
            errors = [np.abs(_expected_source_point(b[1:], box_px, dx, dy) - value[:2].numpy()).max()
                      for b in candidates]
            assert candidates and min(errors) < 2e-3, (index, source, errors)
            checked += 1
    return checked


def test_mosaic_extras_follow_each_tile(dataset_dir):
    hyp = NO_AUG.replace(mosaic=1.0, scale=0.3, translate=0.1)
    ds = CoordDataset(_files(dataset_dir), imgsz=128, augment=True, hyp=hyp, seed=2)
    assert _check_boxes_against_coords(ds, hyp, range(6)) >= 8


def test_random_affine_moves_extras_with_the_boxes(dataset_dir):
    hyp = NO_AUG.replace(scale=0.4, translate=0.15)
    ds = CoordDataset(_files(dataset_dir), imgsz=128, augment=True, hyp=hyp, seed=3)
    checked = 0
    for epoch in range(3):
        checked += _check_boxes_against_coords(ds, hyp, [(epoch, i) for i in range(6)])
    assert checked >= 12


def test_rotation_keeps_box_centres_on_their_source_point(dataset_dir):
    ds = CoordDataset(_files(dataset_dir), imgsz=128, augment=True,
                      hyp=NO_AUG.replace(degrees=15, shear=5, scale=0.2), seed=4)
    stride = ds.extra_strides["coords"]
    for index in range(6):
        img, labels, _, _, extras = ds[index]
        for cls, *xywh in labels[:, 1:].tolist():
            box_px = np.array(xywh) * 128
            if not _unclipped(box_px, 128, 128):
                continue
            value, _, _ = _cell(extras["coords"], box_px[0], box_px[1], stride)
            src = [b for b in ds.labels[index] if b[0] == cls]
            tol = [stride * (b[3] / box_px[2] + b[4] / box_px[3]) for b in src]  # about one cell, in source units
            assert any(np.abs(b[1:3] - value[:2].numpy()).max() < t for b, t in zip(src, tol))


class CountingDataset(CountsSamples, CoordDataset):
    pass


def _prepared(ds, at_least: int, timeout: float = 20.0) -> int:
    """Samples prepared so far, once the workers have prepared `at_least` (or the timeout has passed)."""
    end = time.monotonic() + timeout
    while int(ds.calls.sum()) < at_least and time.monotonic() < end:
        time.sleep(0.02)
    return int(ds.calls.sum())


def test_the_workers_prepare_the_next_epoch_while_this_one_is_drawn(dataset_dir):
    loader, ds = create_dataloader(_files(dataset_dir), 64, 2, 32, augment=True, workers=2, shuffle=True, seed=3,
                                   dataset_cls=CountingDataset)
    stream = epoch_stream(loader, epochs(0, 2))
    first_epoch = [next(stream) for _ in range(len(loader))]  # 3 batches of 2
    assert len(first_epoch) == 3
    assert _prepared(ds, 8) >= 8  # a batch of epoch 1 is ready before anyone asked for it


def test_a_cut_pass_prepares_only_its_head(dataset_dir):
    loader, ds = create_dataloader(_files(dataset_dir), 64, 2, 32, augment=True, workers=2, shuffle=True, seed=3,
                                   dataset_cls=CountingDataset)
    whole = [paths for _, _, paths, _, _ in epoch_stream(loader, [(7, None)])]
    assert len(whole) == 3 and int(ds.calls.sum()) == 6
    ds.calls.zero_()
    cut = [paths for _, _, paths, _, _ in epoch_stream(loader, [(7, 1), (8, 1)])]
    assert cut[0] == whole[0] and len(cut) == 2
    assert int(ds.calls.sum()) == 4  # the workers were given nothing beyond the two batches taken


def test_epoch_heads_start_a_fresh_pass_every_epoch():
    """Unlabelled passes of 2 batches joined to labelled epochs of 3: a whole pass, then the head of the next."""
    assert list(epoch_heads(4, 6, per_epoch=3, per_pass=2)) == [(4000, 2), (4001, 1), (5000, 2), (5001, 1)]
    assert list(epoch_heads(0, 1, per_epoch=2, per_pass=5)) == [(0, 2)]
