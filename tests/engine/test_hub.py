"""torch.hub.load(<this repo>, 'custom', path=..., source='local') works offline and gives detect.py's boxes
for paths, numpy arrays and PIL images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import detect
from models.loading import save_model
from models.yolo import Model
from tests.models.batchnorm import randomise_batchnorm

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(tmp_path, tiny_cfg) -> Path:
    torch.manual_seed(0)
    model = Model(tiny_cfg)
    randomise_batchnorm(model)
    with torch.no_grad():
        for m in model.detect.m:
            m.bias.view(model.detect.na, -1)[:, 4:6] = 2.0  # confident objectness and class 0: random weights detect
    model.names = ["crazing", "inclusion", "scratches"]
    path = tmp_path / "best.pt"
    save_model(path, model)
    return path


def test_hub_model_takes_paths_arrays_and_pil_and_matches_detect(weights, tmp_path):
    image_file = tmp_path / "images" / "a.jpg"
    image_file.parent.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image_file), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    model = torch.hub.load(str(REPO), "custom", path=str(weights), source="local", imgsz=64, conf=0.3)
    bgr = cv2.imread(str(image_file))
    results = model([str(image_file), bgr, Image.open(image_file)])
    assert len(results) == 3 and len(results.xyxy[0]) > 0
    assert torch.equal(results.xyxy[0], results.xyxy[1]) and torch.equal(results.xyxy[0], results.xyxy[2])
    run = detect.main(["--weights", str(weights), "--source", str(image_file.parent), "--imgsz", "64",
                       "--conf-thres", "0.3", "--project", str(tmp_path / "detect"), "--save-txt", "--save-conf",
                       "--quiet"])
    rows = np.loadtxt(run / "labels" / "a.txt", ndmin=2)  # cls xc yc w h conf, normalised
    table = results.pandas().xyxy[0]
    assert list(table.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(table) == len(rows)
    np.testing.assert_allclose(np.sort(table["confidence"].to_numpy()), np.sort(rows[:, 5]), atol=1e-5)
    assert set(table["name"]) <= {"crazing", "inclusion", "scratches"}
    saved = results.save(tmp_path / "hub")
    assert sorted(p.name for p in saved.iterdir()) == ["a.jpg", "image1.jpg"]  # PIL's own file name, then the array
    assert "image 1/3 a.jpg: 128x96" in str(results)


def test_bad_inputs_are_clear(weights):
    model = torch.hub.load(str(REPO), "custom", path=str(weights), source="local", imgsz=64)
    with pytest.raises(ValueError, match="nowhere.jpg: not a readable image file"):
        model("nowhere.jpg")
    with pytest.raises(TypeError, match="expected a path, a numpy array or a PIL image"):
        model(42)
