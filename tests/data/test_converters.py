"""The NEU-DET, GC10-DET and Tianchi converters on small fixtures written in each real format."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.scripts import common, gc10_det, neu_det, tianchi


def write_image(path: Path, width: int, height: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), value, np.uint8))


def write_voc(path: Path, filename: str, size: tuple[int, int], objects: list[tuple[str, int, int, int, int]]) -> None:
    """A Pascal VOC file as NEU-DET and GC10-DET ship them (1-based inclusive corners)."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2 in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>IMAGES</folder><filename>{filename}</filename><source><database>"
                    f"NEU-DET</database></source><size><width>{size[0]}</width><height>{size[1]}</height>"
                    f"<depth>1</depth></size><segmented>0</segmented>{objs}</annotation>")


def labels(out: Path) -> dict[str, str]:
    """Label file stem -> content, over both splits."""
    return {p.stem: p.read_text() for p in sorted(out.glob("labels/*/*.txt"))}


def split_of(out: Path) -> dict[str, str]:
    return {p.stem: p.parent.name for p in out.glob("images/*/*")}


@pytest.fixture
def neu_src(tmp_path: Path) -> Path:
    src = tmp_path / "NEU-DET"
    for cls in ("crazing", "scratches"):
        for i in range(1, 11):
            write_image(src / "IMAGES" / f"{cls}_{i}.jpg", 200, 200)
            write_voc(src / "ANNOTATIONS" / f"{cls}_{i}.xml", f"{cls}_{i}", (200, 200), [(cls, 20, 30, 80, 90)])
    write_voc(src / "ANNOTATIONS" / "crazing_1.xml", "crazing_1.jpg", (200, 200),
              [("crazing", 11, 21, 60, 100), ("scratches", 1, 1, 200, 200)])
    write_voc(src / "ANNOTATIONS" / "crazing_2.xml", "crazing_2.jpg", (100, 100),  # wrong size in the XML
              [("crazing", 150, 11, 260, 50), ("dent", 1, 1, 10, 10)])
    write_voc(src / "ANNOTATIONS" / "crazing_99.xml", "crazing_99.jpg", (200, 200), [("crazing", 1, 1, 9, 9)])
    (src / "ANNOTATIONS" / "broken.xml").write_text("<annotation><size>")
    return src


