"""The NEU-Seg converter on a tiny tree in the real layout (masks drawn with cv2), and on the real
dataset when ../shared/datasets/NEU-Seg is there."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.polygons import polygons_to_mask
from data.scripts import common, neu_seg

REPO = Path(__file__).resolve().parents[2]
REAL_NEU_SEG = REPO.parent / "shared" / "datasets" / "NEU-Seg"
S = 64  # side of the fake images


def write_pair(src: Path, split: str, stem: str, mask: np.ndarray, grey: int) -> None:
    for sub, name, data in (("images", f"{stem}.jpg", np.full((S, S, 3), grey, np.uint8)),
                            ("annotations", f"{stem}.png", mask)):
        path = src / sub / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), data)


def ring_with_speck() -> np.ndarray:
    """Patches (2) as a ring with a hole, and a 2-pixel inclusion (1) speck."""
    mask = np.zeros((S, S), np.uint8)
    cv2.circle(mask, (30, 30), 20, 2, -1)
    cv2.circle(mask, (30, 30), 8, 0, -1)
    mask[60, 5:7] = 1
    return mask


def two_classes() -> np.ndarray:
    """An inclusion (1) ellipse and a scratch (3) line."""
    mask = np.zeros((S, S), np.uint8)
    cv2.ellipse(mask, (20, 15), (12, 5), 0, 0, 360, 1, -1)
    cv2.line(mask, (5, 60), (60, 30), 3, 3)
    return mask


def block(cls: int, x: int) -> np.ndarray:
    mask = np.zeros((S, S), np.uint8)
    mask[10:40, x:x + 20] = cls
    return mask


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """training: 000201..000210; test: 000201..000202 again (other images) and a stray image."""
    src = tmp_path / "NEU-Seg"
    write_pair(src, "training", "000201", ring_with_speck(), 100)
    write_pair(src, "training", "000202", two_classes(), 110)
    for i in range(3, 11):
        write_pair(src, "training", f"0002{i:02d}", block(1 + i % 3, 2 * i), 120 + i)
    write_pair(src, "test", "000201", block(3, 30), 200)
    write_pair(src, "test", "000202", block(1, 5), 210)
    cv2.imwrite(str(src / "images" / "test" / "000203.jpg"), np.zeros((S, S, 3), np.uint8))  # no mask
    return src


def training_label(out: Path, stem: str) -> Path:
    """The label of a source-training image, wherever the val split put it."""
    (path,) = [p for split in ("train", "val") for p in (out / "labels" / split).glob(f"{stem}.txt")]
    return path


def read_rows(path: Path) -> list[tuple[int, np.ndarray]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(r[0]), np.array(r[1:], float).reshape(-1, 2)) for r in rows]


def test_regions_become_polygons_that_rasterise_back(src: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = neu_seg.convert(src, out, seed=0, min_area=5)
    ring = read_rows(training_label(out, "000201"))
    assert [c for c, _ in ring] == [1]  # patches; the 2-pixel inclusion speck is dropped
    filled = np.zeros((S, S), np.uint8)
    cv2.circle(filled, (30, 30), 20, 1, -1)
    np.testing.assert_array_equal(polygons_to_mask([ring[0][1]], S, S), filled)  # outer contour, hole filled
    assert summary.notes["regions under --min-area px dropped"] == 1
    both = read_rows(training_label(out, "000202"))
    assert sorted(c for c, _ in both) == [0, 2]
    assert summary.notes["masks with more than one class (training)"] == 1
    assert all(len(p) >= 3 and 0 < p.min() and p.max() < 1 for _, p in ring + both)


def test_splits_keep_the_source_split_and_same_names_stay_apart(src: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = neu_seg.convert(src, out, seed=0, val_fraction=0.2)
    assert summary.images == {"train": 8, "val": 2, "test": 2}
    for stem in ("000201", "000202"):
        test_image = out / "images" / "test" / f"{stem}.jpg"
        assert test_image.read_bytes() == (src / "images" / "test" / f"{stem}.jpg").read_bytes()
        (train_image,) = [p for p in out.glob(f"images/*/{stem}.jpg") if p.parent.name != "test"]
        assert train_image.read_bytes() == (src / "images" / "training" / f"{stem}.jpg").read_bytes()
    assert [c for c, _ in read_rows(out / "labels" / "test" / "000201.txt")] == [2]
    assert any("no mask" in reason for item, reason in summary.skipped if item.endswith("000203.jpg"))
    report = json.loads((out / common.REPORT_NAME).read_text())
    assert report["images"] == {"train": 8, "val": 2, "test": 2}


def test_val_split_is_seeded_and_the_data_yaml_names_three_splits(src: Path, tmp_path: Path):
    from utils.data_config import load_data_config

    val = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        neu_seg.convert(src, tmp_path / name, seed=seed, val_fraction=0.3)
        val[name] = sorted(p.stem for p in (tmp_path / name / "images" / "val").iterdir())
    assert val["a"] == val["b"] and len(val["a"]) == 3
    assert val["a"] != val["c"]
    cfg = load_data_config(tmp_path / "a" / common.DATA_YAML_NAME)
    assert {k: len(v) for k, v in cfg.splits.items()} == {"train": 7, "val": 3, "test": 2}
    assert cfg.names == ["inclusion", "patches", "scratches"]


def test_bad_masks_are_reported_by_file(src: Path, tmp_path: Path):
    (src / "annotations" / "training" / "000203.png").write_bytes(b"not a png")
    odd = block(2, 10)
    odd[0, 0] = 7
    write_pair(src, "training", "000204", odd, 90)
    summary = neu_seg.convert(src, tmp_path / "out")
    skipped = dict(summary.skipped)
    assert "cannot be decoded" in skipped[str(src / "annotations" / "training" / "000203.png")]
    assert dict(summary.odd)[str(src / "annotations" / "training" / "000204.png")] == \
        "unknown mask values [7], those pixels ignored"
    assert summary.images["train"] + summary.images["val"] == 9


def test_cli_refuses_to_overwrite_and_bad_flags_are_one_line(src: Path, tmp_path: Path, caplog):
    out = tmp_path / "out"
    assert neu_seg.main(["--src", str(src), "--out", str(out)]) == 0
    assert neu_seg.main(["--src", str(src), "--out", str(out)]) == 1
    assert neu_seg.main(["--src", str(src), "--out", str(out), "--exist-ok"]) == 0
    assert neu_seg.main(["--src", str(src), "--out", str(tmp_path / "o2"), "--val-fraction", "0"]) == 1
    assert neu_seg.main(["--src", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "o3")]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and all("\n" not in e for e in errors)
    assert "--exist-ok" in errors[0] and "--val-fraction 0.0" in errors[1] and "not found" in errors[2]
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_data_yaml_in_the_repository():
    import yaml

    data = yaml.safe_load((REPO / "data" / "NEU-Seg.yaml").read_text())
    assert data["path"] == "datasets/NEU-Seg"
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    assert data["names"] == dict(enumerate(neu_seg.NAMES))


@pytest.mark.skipif(not REAL_NEU_SEG.is_dir(), reason=f"real NEU-Seg not at {REAL_NEU_SEG}")
def test_real_neu_seg_converts_completely(tmp_path: Path):
    """All 3,630 training and 840 test pairs convert (a full run takes about 6 s on one core)."""
    pairs = neu_seg.find_pairs(REAL_NEU_SEG)
    assert {k: len(v) for k, v in pairs.items()} == {"training": 3630, "test": 840}
    summary = neu_seg.convert(REAL_NEU_SEG, tmp_path / "NEU-Seg")
    assert summary.images["train"] + summary.images["val"] == 3630 and summary.images["test"] == 840
    assert summary.images["val"] == 363 and not summary.skipped and not summary.odd
    assert summary.notes["masks with more than one class (training)"] == 695
    assert summary.notes["masks with more than one class (test)"] == 232
