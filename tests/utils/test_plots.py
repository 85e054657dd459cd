"""Every plot writes a decodable image offline; labels stay on the image; bad CSVs are named."""

from __future__ import annotations

import socket

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from utils.plots import (Annotator, colors, plot_accuracy_vs_cost, plot_columns, plot_confusion_matrix, plot_images,
                         plot_labels, plot_mc_curve, plot_pr_curve, plot_results, plot_runs)

RESULTS_COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss",
                   "metrics/precision", "metrics/recall", "metrics/mAP_0.5",
                   "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
                   "x/lr0", "x/lr1", "x/lr2"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt (a font download, say) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("plots tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _decodes(path) -> np.ndarray:
    assert path.stat().st_size > 0
    im = cv2.imread(str(path))
    assert im is not None, f"{path} does not decode"
    return im


def _results_csv(tmp_path, rows: int = 5, extra: bool = True):
    """A results.csv as YOLOv5 writes it: names right-aligned with spaces, plus an extra column."""
    rng = np.random.default_rng(0)
    columns = RESULTS_COLUMNS + (["fusion/alpha_p3_cross"] if extra else [])
    df = pd.DataFrame(rng.random((rows, len(columns))), columns=[f"{c:>22}" for c in columns])
    df.iloc[:, 0] = np.arange(rows)
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    return path


def test_colors_are_a_fixed_20_colour_palette():
    palette = [colors(i) for i in range(20)]
    assert len(set(palette)) == 20
    assert colors(23) == colors(3)
    assert colors(5, bgr=True) == colors(5)[::-1]
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in colors(7))


@pytest.mark.parametrize("box", [[185, 0, 199, 20], [0, 85, 12, 99], [190, 90, 199, 99]])
def test_annotator_keeps_edge_labels_inside_the_image(box):
    label, color = "rolled-in_scale 0.93", (0, 0, 255)
    annotator = Annotator(np.zeros((100, 200, 3), dtype=np.uint8), line_width=2)
    x1, y1, x2, y2, _ = annotator.label_box(label, (box[0], box[1]))
    assert 0 <= x1 <= x2 < 200 and 0 <= y1 <= y2 < 100
    annotator.box_label(box, label, color=color)
    im = annotator.result()
    tab = np.all(im == color, axis=2)  # tab and box outline
    cols = np.nonzero(tab.any(0))[0]
    text_w = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, annotator.font_scale,
                             annotator.font_thickness)[0][0]
    assert cols.max() - cols.min() + 1 >= text_w  # the whole tab is visible, none cut off
    assert np.all(im == 255, axis=2).any()  # white text drawn on it


def test_annotator_rejects_a_non_image():
    with pytest.raises(ValueError, match="uint8"):
        Annotator(np.zeros((10, 10), dtype=np.float32))


def test_plot_images_mosaic_with_labels(tmp_path):
    images = torch.rand(5, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [4, 2, 0.9, 0.9, 0.2, 0.2]])
    out = plot_images(images, targets, paths=["data/images/a.jpg"] * 5,
                      fname=tmp_path / "train_batch0.jpg", names=["crazing", "inclusion", "pits"])
    im = _decodes(out)
    assert im.shape == (3 * 64, 3 * 80, 3)  # 5 images -> 3 x 3 grid, unscaled


def test_plot_images_draws_only_confident_predictions(tmp_path):
    images = (np.random.default_rng(1).random((2, 3, 64, 64)) * 255).astype(np.uint8)
    confident = np.array([[0, 0, 0.5, 0.5, 0.4, 0.4, 0.9]])
    unsure = np.array([[1, 1, 0.5, 0.5, 0.4, 0.4, 0.2]])
    empty = _decodes(plot_images(images, np.zeros((0, 7)), fname=tmp_path / "a.png"))
    with_unsure = _decodes(plot_images(images, unsure, fname=tmp_path / "b.png"))
    both = _decodes(plot_images(images, np.r_[confident, unsure], fname=tmp_path / "c.png",
                                names={0: "scratch", 1: "patch"}))
    np.testing.assert_array_equal(empty, with_unsure)
    assert (both != empty).any()


