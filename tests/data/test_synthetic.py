"""The synthetic defect dataset: layout, exact boxes, determinism, safe regeneration."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data import synthetic
from data.synthetic import CLASS_NAMES, MARKER, draw_defect, ensure_dataset, generate_dataset, render_sample

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(seed=3, size=128, n_train=8, n_val=4)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "data.yaml"}  # data.yaml names the absolute path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return generate_dataset(tmp_path / "synth", **SMALL)


def test_class_names_are_neu_det_in_order():
    assert CLASS_NAMES == ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def test_layout_labels_and_marker(small: Path):
    for split, n in (("train", 8), ("val", 4)):
        images = sorted((small / "images" / split).glob("*.png"))
        assert len(images) == n
        for path in images:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (128, 128) and image.dtype == np.uint8  # 1-channel grey
            rows = (small / "labels" / split / f"{path.stem}.txt").read_text().splitlines()
            assert 1 <= len(rows) <= 4
            for row in rows:
                cls, *xywh = row.split()
                assert 0 <= int(cls) < 6 and all(len(v.split(".")[1]) == 6 for v in xywh)
                xc, yc, w, h = map(float, xywh)
                assert 0 <= xc - w / 2 + 1e-6 and xc + w / 2 <= 1 + 1e-6 and 0 <= yc - h / 2 + 1e-6
                assert yc + h / 2 <= 1 + 1e-6 and min(w, h) >= 0.08 - 1e-6
    marker = json.loads((small / MARKER).read_text())
    assert {k: marker[k] for k in SMALL} == SMALL
    data = yaml.safe_load((small / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASS_NAMES)) and data["train"] == "images/train"


@pytest.mark.parametrize("cls", range(6))
def test_boxes_are_tight_around_every_drawn_pixel(cls: int):
    rng = np.random.default_rng(cls)
    for _ in range(20):
        layer, box = draw_defect(cls, rng, 160)
        if box is None:
            continue
        ys, xs = np.nonzero(layer)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # every edge touches ink
        assert 0 <= box[0] < box[2] <= 160 and 0 <= box[1] < box[3] <= 160


def test_all_classes_appear_and_some_are_faint():
    defects = [d for i in range(120) for d in render_sample(np.random.default_rng([0, 0, i]), 128)[1]]
    assert {d.cls for d in defects} == set(range(6))
    faint = np.mean([d.contrast <= synthetic.FAINT_CONTRAST[1] * synthetic.CONTRAST_GAINS[d.cls] for d in defects])
    assert 0.15 < faint < 0.5


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: Path, small: Path):
    again = generate_dataset(tmp_path / "again", **SMALL)
    other = generate_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _files(small) == _files(again)
    assert _files(small).keys() == _files(other).keys()
    assert _files(small)["images/train/synth_00000.png"] != _files(other)["images/train/synth_00000.png"]


def test_refuses_to_replace_other_arguments_unless_exist_ok(small: Path):
    with pytest.raises(FileExistsError, match="exist-ok"):
        generate_dataset(small, **{**SMALL, "n_train": 3})
    generate_dataset(small, **{**SMALL, "n_train": 3}, exist_ok=True)
    assert len(list((small / "images" / "train").glob("*.png"))) == 3  # stale images removed
    assert len(list((small / "labels" / "train").glob("*.txt"))) == 3


def test_refuses_a_folder_holding_other_files(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_dataset(tmp_path / "mine", **SMALL)


def test_ensure_is_a_no_op_when_complete(small: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(synthetic, "generate_dataset", lambda *a, **k: pytest.fail("regenerated"))
    assert ensure_dataset(small, **SMALL) == small


def test_crash_midway_leaves_no_marker_and_ensure_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "synth"
    real_render = synthetic.render_sample
    calls = {"n": 0}

    def crash_after_five(rng, size):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_render(rng, size)

    monkeypatch.setattr(synthetic, "render_sample", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(root, **SMALL)
    assert not (root / MARKER).exists()
    monkeypatch.setattr(synthetic, "render_sample", real_render)
    ensure_dataset(root, **SMALL)
    assert len(list(root.rglob("*.png"))) == 12 and (root / MARKER).exists()
    assert not list(root.rglob("*.tmp"))


def test_ensure_regenerates_when_arguments_change(small: Path):
    ensure_dataset(small, **{**SMALL, "n_val": 2})
    assert len(list((small / "images" / "val").glob("*.png"))) == 2


def test_cli_writes_dataset_and_samples_grid(tmp_path: Path):
    grid = tmp_path / "grid.jpg"
    rc = synthetic.main(["--out", str(tmp_path / "d"), "--seed", "1", "--size", "96", "--train", "2",
                         "--val", "4", "--samples-grid", str(grid)])
    image = cv2.imread(str(grid))
    assert rc == 0 and image is not None and image.shape[0] > 2 * 96
    assert synthetic.main(["--out", str(tmp_path / "d"), "--seed", "2", "--train", "2", "--val", "4"]) == 1


def test_data_yaml_names_the_registered_generator():
    data = yaml.safe_load((REPO / "data" / "synth-defects.yaml").read_text())
    assert data["path"] == "datasets/synth-defects" and data["val"] == "images/val"
    assert data["names"] == dict(enumerate(CLASS_NAMES))
    assert data["generate"] == {"name": "synth-defects", "seed": 0, "size": 200, "n_train": 300, "n_val": 100}


def test_sample_images_for_detect_are_committed():
    images = sorted((REPO / "data" / "images").glob("*.png"))
    assert 4 <= len(images) <= 6
    assert all(cv2.imread(str(p)) is not None for p in images)
