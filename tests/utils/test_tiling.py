"""Sliced inference: windows cover the image with the asked overlap, duplicates across windows merge, and a
detector that cannot see small defects in a shrunk large image finds them through tiles (detect.py --tile)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.predictor import PredictOptions, Predictor, TiledPredictor
from utils.boxes import box_iou
from utils.tiling import merge_detections, tile_windows


def test_windows_cover_the_image_and_stay_inside():
    windows = tile_windows(1000, 2048, 640, 0.2)
    assert all(x2 - x1 == 640 and y2 - y1 == 640 and x2 <= 2048 and y2 <= 1000 for x1, y1, x2, y2 in windows)
    covered = np.zeros((1000, 2048), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({x1 for x1, *_ in windows})
    assert min(b - a for a, b in zip(xs, xs[1:])) <= 512  # neighbours overlap by at least 20 % of a tile
    assert tile_windows(300, 400, 640, 0.2) == [(0, 0, 400, 300)]  # a small image is one window
    with pytest.raises(ValueError, match="--tile-overlap 1.0"):
        tile_windows(100, 100, 64, 1.0)


def test_nms_keeps_one_copy_and_nmm_joins_a_box_cut_by_a_border():
    det = torch.tensor([[100, 100, 140, 120, 0.9, 0], [101, 100, 141, 120, 0.8, 0], [100, 100, 140, 120, 0.7, 1]])
    assert merge_detections(det, "nms").tolist() == [det[0].tolist(), det[2].tolist()]  # per class
    halves = torch.tensor([[100, 100, 160, 110, 0.9, 0], [150, 100, 220, 110, 0.6, 0]])  # a scratch across a border
    joined = merge_detections(halves, "nmm", merge_ios=0.1)
    assert joined.tolist() == [pytest.approx([100, 100, 220, 110, 0.9, 0])]
    assert len(merge_detections(halves, "nms")) == 2


class SharpEyedOnlyUpClose(nn.Module):
    """Finds bright blobs in its input, but only those at least 8 input pixels across: a detector's limit."""

    def __init__(self):
        super().__init__()
        self.register_buffer("stride", torch.tensor([8.0, 16.0, 32.0]))
        self.names, self.side_inputs = ["defect"], {}
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, imgs: torch.Tensor):
        out = torch.zeros(imgs.shape[0], 64, 6)
        for j, im in enumerate(imgs):
            mask = (im[0] > 0.8).numpy().astype(np.uint8)
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            blobs = [s for s in stats[1:] if min(s[2], s[3]) >= 8][:64]
            for k, (x, y, w, h, _) in enumerate(blobs):
                out[j, k] = torch.tensor([x + w / 2, y + h / 2, w, h, 0.9, 1.0])
        return out, []


def _recall(det: torch.Tensor, truth: torch.Tensor) -> float:
    return float((box_iou(truth, det[:, :4]).max(1).values >= 0.5).float().mean()) if len(det) else 0.0


def test_tiles_find_small_defects_the_shrunk_image_misses():
    image = np.full((1024, 2048, 3), 60, np.uint8)
    truth = []
    for k in range(12):  # NEU-scale defects: 14-20 px in a 2048 x 1024 image
        x, y, s = 100 + 160 * k, 200 + 50 * (k % 8), 14 + (k % 4) * 2
        image[y:y + s, x:x + s] = 255
        truth.append([x, y, x + s, y + s])
    truth = torch.tensor(truth, dtype=torch.float32)
    whole = Predictor(SharpEyedOnlyUpClose(), PredictOptions(imgsz=640))(image)
    tiled = TiledPredictor(SharpEyedOnlyUpClose(), PredictOptions(imgsz=640, tile=640, tile_overlap=0.2))(image)
    assert _recall(whole, truth) == 0.0  # shrunk 3.2x, every defect is under 8 px
    assert _recall(tiled, truth) == 1.0 and len(tiled) == len(truth)  # found once each, across overlaps


def test_detect_takes_tile_flags_and_refuses_bad_ones_in_one_line(tmp_path, tiny_cfg):
    import detect
    from models.loading import save_model
    from models.yolo import Model

    model = Model(tiny_cfg)
    model.names = ["a", "b", "c"]
    save_model(tmp_path / "m.pt", model)
    image = tmp_path / "src" / "big.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.full((100, 200, 3), 90, np.uint8))
    argv = ["--weights", str(tmp_path / "m.pt"), "--source", str(image), "--imgsz", "64", "--project", str(tmp_path),
            "--quiet", "--tile", "64"]
    run = detect.main(argv + ["--tile-merge", "nmm"])
    assert (run / "big.png").exists()
    with pytest.raises(SystemExit) as e:
        detect.main(argv + ["--tile-overlap", "1.5"])
    assert str(e.value.code).startswith("error: ") and "--tile-overlap 1.5" in str(e.value.code)


def test_tiled_validation_scores_what_tiles_find(tmp_path):
    from engine.validate import ValidationRun, validate_tiled
    from engine.validator import ValOptions
    from utils.data_config import load_data_config

    for i in range(2):  # large images with small defects, YOLO labels
        image = np.full((1024, 2048, 3), 60, np.uint8)
        rows = []
        for k in range(6):
            x, y, s = 150 + 300 * k, 300 + 40 * k + 100 * i, 16
            image[y:y + s, x:x + s] = 255
            rows.append(f"0 {(x + s / 2) / 2048:.6f} {(y + s / 2) / 1024:.6f} {s / 2048:.6f} {s / 1024:.6f}")
        (tmp_path / "images" / "val").mkdir(parents=True, exist_ok=True)
        (tmp_path / "labels" / "val").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "images" / "val" / f"{i}.png"), image)
        (tmp_path / "labels" / "val" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    yaml_file = tmp_path / "data.yaml"
    yaml_file.write_text(f"path: {tmp_path}\ntrain: images/val\nval: images/val\nnames: [defect]\n")
    data = load_data_config(yaml_file)
    run = ValidationRun(tmp_path / "oracle.pt", yaml_file, "val", 640)
    tiled = validate_tiled(run, ValOptions(plots=False), PredictOptions(640, conf_thres=0.001, tile=640),
                           SharpEyedOnlyUpClose(), data)
    whole = validate_tiled(run, ValOptions(plots=False), PredictOptions(640, conf_thres=0.001, tile=4096),
                           SharpEyedOnlyUpClose(), data)  # one window larger than the image: whole-image only
    assert tiled.map50 > 0.99 and whole.map50 == 0.0 and tiled.seen == whole.seen == 2
