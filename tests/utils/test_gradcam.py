"""Grad-CAM++: the formula on a hand-made case, class scores, map geometry, and detect.py --cam output."""

from __future__ import annotations

import cv2
import pytest
import torch

import detect
from engine.predictor import PredictOptions, Predictor
from models.loading import load_model
from tests.conftest import write_image
from tests.deploy.test_backends import NAMES, make_checkpoint
from utils.gradcam import GradCAMPlusPlus, class_scores, gradcam_plus_plus, to_original


def test_gradcam_plus_plus_on_a_linear_score():
    """S = sum of channel 0: g = 1 there, 0 on channel 1, so alpha = 1 / (2 + sum A0) and the map is w0 A0."""
    a = torch.zeros(2, 4, 4)
    a[0, 1, 2], a[0, 3, 3] = 3.0, 1.0  # the evidence
    a[1, 0, 0] = 5.0  # a strong channel the score ignores
    g = torch.zeros_like(a)
    g[0] = 1.0
    expected = 16 / (2 + 4.0) * a[0]
    assert torch.allclose(gradcam_plus_plus(a, g), expected)
    assert gradcam_plus_plus(a, -g).eq(0).all()  # only positive gradients count


def test_class_scores_sum_confident_candidates_or_take_the_best():
    decoded = torch.zeros(1, 4, 5 + 2)
    decoded[0, :, 4] = torch.tensor([0.9, 0.8, 0.1, 0.5])  # obj
    decoded[0, :, 5] = torch.tensor([0.5, 0.5, 0.9, 0.2])  # class 0: 0.45, 0.40, 0.09, 0.10
    decoded[0, :, 6] = torch.tensor([0.1, 0.1, 0.1, 0.3])  # class 1: 0.09, 0.08, 0.01, 0.15
    scores = class_scores(decoded, conf_thres=0.25)
    assert torch.allclose(scores, torch.tensor([0.85, 0.15]))


def test_maps_return_to_the_original_image():
    """A peak at input pixel (y, x) lands where the letterbox took that pixel from."""
    heat = torch.zeros(64, 64)
    heat[16 + 20, 30] = 1.0  # letterbox of a 96x192 image: gain 1/3 (32x64), 16 px of padding on top
    back = to_original(heat, (96, 192), ((1 / 3, 1 / 3), (0.0, 16.0)))
    y, x = divmod(int(back.argmax()), back.shape[1])
    assert back.shape == (96, 192) and abs(y - 60) <= 2 and abs(x - 90) <= 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt")


def test_maps_per_class_are_finite_scaled_and_not_constant(weights, tmp_path):
    model = load_model(weights, fuse=True)
    image = cv2.imread(str(write_image(tmp_path / "a.png", size=(96, 128))))
    predictor = Predictor(model, PredictOptions(imgsz=96, conf_thres=0.001))
    before = predictor(image)
    x, _ = predictor.preprocess(image)
    result = GradCAMPlusPlus(model)(x, conf_thres=0.001)
    assert result.classes == [0, 1, 2] and result.maps.shape == (3, *x.shape[-2:])
    assert torch.isfinite(result.maps).all() and result.maps.min() >= 0 and result.maps.max() == 1
    assert all(m.std() > 0 for m in result.maps)  # each class has structure
    assert not torch.allclose(result.maps[0], result.maps[1])  # classes differ
    assert torch.equal(predictor(image), before)  # explaining leaves inference as it was


def test_detect_cam_writes_a_strip_per_image(weights, tmp_path):
    source = tmp_path / "images"
    for i in range(2):
        write_image(source / f"{i}.png", size=(96, 128), seed=i)
    run = detect.main(["--weights", str(weights), "--source", str(source), "--imgsz", "96", "--cam", "17",
                       "--project", str(tmp_path / "runs"), "--quiet", "--device", "cpu"])
    for i in range(2):
        strip = cv2.imread(str(run / "cam" / f"{i}.jpg"))
        assert strip is not None and strip.shape == (96, 128 * len(NAMES), 3) and strip.std() > 0
    with pytest.raises(SystemExit) as e:
        detect.main(["--weights", str(weights), "--source", str(source), "--cam", "24", "--quiet",
                     "--project", str(tmp_path / "runs")])
    assert "layer 24 is Detect" in str(e.value.code) and "\n" not in str(e.value.code)