def test_plot_images_accepts_pixel_boxes(tmp_path):
    images = np.zeros((1, 3, 64, 64), dtype=np.float32)
    targets = np.array([[0, 0, 32, 32, 20, 20, 0.8]])  # pixels of the input, as val.py has them
    im = _decodes(plot_images(images, targets, fname=tmp_path / "p.png"))
    assert (im[20:44, 20:44] != 0).any() and (im[2:10, 2:10] == 0).all()  # drawn where it is


def test_plot_results_reads_padded_names_and_extra_columns(tmp_path):
    out = plot_results(_results_csv(tmp_path))
    assert out == tmp_path / "results.png"
    _decodes(out)


def test_plot_results_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        plot_results(tmp_path / "nothere.csv")


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.c_[rng.integers(0, 3, 40), rng.uniform(0.1, 0.9, (40, 2)),
                   rng.uniform(0.05, 0.4, (40, 2))]  # (40, 5) [cls, x, y, w, h]
    out = plot_labels(labels, ["crazing", "inclusion", "patches"], tmp_path)
    assert out == tmp_path / "labels.jpg"
    _decodes(out)


def test_pr_and_mc_curves(tmp_path):
    px = np.linspace(0, 1, 101)
    py = np.stack([1 - px ** 2, 1 - px])  # (2 classes, 101)
    _decodes(plot_pr_curve(px, py, np.array([[0.6] * 10, [0.5] * 10]), tmp_path, ["a", "b"]))
    out = plot_mc_curve(px, py, tmp_path, ["a", "b"], xlabel="Confidence", ylabel="F1",
                        fname="F1_curve.png")
    assert out == tmp_path / "F1_curve.png"
    _decodes(out)
    _decodes(plot_mc_curve(px, py, tmp_path / "custom.png", ["a", "b"]))  # a file path works too


def test_confusion_matrix_leaves_no_open_pyplot_figure(tmp_path):
    matrix = np.array([[5, 1, 2], [0, 3, 1], [1, 0, 0]])
    _decodes(plot_confusion_matrix(matrix, tmp_path, ["scratch", "patch"], normalize=False))
    import matplotlib.pyplot as plt  # seaborn imported it; our figures must not live there

    assert plt.get_fignums() == []


def test_plot_columns_for_fusion_weights(tmp_path):
    csv = _results_csv(tmp_path)
    out = plot_columns(csv, ["fusion/alpha_p3_cross", "x/lr0"], tmp_path / "alpha.png",
                       title="Fusion weights", ylabel="softmax(alpha)")
    _decodes(out)
    with pytest.raises(ValueError, match="results.csv.*no column"):
        plot_columns(csv, ["fusion/alpha_p9"], tmp_path / "x.png", title="", ylabel="")


def test_runs_overlay_and_accuracy_vs_cost(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "results.csv").write_text("epoch,train/box_loss,train/obj_loss,train/cls_loss,metrics/mAP_0.5,"
                                   "metrics/mAP_0.5:0.95\n0,0.1,0.05,0.02,0.1,0.05\n1,0.08,0.04,0.01,0.2,0.1\n")
    (b / "results.csv").write_text("epoch,train/box_loss,train/seg_loss,train/obj_loss,train/cls_loss,"
                                   "train/dist_loss,metrics/mAP_0.5(B),metrics/mAP_0.5:0.95(B)\n"
                                   "0,0.1,0.2,0.05,0.02,0.3,0.1,0.05\n")
    _decodes(plot_runs({"baseline": a / "results.csv", "student": b / "results.csv"}, tmp_path / "curves.png"))
    _decodes(plot_accuracy_vs_cost([("baseline", 0.26, 0.6), ("teacher", 0.72, 0.62)], tmp_path / "cost.png"))
