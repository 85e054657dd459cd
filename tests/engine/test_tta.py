"""Test-time augmentation: every pass's boxes land back on the input's pixels, the passes keep the levels
that suit their scale, and val.py / detect.py take --augment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import detect
import val
from engine.tta import PASSES, TTA, level_sizes
from tests.scripts.test_val import NAMES, args, checkpoint, data_yaml  # noqa: F401  (fixtures)


class BrightSquareDetector(nn.Module):
    """Every output row is the box around its input's bright pixels (> 0.9), as YOLOv5's decoded rows."""

    def __init__(self):
        super().__init__()
        self.register_buffer("stride", torch.tensor([8.0, 16.0, 32.0]))
        self.names = ["square"]
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, list]:
        b, _, h, w = imgs.shape
        rows = 3 * sum((h // int(s)) * (w // int(s)) for s in self.stride.tolist())
        out = torch.zeros(b, rows, 6)
        for j in range(b):
            ys, xs = torch.nonzero(imgs[j, 0] > 0.9, as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            out[j, :, :4] = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)).float()
            out[j, :, 4:] = 1.0
        return out, []


def test_every_pass_maps_its_boxes_back_to_the_input():
    imgs = torch.full((1, 3, 128, 160), 0.2)
    imgs[:, :, 40:80, 30:70] = 1.0  # the square: x 30..70, y 40..80, off-centre so a wrong flip shows
    model = BrightSquareDetector()
    out, _ = TTA(model)(imgs)
    full, mid, small = (level_sizes(model, hw) for hw in ((128, 160), (128, 160), (96, 128)))  # 0.83x pads to 128x160
    assert out.shape[1] == sum(full[:-1]) + sum(mid) + sum(small[1:])  # full size without P5, 0.67x without P3
    np.testing.assert_allclose(out[0, :, :4].numpy(), np.tile([50.0, 60.0, 40.0, 40.0], (out.shape[1], 1)), atol=2.5)
    assert [ratio for ratio, _ in PASSES] == [1.0, 0.83, 0.67]
    plain, _ = model(imgs)
    assert out.shape[2] == plain.shape[2] and out.shape[1] != plain.shape[1]  # same columns, other predictions


def test_teachers_and_segmenters_are_refused():
    teacher = BrightSquareDetector()
    teacher.side_inputs = {"latents_p3": (192, 8)}
    with pytest.raises(ValueError, match="latents"):
        TTA(teacher)
    segmenter = BrightSquareDetector()
    segmenter.nm = 32
    with pytest.raises(ValueError, match="not segmenters"):
        TTA(segmenter)


def test_val_and_detect_take_augment(data_yaml, checkpoint, tmp_path):  # noqa: F811
    plain = val.main(args(data_yaml, checkpoint, tmp_path / "runs", "--conf-thres", "0.001"))
    augmented = val.main(args(data_yaml, checkpoint, tmp_path / "runs", "--conf-thres", "0.001", "--augment"))
    assert 0.0 <= augmented.map50 <= 1.0 and augmented.seen == plain.seen
    source = next(data_yaml.parent.rglob("images/val"))
    run = detect.main(["--weights", str(checkpoint), "--source", str(source), "--imgsz",
                       "64", "--conf-thres", "0.001", "--max-det", "5", "--project", str(tmp_path / "det"),
                       "--save-txt", "--augment", "--quiet"])
    assert list((run / "labels").glob("*.txt"))
