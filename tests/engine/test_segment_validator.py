"""Box and mask metrics of a segmenter: mask mAP is pycocotools' `segm` mAP of the same predictions, and
segment/val.py scores a trained segmenter, writes RLE masks, and refuses a detector in one line."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import val
from engine.segment_validator import SegmentValResult, write_coco_segment_ground_truth
from engine.validate import ValidationRun, validate
from engine.validator import ValOptions
from segment import val as segment_val
from models.loading import save_model
from models.yolo import Model
from tests.segment_fixtures import NAMES
from utils.masks import rle_to_mask


def _pycocotools_segm(gt_json, dt_json) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) of pycocotools' segm evaluation."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        ev = COCOeval(gt, gt.loadRes(str(dt_json)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def test_mask_map_equals_pycocotools_segm_on_the_saved_json(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    run = ValidationRun(trainer.save_dir / "weights" / "best.pt", data, "val", 64, 4, workers=0, kind="segment",
                        save_dir=tmp_path)
    result = validate(run, ValOptions(save_json=True, plots=False, max_det=100))  # COCO keeps 100 per image
    assert isinstance(result, SegmentValResult) and result.mask_map50 > 0.3, result
    gt = write_coco_segment_ground_truth(trainer.val_loader.dataset, tmp_path / "gt.json", NAMES)
    coco_map, coco_map50 = _pycocotools_segm(gt, tmp_path / "predictions.json")
    assert result.mask_map == pytest.approx(coco_map, abs=0.01)
    assert result.mask_map50 == pytest.approx(coco_map50, abs=0.01)


def test_segment_val_scores_boxes_and_masks_and_writes_rle(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    result = segment_val.main(["--data", str(data), "--weights", str(trainer.save_dir / "weights" / "best.pt"),
                               "--imgsz", "64", "--workers", "0", "--project", str(tmp_path), "--save-json",
                               "--quiet"])
    assert result.map50 > 0.3 and result.mask_map50 > 0.3 and result.fitness() > result.map
    rows = json.loads((tmp_path / "exp" / "predictions.json").read_text())
    image = rows[0]
    mask = rle_to_mask(image["segmentation"])
    assert mask.shape == (64, 64) and mask.any()  # the original image's size (the fixture's images are 64 px)
    assert (tmp_path / "exp" / "confusion_matrix.png").exists()


def test_each_validator_refuses_the_other_kind_in_one_line(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    segmenter = trainer.save_dir / "weights" / "best.pt"
    detector = tmp_path / "detector.pt"
    model = Model("yolov5n.yaml", nc=len(NAMES))
    model.names = list(NAMES)
    save_model(detector, model)
    for script, weights, other in ((val, segmenter, "segment/val.py"), (segment_val, detector, "val.py")):
        with pytest.raises(SystemExit) as e:
            script.main(["--data", str(data), "--weights", str(weights), "--imgsz", "64", "--project", str(tmp_path),
                         "--quiet"])
        message = str(e.value.code)
        assert message.startswith("error: ") and "\n" not in message and str(weights) in message and other in message
