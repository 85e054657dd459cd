"""segment/predict.py: a trained segmenter's masks painted on the images, and its --save-txt polygons are the
masks it predicted."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.polygons import polygons_to_mask
from engine.predictor import PredictOptions, SegmentPredictor
from engine.validate import load_eval_model
from segment import predict as segment_predict
from utils.masks import mask_iou


def test_writes_painted_images_and_polygons_of_its_masks(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    weights = trainer.save_dir / "weights" / "best.pt"
    images = data.parent / "images" / "val"
    run = segment_predict.main(["--weights", str(weights), "--source", str(images), "--imgsz", "64",
                                "--project", str(tmp_path), "--save-txt", "--save-conf", "--conf-thres", "0.01",
                                "--max-det", "5", "--quiet"])
    source = images / "0.png"
    model = load_eval_model(weights, torch.device("cpu"), kind="segment")
    predictor = SegmentPredictor(model, PredictOptions(64, conf_thres=0.01, max_det=5))
    det, masks = predictor(cv2.imread(str(source)))
    assert len(det) and masks.shape == (len(det), 64, 64) and masks.any()
    rows = [r.split() for r in (run / "labels" / "0.txt").read_text().splitlines()]
    written = [r for r in rows if r]
    assert len(written) == int(masks.flatten(1).any(1).sum())  # one row per non-empty mask
    first = np.array(written[0][1:-1], np.float64).reshape(-1, 2)
    assert int(written[0][0]) == int(det[0, 5]) and float(written[0][-1]) == pytest.approx(float(det[0, 4]), abs=1e-5)
    drawn = torch.from_numpy(polygons_to_mask([first], 64, 64))[None]
    assert mask_iou(drawn, masks[:1]).item() > 0.85  # the polygon outlines the mask it came from
    painted, plain = cv2.imread(str(run / "0.png")), cv2.imread(str(source))
    assert (painted[masks[0].numpy()] != plain[masks[0].numpy()]).any()


def test_cam_is_refused_for_a_segmenter_in_one_line(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    with pytest.raises(SystemExit) as e:
        segment_predict.main(["--weights", str(trainer.save_dir / "weights" / "best.pt"), "--source",
                              str(data.parent / "images" / "val"), "--imgsz", "64", "--project", str(tmp_path),
                              "--cam", "--quiet"])
    assert str(e.value.code).startswith("error: ") and "--cam" in str(e.value.code)
