"""The synthetic defect dataset: layout, exact boxes, segment polygons, determinism, safe regeneration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data import synthetic
from data.polygons import mask_to_polygons, polygons_to_mask
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


# ---------------------------------------------------------------- segment labels

DETECT_DIGEST = "fa13e7f204c06ebb9aa71c800a91f2edf33e5f45f6bfd9a11b4cb1877b51456a"  # SMALL, before segment labels


def _digest(root: Path) -> str:
    """Labels and marker byte for byte, images by their pixels (PNG bytes vary with zlib builds)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "data.yaml"):
        h.update(str(path.relative_to(root)).encode())
        h.update(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tobytes() if path.suffix == ".png" else path.read_bytes())
    return h.hexdigest()


def test_detection_output_is_unchanged_by_segment_labels(small: Path):
    """The dataset of an existing data YAML (no task) equals, label and pixel, the one made before
    segment labels existed, and its marker names no task, so old datasets stay complete."""
    assert _digest(small) == DETECT_DIGEST
    assert "task" not in json.loads((small / MARKER).read_text())


def test_segment_labels_outline_the_painted_pixels(tmp_path: Path, small: Path):
    seg = generate_dataset(tmp_path / "seg", **SMALL, task="segment")
    for image in sorted(small.glob("images/*/*.png")):
        rel = image.relative_to(small)
        assert (seg / rel).read_bytes() == image.read_bytes()  # same images as task detect
        label = Path("labels") / rel.parent.name / f"{image.stem}.txt"
        boxes = [row.split() for row in (small / label).read_text().splitlines()]
        polys = [row.split() for row in (seg / label).read_text().splitlines()]
        assert [b[0] for b in boxes] == [p[0] for p in polys]
        for box, poly in zip(boxes, polys):
            points = np.array(poly[1:], float).reshape(-1, 2)
            xc, yc, w, h = map(float, box[1:])
            assert len(points) >= 3 and points.min() > 0 and points.max() < 1
            # vertices are pixel centres: the polygon's extent is the box less half a pixel each side
            extent = np.concatenate([points.min(0), points.max(0)]) * 128
            assert extent == pytest.approx([(xc - w / 2) * 128 + 0.5, (yc - h / 2) * 128 + 0.5,
                                            (xc + w / 2) * 128 - 0.5, (yc + h / 2) * 128 - 0.5], abs=1e-3)


def test_polygon_covers_exactly_what_was_painted_plus_bridges():
    for i in range(12):
        _, defects = render_sample(np.random.default_rng([5, 0, i]), 160)
        for d in defects:
            raster = polygons_to_mask([d.polygon()], 160, 160).astype(bool)
            filled = polygons_to_mask(mask_to_polygons(d.painted)[0], 160, 160).astype(bool)
            assert (raster >= d.painted).all() and (raster >= filled).all()
            assert (raster & ~filled).sum() <= 0.05 * filled.sum() + 160  # only the one-pixel bridges


def test_task_is_checked_and_a_change_regenerates(small: Path):
    with pytest.raises(ValueError, match="detect, segment"):
        generate_dataset(small, **SMALL, task="pose", exist_ok=True)
    ensure_dataset(small, **SMALL, task="segment")
    row = (small / "labels" / "train" / "synth_00000.txt").read_text().splitlines()[0]
    assert len(row.split()) > 7 and json.loads((small / MARKER).read_text())["task"] == "segment"


def test_segment_data_yaml_generates_through_the_loader(tmp_path: Path):
    from utils.data_config import load_data_config

    data = yaml.safe_load((REPO / "data" / "synth-defects-seg.yaml").read_text())
    assert data["path"] == "datasets/synth-defects-seg" and data["names"] == dict(enumerate(CLASS_NAMES))
    assert data["generate"] == {"name": "synth-defects", "task": "segment", "seed": 0, "size": 200,
                                "n_train": 300, "n_val": 100}
    data["path"] = str(tmp_path / "seg")
    data["generate"].update(n_train=2, n_val=1, size=64)
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_data_config(tmp_path / "seg.yaml")
    assert len(cfg.splits["train"]) == 2
    rows = (tmp_path / "seg" / "labels" / "train" / "synth_00000.txt").read_text().splitlines()
    assert rows and all(len(r.split()) % 2 == 1 and len(r.split()) >= 7 for r in rows)


def test_canvas_makes_large_frames_with_defects_at_the_size_scale(tmp_path: Path):
    """--canvas 640 320: wide frames for sliced inference whose defects are as large, in pixels, as on a
    --size image; boxes are normalised to the frame and stay tight around what was painted."""
    root = generate_dataset(tmp_path / "large", seed=1, size=128, n_train=0, n_val=3, canvas=(640, 320))
    sides = []
    for path in sorted((root / "images" / "val").glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (320, 640)
        rows = [list(map(float, r.split())) for r in (root / "labels" / "val" / f"{path.stem}.txt").read_text().splitlines()]
        assert len(rows) >= 2  # a quarter to a half defect per 128 px area: 3-6 here
        sides += [max(w * 640, h * 320) for _, _, _, w, h in rows]
    assert max(sides) <= 128 and min(sides) >= 0.08 * 128  # the size scale, not the frame's
    assert json.loads((root / MARKER).read_text())["canvas"] == [640, 320]
    rng = np.random.default_rng([1, 1, 0])
    image, defects = synthetic.render_large_sample(rng, 128, (640, 320))
    for d in defects:
        ys, xs = np.nonzero(d.painted)
        assert d.painted.shape == (320, 640) and d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_canvas_is_checked_and_square_output_is_unchanged(tmp_path: Path, small: Path):
    with pytest.raises(ValueError, match="at least size"):
        generate_dataset(tmp_path / "a", size=128, n_train=0, n_val=1, canvas=(640, 100))
    with pytest.raises(ValueError, match="two integers"):
        generate_dataset(tmp_path / "b", size=128, n_train=0, n_val=1, canvas=(640.5, 320))
    assert _digest(small) == DETECT_DIGEST and "canvas" not in json.loads((small / MARKER).read_text())


def test_large_data_yaml_generates_through_the_loader(tmp_path: Path):
    from utils.data_config import load_data_config

    data = yaml.safe_load((REPO / "data" / "synth-large.yaml").read_text())
    assert data["generate"]["canvas"] == [2048, 1024] and data["generate"]["size"] == 200
    data["path"] = str(tmp_path / "large")
    data["generate"].update(n_val=1, size=64, canvas=[256, 128])
    (tmp_path / "large.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_data_config(tmp_path / "large.yaml")
    assert cfg.splits["train"] == [] and cv2.imread(str(cfg.splits["val"][0])).shape[:2] == (128, 256)
