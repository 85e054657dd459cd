"""The val loop scores known predictions exactly, in original-image pixels, and as pycocotools does.

A fake detector reads each image's id from its grey level and emits hand-made boxes given in the
original image's pixels, mapped into the network input by its own letterbox/stretch arithmetic;
the validator must map them (and the labels) back and score them.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.validator import ValOptions, ValResult, coco_image_id, run_validation, write_coco_ground_truth
from utils.boxes import xyxy2xywh
from utils.dataloaders import create_dataloader

NAMES = ["crazing", "inclusion", "scratches"]
NC = len(NAMES)
IMGSZ = 64
# image stem -> (h0, w0), labels (k, 5) [cls, x1, y1, x2, y2] in original pixels; 4 objects per class,
# every size halves exactly at imgsz 64, boxes stay 10%+ of their width away from the borders
IMAGES = {
    "000001": ((96, 128), [[0, 10, 10, 50, 40], [1, 70, 20, 110, 80]]),
    "000002": ((128, 96), [[2, 10, 10, 60, 50], [0, 20, 70, 70, 120]]),
    "000003": ((128, 128), [[1, 10, 10, 50, 60], [2, 60, 60, 110, 110], [0, 70, 10, 110, 40]]),
    "000004": ((64, 128), [[1, 10, 10, 60, 50], [2, 70, 20, 110, 55]]),
    "000005": ((128, 64), [[0, 10, 10, 50, 50], [1, 10, 70, 50, 110]]),
    "000006": ((96, 128), [[2, 20, 40, 80, 86]]),
    "000007": ((80, 128), []),  # a background image: empty label file
}


def grey_of(index: int) -> int:
    """Uniform grey level that identifies image `index` (well below the letterbox border's 114)."""
    return 20 + 10 * index


def write_dataset(root: Path) -> list[Path]:
    """Uniform grey images and YOLO labels under root/images/val and root/labels/val."""
    files = []
    for i, (stem, ((h, w), boxes)) in enumerate(IMAGES.items()):
        f = root / "images" / "val" / f"{stem}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(f), np.full((h, w, 3), grey_of(i), np.uint8))
        rows = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for c, x1, y1, x2, y2 in boxes]
        label = root / "labels" / "val" / f"{stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + ("\n" if rows else ""))
        files.append(f)
    return files


def truth(conf: float = 0.9) -> dict[int, np.ndarray]:
    """Perfect detections per image index: (k, 6) [x1, y1, x2, y2, conf, cls] original pixels."""
    out = {}
    for i, (_, boxes) in enumerate(IMAGES.values()):
        b = np.array(boxes, np.float64).reshape(-1, 5)
        out[i] = np.concatenate((b[:, 1:5], np.full((len(b), 1), conf), b[:, :1]), 1)
    return out


