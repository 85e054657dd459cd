"""`unlabeled:` in a data YAML: one-line errors, and the leak guard against val/test copies."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data_config import DataConfigError, load_data_config
from utils.unlabeled import NEAR_COPY_COSINE, check_unlabeled, find_leaks


def _texture(seed: int, size: int = 96) -> np.ndarray:
    """A steel-like grey texture: smooth noise plus a defect streak, different for every seed."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.normal(128, 40, (size, size)).astype(np.float32), (0, 0), 3)
    y = int(rng.integers(10, size - 10))
    base[y:y + 4, :] -= 60
    return np.clip(base, 0, 255).astype(np.uint8)


def _data(tmp_path: Path, unlabeled: list[np.ndarray | Path], suffix: str = ".png") -> Path:
    for split, seeds in (("train", range(4)), ("val", range(4, 7))):
        (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
        for s in seeds:
            cv2.imwrite(str(tmp_path / "images" / split / f"{s}.png"), _texture(s))
    (tmp_path / "pool").mkdir(exist_ok=True)
    for i, im in enumerate(unlabeled):
        if isinstance(im, Path):  # the file itself, byte for byte
            (tmp_path / "pool" / f"u{i}{im.suffix}").write_bytes(im.read_bytes())
        else:
            cv2.imwrite(str(tmp_path / "pool" / f"u{i}{suffix}"), im)
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nunlabeled: pool\nnames: [defect]\n")
    return tmp_path / "data.yaml"


def test_fresh_pictures_pass_the_guard(tmp_path):
    data = load_data_config(_data(tmp_path, [_texture(s) for s in range(10, 14)]))
    assert len(check_unlabeled(data)) == 4


@pytest.mark.parametrize("copy", ["exact", "jpeg", "resized", "grey-jpeg-small"])
def test_a_val_image_among_the_unlabelled_is_refused(tmp_path, copy):
    val_file = _data(tmp_path, []).parent / "images" / "val" / "5.png"
    val = cv2.imread(str(val_file))
    if copy == "exact":
        pool = [val_file]
    elif copy == "jpeg":
        pool = [cv2.imdecode(cv2.imencode(".jpg", val, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_COLOR)]
    elif copy == "resized":
        pool = [cv2.resize(val, (160, 160))]
    else:
        small = cv2.resize(cv2.cvtColor(val, cv2.COLOR_BGR2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
        pool = [cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_GRAYSCALE)]
    data = load_data_config(_data(tmp_path, [_texture(20), *pool]))
    with pytest.raises(DataConfigError) as e:
        check_unlabeled(data)
    msg = str(e.value)
    assert "\n" not in msg and "1 unlabeled image(s) are copies of val/test images" in msg
    assert "u1.png" in msg and "5.png" in msg and ("exact copy" if copy == "exact" else "near copy") in msg


def test_a_train_image_among_the_unlabelled_is_a_warning(tmp_path, caplog):
    root = _data(tmp_path, []).parent
    data = load_data_config(_data(tmp_path, [root / "images" / "train" / "2.png", _texture(30)]))
    with caplog.at_level(logging.WARNING):
        assert len(check_unlabeled(data)) == 2
    assert "1 unlabeled image(s) are also train images" in caplog.text


def test_the_threshold_separates_copies_from_similar_textures(tmp_path):
    """Near copies sit above NEAR_COPY_COSINE; a different texture of the same family does not."""
    paths = []
    for name, im in (("a", _texture(1)), ("b", _texture(2)), ("a-copy", cv2.resize(_texture(1), (200, 200)))):
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), im)
    leaks = find_leaks([paths[1], paths[2]], {"val": [paths[0]]})
    assert [leak.unlabeled.name for leak in leaks] == ["a-copy.png"]
    assert float(leaks[0].how.split("cosine ")[1].rstrip(")")) >= NEAR_COPY_COSINE


@pytest.mark.parametrize("entry, expect", [("missing_folder", "split 'unlabeled': "),
                                           ("empty", "names no images")])
def test_unlabeled_errors_are_one_line(tmp_path, entry, expect):
    (tmp_path / "images" / "train").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "train" / "a.png"), _texture(0))
    (tmp_path / "empty").mkdir()
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"train: images/train\nval: images/train\nunlabeled: {entry}\nnames: [d]\n")
    with pytest.raises(DataConfigError) as e:
        load_data_config(yaml_path)
    assert expect in str(e.value) and str(yaml_path) in str(e.value) and "\n" not in str(e.value)


def test_unlabeled_pool_script_writes_a_clean_list(tmp_path):
    from utils.unlabeled_pool import write_pool

    root = _data(tmp_path, []).parent
    val = cv2.imread(str(root / "images" / "val" / "4.png"))
    (tmp_path / "extra").mkdir()
    for i, im in enumerate([_texture(40), val, _texture(41)]):
        cv2.imwrite(str(tmp_path / "extra" / f"x{i}.png"), im)
    (tmp_path / "d2.yaml").write_text("train: images/train\nval: images/val\nnames: [defect]\n")
    report = write_pool(tmp_path / "d2.yaml", [str(tmp_path / "extra")], tmp_path / "pool.txt")
    kept = (tmp_path / "pool.txt").read_text().split()
    assert report["kept"] == 2 and len(report["dropped"]) == 1 and [Path(k).name for k in kept] == ["x0.png", "x2.png"]