def test_neu_det_labels_are_exact_and_odd_annotations_reported(neu_src: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = neu_det.convert(neu_src, out, seed=0)
    got = labels(out)
    assert got["crazing_1"] == "0 0.175000 0.300000 0.250000 0.400000\n5 0.500000 0.500000 1.000000 1.000000\n"
    assert got["crazing_2"] == "0 0.872500 0.150000 0.255000 0.200000\n"  # clipped to x 149..200
    assert got["scratches_3"] == "5 0.247500 0.297500 0.305000 0.305000\n"
    assert len(got) == 20 and "crazing_99" not in got
    skipped = dict(summary.skipped)
    assert "not found" in skipped[str(neu_src / "ANNOTATIONS" / "crazing_99.xml")]
    assert "not valid XML" in skipped[str(neu_src / "ANNOTATIONS" / "broken.xml")]
    odd = " | ".join(reason for _, reason in summary.odd)
    assert "unknown class name 'dent'" in odd and "outside the 200x200 image, clipped" in odd
    assert "XML size 100x100 but image is 200x200" in odd
    assert summary.images == {"train": 16, "val": 4}
    assert summary.instances["val"]["crazing"] + summary.instances["train"]["crazing"] == 10
    assert json.loads((out / common.REPORT_NAME).read_text())["images"] == {"train": 16, "val": 4}
    assert (out / "images" / "train").is_dir() and len(list(out.glob("images/*/*.jpg"))) == 20


def test_split_is_stratified_and_reproducible_by_seed(neu_src: Path, tmp_path: Path):
    neu_det.convert(neu_src, tmp_path / "a", seed=1)
    neu_det.convert(neu_src, tmp_path / "b", seed=1)
    neu_det.convert(neu_src, tmp_path / "c", seed=2)
    a = split_of(tmp_path / "a")
    assert a == split_of(tmp_path / "b") and a != split_of(tmp_path / "c")
    val = [stem for stem, s in a.items() if s == "val"]
    assert sorted(v.split("_")[0] for v in val) == ["crazing", "crazing", "scratches", "scratches"]


def test_three_way_split_is_stratified_and_keeps_the_two_way_val_set(neu_src: Path, tmp_path: Path):
    summary = neu_det.convert(neu_src, tmp_path / "three", seed=1, split=(0.5, 0.2, 0.3))
    neu_det.convert(neu_src, tmp_path / "two", seed=1, split=(0.8, 0.2))
    three, two = split_of(tmp_path / "three"), split_of(tmp_path / "two")
    assert summary.images == {"train": 10, "val": 4, "test": 6}
    for s, n in (("val", 2), ("test", 3)):  # 10 crazing + 10 scratches images, shares kept per class
        assert sorted(k.split("_")[0] for k, v in three.items() if v == s) == ["crazing"] * n + ["scratches"] * n
    assert {k for k, v in three.items() if v == "val"} == {k for k, v in two.items() if v == "val"}


def test_converter_writes_a_data_yaml_naming_the_splits_it_wrote(neu_src: Path, tmp_path: Path):
    from utils.data_config import load_data_config

    neu_det.convert(neu_src, tmp_path / "out", seed=0, split=(0.7, 0.1, 0.2))
    cfg = load_data_config(tmp_path / "out" / common.DATA_YAML_NAME)
    assert sorted(cfg.splits) == ["test", "train", "val"] and cfg.names == neu_det.NAMES
    assert sum(len(v) for v in cfg.splits.values()) == 20
    neu_det.convert(neu_src, tmp_path / "two", seed=0)
    assert sorted(load_data_config(tmp_path / "two" / common.DATA_YAML_NAME).splits) == ["train", "val"]


@pytest.mark.parametrize("shares, problem", [((0.7, 0.2), "add up to 0.9"), ((1.0,), "2 or 3 shares"),
                                             ((0.9, -0.1, 0.2), "none negative")])
def test_bad_split_is_a_one_line_error(neu_src: Path, tmp_path: Path, shares, problem, caplog):
    argv = ["--src", str(neu_src), "--out", str(tmp_path / "o"), "--split", *map(str, shares)]
    assert neu_det.main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and problem in errors[0] and "\n" not in errors[0] and not (tmp_path / "o").exists()


def test_gc10_maps_pinyin_and_english_names(tmp_path: Path):
    src = tmp_path / "GC10-DET"
    names = ["1_chongkong", "welding line", "10_yaozhe", "Welding_Line", "7_yiwu"]
    for i in range(10):
        name = f"img_0{i % 3}_34026177{i:02d}_00001"
        write_image(src / "ds" / str(i % 3 + 1) / f"{name}.jpg", 400, 200)
        write_voc(src / "lable" / f"{name}.xml", f"{name}.jpg", (400, 200), [(names[i % 5], 41, 21, 240, 120)])
    out = tmp_path / "out"
    summary = gc10_det.convert(src, out)
    rows = {stem: text.split()[0] for stem, text in labels(out).items()}
    assert [rows[f"img_0{i % 3}_34026177{i:02d}_00001"] for i in range(5)] == ["0", "1", "9", "1", "6"]
    assert labels(out)["img_00_3402617700_00001"] == "0 0.350000 0.350000 0.500000 0.500000\n"
    assert sum(summary.images.values()) == 10 and summary.images["val"] == 2  # 8:2
    assert not summary.skipped and not summary.odd


# ---------------------------------------------------------------- Tianchi

W, H = 4096, 1696


def write_tianchi(src: Path, entries: list[dict], images: list[str]) -> None:
    """Round-2 layout: anno_train.json and defect/<stem>/<name> (templates alongside)."""
    for name in images:
        write_image(src / "defect" / Path(name).stem / name, W, H)
        write_image(src / "defect" / Path(name).stem / f"template_{name}", W, H)
    (src / "anno_train.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


def test_tianchi_slices_at_the_boundary_and_drops_empty_halves(tmp_path: Path):
    src = tmp_path / "tianchi"
    entries = [
        {"name": "a.jpg", "defect_name": "缝头", "bbox": [2000, 100, 2100, 300]},  # 48 / 52 px across the cut
        {"name": "a.jpg", "defect_name": "破洞", "bbox": [2040, 500, 2140, 600]},  # left part 8 %: dropped
        {"name": "a.jpg", "defect_name": "沾污", "bbox": [100, 100, 200, 200]},  # a class the paper leaves out
        {"name": "b.jpg", "defect_name": "色差", "bbox": [3000, 800, 3100, 900]},  # right only: left dropped
        {"name": "b.jpg", "defect_name": "褶子", "bbox": [4000, 1600, 4200, 1800]},  # outside: clipped
        {"name": "b.jpg", "defect_name": "斑点", "bbox": [10, 10, 20, 20]},  # unknown name
        {"name": "c.jpg", "defect_name": "破洞", "bbox": [10, 10, 50, 50]},  # image missing
        {"name": "d.jpg", "defect_name": "水印", "bbox": [10, 10, 50, 50]},  # left-out class only
        {"name": "a.jpg", "defect_name": "破洞"},  # no bbox
    ]
    write_tianchi(src, entries, ["a.jpg", "b.jpg", "d.jpg"])
    out = tmp_path / "out"
    summary = tianchi.convert(src, out, seed=0)
    assert labels(out) == {
        "a_left": "0 0.988281 0.117925 0.023438 0.117925\n",
        "a_right": "0 0.012695 0.117925 0.025391 0.117925\n7 0.022461 0.324292 0.044922 0.058962\n",
        "b_right": "5 0.489258 0.501179 0.048828 0.058962\n8 0.976562 0.971698 0.046875 0.056604\n",
    }
    left = cv2.imread(str(next(out.glob("images/*/a_left.jpg"))), cv2.IMREAD_UNCHANGED)
    assert left.shape[:2] == (1696, 2048)
    assert summary.notes["halves without defects dropped"] == 1  # b_left (d has no kept box at all)
    assert summary.notes["box parts below --min-visible dropped"] == 1
    assert summary.notes["boxes of left-out classes"] == 2 and summary.notes["images with left-out classes only"] == 1
    assert any("not found" in r for item, r in summary.skipped if item == "c.jpg")
    assert any("4-number bbox" in r for _, r in summary.skipped)
    odd = " | ".join(r for _, r in summary.odd)
    assert "unknown class name '斑点'" in odd and "outside the 4096x1696 image, clipped" in odd


def test_tianchi_halves_of_one_image_share_a_split(tmp_path: Path):
    src = tmp_path / "tianchi"
    names = [f"img{i}.jpg" for i in range(6)]
    write_tianchi(src, [{"name": n, "defect_name": "织疵", "bbox": [1900, 10, 2200, 90]} for n in names], names)
    out = tmp_path / "out"
    tianchi.convert(src, out, seed=3, split=(0.5, 0.5))
    split = split_of(out)
    assert len(split) == 12 and sum(s == "val" for s in split.values()) == 6
    assert all(split[f"img{i}_left"] == split[f"img{i}_right"] for i in range(6))


def test_tianchi_class_map_file_overrides_the_default(tmp_path: Path):
    src = tmp_path / "tianchi"
    write_tianchi(src, [{"name": "a.jpg", "defect_name": "错花", "bbox": [10, 10, 110, 110]}], ["a.jpg"])
    class_map = tmp_path / "map.json"
    class_map.write_text(json.dumps({"错花": "scrimp", "网折": None}, ensure_ascii=False), encoding="utf-8")
    tianchi.convert(src, tmp_path / "out", class_map=class_map)
    assert labels(tmp_path / "out")["a_left"].startswith("2 ")
    class_map.write_text(json.dumps({"错花": "stain"}, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="not one of"):
        tianchi.convert(src, tmp_path / "out2", class_map=class_map)


# ---------------------------------------------------------------- all three


@pytest.fixture
def any_src(request: pytest.FixtureRequest, tmp_path: Path):
    src = tmp_path / "src"
    if request.param is tianchi:
        write_tianchi(src, [{"name": "a.jpg", "defect_name": "破洞", "bbox": [10, 10, 110, 110]}], ["a.jpg"])
    else:
        write_image(src / "a.jpg", 64, 64)
        write_voc(src / "a.xml", "a.jpg", (64, 64), [(request.param.NAMES[0], 5, 5, 30, 30)])
    return request.param, src


@pytest.mark.parametrize("any_src", [neu_det, gc10_det, tianchi], indirect=True, ids=["neu", "gc10", "tianchi"])
def test_never_overwrites_without_exist_ok(any_src, tmp_path: Path, capsys: pytest.CaptureFixture):
    module, src = any_src
    out = tmp_path / "out"
    assert module.main(["--src", str(src), "--out", str(out)]) == 0
    assert "images" in capsys.readouterr().out
    stale = out / "labels" / "train" / "stale.txt"
    stale.write_text("0 0.5 0.5 0.1 0.1\n")
    assert module.main(["--src", str(src), "--out", str(out)]) == 1  # refused, one-line error
    assert stale.exists()
    with pytest.raises(FileExistsError, match="--exist-ok"):
        module.convert(src, out)
    assert module.main(["--src", str(src), "--out", str(out), "--exist-ok"]) == 0
    assert not stale.exists() and len(labels(out)) >= 1


def test_missing_source_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        neu_det.convert(tmp_path / "nowhere", tmp_path / "out")