class OracleDetector(nn.Module):
    """Emits the given detections of whichever image it sees, decoded as YOLOv5's eval output."""

    def __init__(self, detections: dict[int, np.ndarray], scale_mode: bool):
        super().__init__()
        self.detections, self.scale_mode = detections, scale_mode
        self.anchor = nn.Parameter(torch.zeros(1))  # a device for the validator to find
        self.shapes = [shape for shape, _ in IMAGES.values()]

    def to_input(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        """(k, 4) xyxy boxes of image `index` in the pixels of an (H, W) network input."""
        (h0, w0), (h, w) = self.shapes[index], hw
        if self.scale_mode:
            gx, gy, px, py = w / w0, h / h0, 0, 0
        else:
            r = IMGSZ / max(h0, w0)
            rw, rh = round(w0 * r), round(h0 * r)
            gx, gy, px, py = rw / w0, rh / h0, (w - rw) // 2, (h - rh) // 2
        return self.detections[index][:, :4] * [gx, gy, gx, gy] + [px, py, px, py]

    def forward(self, imgs: torch.Tensor):
        b, _, h, w = imgs.shape
        out = torch.zeros(b, 8, 5 + NC)  # (B, N, xywh + obj + classes)
        for j in range(b):
            index = (round(float(imgs[j, 0, h // 2, w // 2]) * 255) - 20) // 10
            det = self.detections[index]
            out[j, :len(det), :4] = torch.from_numpy(xyxy2xywh(self.to_input(index, (h, w))))
            out[j, :len(det), 4] = torch.from_numpy(det[:, 4])
            out[j, torch.arange(len(det)), 5 + torch.from_numpy(det[:, 5]).long()] = 1.0
        return out, []


@pytest.fixture
def image_files(tmp_path) -> list[Path]:
    return write_dataset(tmp_path / "data")


def validate(files: list[Path], detections: dict[int, np.ndarray], scale_mode: bool = False,
             save_dir: Path | None = None, **options) -> ValResult:
    loader, _ = create_dataloader(files, IMGSZ, 3, 32, rect=not scale_mode, scale_mode=scale_mode, workers=0,
                                  nc=NC, dataset_kwargs={} if scale_mode else {"pad": 0.5})
    options.setdefault("plots", False)
    return run_validation(OracleDetector(detections, scale_mode), loader, NAMES, save_dir, ValOptions(**options))


def test_perfect_predictions_score_one(image_files):
    r = validate(image_files, truth())
    assert (r.map50, r.map, r.mp, r.mr) == pytest.approx((1.0, 1.0, 1.0, 1.0), abs=1e-6)
    assert r.maps == pytest.approx(np.ones(NC))
    assert r.seen == len(IMAGES)
    assert [row[:3] for row in r.class_rows] == [("crazing", 4, 4), ("inclusion", 4, 4), ("scratches", 4, 4)]
    assert r.fitness() == pytest.approx(1.0)
    assert r.results_row() == pytest.approx((1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0), abs=1e-6)


def test_wrong_classes_score_zero(image_files):
    dets = truth()
    for d in dets.values():
        d[:, 5] = (d[:, 5] + 1) % NC
    r = validate(image_files, dets)
    assert (r.map50, r.map) == (0.0, 0.0)


def test_finding_half_the_objects_scores_half(image_files):
    """Two of four objects per class found, no false positives: precision 1 up to recall 0.5, so
    COCO's 101-point AP is 51/101 at every IoU threshold."""
    dets, kept = truth(), {c: 0 for c in range(NC)}
    for i, d in dets.items():
        keep = []
        for row in d:
            keep.append(kept[int(row[5])] < 2)
            kept[int(row[5])] += 1
        dets[i] = d[np.array(keep, bool).reshape(-1)]
    r = validate(image_files, dets)
    assert (r.map50, r.map, r.mr) == pytest.approx((51 / 101, 51 / 101, 0.5), abs=1e-6)


def shifted(fraction: float) -> dict[int, np.ndarray]:
    """Every box moved right by `fraction` of its width: IoU = (1 - f) / (1 + f) with its label."""
    dets = truth()
    for d in dets.values():
        d[:, [0, 2]] += fraction * (d[:, 2:3] - d[:, 0:1])
    return dets


@pytest.mark.parametrize("detections, expected", [(truth(), (1.0, 1.0)), (shifted(0.1), (1.0, 0.7))],
                         ids=["perfect", "iou-0.82"])
def test_letterbox_and_stretched_inputs_score_alike(image_files, detections, expected):
    """IoU 0.818 passes the thresholds 0.50-0.80 (7 of 10) in both modes only if both map boxes
    back to the original image correctly (stretching changes the aspect ratio, letterbox pads)."""
    letterbox = validate(image_files, detections, scale_mode=False)
    stretched = validate(image_files, detections, scale_mode=True)
    assert (letterbox.map50, letterbox.map) == pytest.approx(expected, abs=1e-6)
    assert (stretched.map50, stretched.map) == pytest.approx(expected, abs=1e-6)


def noisy(seed: int = 0) -> dict[int, np.ndarray]:
    """Jittered hits, a few wrong classes, missed objects and false positives, random confidences."""
    rng = np.random.default_rng(seed)
    dets = {}
    for i, ((h0, w0), _) in enumerate(IMAGES.values()):
        rows = []
        for x1, y1, x2, y2, _, c in truth()[i]:
            if rng.random() < 0.15:
                continue  # missed
            w, h = x2 - x1, y2 - y1
            dx, dy, dw, dh = rng.normal(0, 0.08, 4) * [w, h, w, h]
            c = (c + 1) % NC if rng.random() < 0.15 else c
            rows.append([x1 + dx, y1 + dy, x2 + dx + dw, y2 + dy + dh, rng.uniform(0.05, 1), c])
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, w0 - 20), rng.uniform(0, h0 - 20)
            rows.append([x, y, x + rng.uniform(10, 20), y + rng.uniform(10, 20), rng.uniform(0.05, 1),
                         rng.integers(NC)])
        dets[i] = np.array(rows, np.float64).reshape(-1, 6)
    return dets


def test_save_json_agrees_with_pycocotools(image_files, tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    save_dir = tmp_path / "run"
    loader, dataset = create_dataloader(image_files, IMGSZ, 3, 32, rect=True, workers=0, nc=NC,
                                        dataset_kwargs={"pad": 0.5})
    r = run_validation(OracleDetector(noisy(), False), loader, NAMES, save_dir,
                       ValOptions(save_json=True, plots=False))
    predictions = json.loads((save_dir / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} <= {int(s) for s in IMAGES}
    assert all(len(p["bbox"]) == 4 and 0 <= p["category_id"] < NC for p in predictions)
    gt_file = write_coco_ground_truth(dataset, tmp_path / "gt.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        coco = COCOeval(gt, gt.loadRes(str(save_dir / "predictions.json")), "bbox")
        coco.evaluate()
        coco.accumulate()
        coco.summarize()
    coco_map, coco_map50 = coco.stats[:2]
    assert 0.1 < r.map < r.map50 < 0.9  # a genuinely partial result
    assert r.map50 == pytest.approx(coco_map50, abs=0.01)
    assert r.map == pytest.approx(coco_map, abs=0.01)


def test_save_txt_plots_and_background_images(image_files, tmp_path):
    """--save-txt of perfect predictions reproduces the label files; mosaics and curves are written."""
    save_dir = tmp_path / "run"
    validate(image_files, truth(), save_dir=save_dir, save_txt=True, save_conf=True, plots=True)
    for stem, ((h, w), boxes) in IMAGES.items():
        out = save_dir / "labels" / f"{stem}.txt"
        if not boxes:
            assert not out.exists()  # no predictions, no file (as YOLOv5)
            continue
        rows = np.loadtxt(out, ndmin=2)  # (k, 6) cls x y w h conf
        expected = np.loadtxt(image_files[0].parents[2] / "labels" / "val" / f"{stem}.txt", ndmin=2)
        assert rows[:, 5] == pytest.approx(0.9, abs=1e-6)
        key = lambda a: a[np.lexsort(a[:, :3].T[::-1])]  # noqa: E731 - sort rows the same way
        assert key(rows[:, :5]) == pytest.approx(key(expected), abs=1e-5)
    for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch2_pred.jpg", "confusion_matrix.png",
                 "PR_curve.png", "F1_curve.png"):
        assert cv2.imread(str(save_dir / name)) is not None, name
    assert not (save_dir / "val_batch3_labels.jpg").exists()


def test_no_predictions_and_no_labels_do_not_crash(image_files, tmp_path):
    empty = {i: np.zeros((0, 6)) for i in range(len(IMAGES))}
    r = validate(image_files, empty, save_dir=tmp_path / "run", plots=True, save_json=True)
    assert (r.map50, r.map, r.mp, r.mr) == (0.0, 0.0, 0.0, 0.0)
    assert r.seen == len(IMAGES)
    assert json.loads((tmp_path / "run" / "predictions.json").read_text()) == []

    background = [f for f in image_files if f.stem == "000007"] * 2
    r = validate(background, {len(IMAGES) - 1: np.array([[5, 5, 30, 30, 0.8, 1]])})
    assert (r.map50, r.map, r.class_rows) == (0.0, 0.0, [])


class SideInputModel(nn.Module):
    """Records the side inputs it is given; returns no boxes and one raw map."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen_side: list[dict] = []

    def forward(self, imgs: torch.Tensor, side: dict | None = None):
        self.seen_side.append(side)
        assert imgs.dtype == torch.float32 and float(imgs.max()) <= 1.0
        return torch.zeros(imgs.shape[0], 4, 5 + NC), [torch.zeros(imgs.shape[0], 3, 2, 2, 5 + NC)]


def test_side_inputs_reach_the_model_and_loss_is_averaged():
    model = SideInputModel().train()
    imgs = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]])
    shapes = [((32, 32), ((1.0, 1.0), (0.0, 0.0)))] * 2
    latents = {"latent_p3": torch.ones(2, 4, 4, 4)}
    batches = [(imgs, targets, ["a.png", "b.png"], shapes, latents), (imgs, targets, ["c.png", "d.png"], shapes, {})]
    items = iter([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 4.0, 5.0])])
    r = run_validation(model, batches, NAMES, None, ValOptions(plots=False),
                       compute_loss=lambda raw, t: (torch.zeros(()), next(items)))
    assert torch.equal(model.seen_side[0]["latent_p3"], latents["latent_p3"])
    assert model.seen_side[1] is None  # plain batches call model(imgs)
    assert r.loss == pytest.approx([2.0, 3.0, 4.0])
    assert not model.training
    assert r.seen == 4 and r.map == 0.0
    assert r.class_rows == [("inclusion", 2, 2, 0.0, 0.0, 0.0, 0.0)]  # one label per image, never found


def test_coco_image_ids():
    assert coco_image_id("data/images/val/000000139.jpg") == 139
    assert coco_image_id(Path("scratch_07.png")) == "scratch_07"
