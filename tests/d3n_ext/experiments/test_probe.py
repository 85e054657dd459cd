"""Feature probe: the target maps, a probe that can succeed and one that must not, the CLI end to end, user errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from d3n_ext.distill import DetectInputs
from d3n_ext.experiments.probe import main
from d3n_ext.experiments.probe_data import (SOURCES, DecodedLatents, DetectorMaps, ImageGrid, JoinedSource, LastBatch,
                                            cell_targets)
from d3n_ext.experiments.probe_fit import (ProbeSettings, channel_stats, fit_linear_probe, predict, probe_scores,
                                           standardise)
from d3n_ext.stage1.features import read_image
from d3n_ext.stage1.repository import LatentRepository
from models.loading import save_model
from models.yolo import Model
from tests.d3n_ext.stage1_fixtures import one_thread, repo_copy, stage1_run  # noqa: F401 (fixtures)
from utils.augmentations import stretch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_box_lights_exactly_the_cells_whose_centres_it_covers():
    # 8×8 grid, cell centres at (i + 0.5) / 8: x 0.2..0.55 covers columns 2, 3; y 0.3..0.7 rows 2..5
    big = [2, 0.375, 0.5, 0.35, 0.4]
    expected = np.full((8, 8), 3)
    expected[2:6, 2:4] = 2
    assert np.array_equal(cell_targets(np.array([big], np.float32), (8, 8), nc=3), expected)
    small = [0, 0.4375, 0.375, 0.1, 0.2]  # inside the big box: the smaller box wins rows 2, 3 of column 3
    thin = [1, 0.9, 0.5, 0.02, 0.5]  # between column centres: the column holding its centre (7), rows 2..5
    expected[2:4, 3] = 0
    expected[2:6, 7] = 1
    assert np.array_equal(cell_targets(np.array([small, big, thin], np.float32), (8, 8), nc=3), expected)
    assert (cell_targets(np.zeros((0, 5), np.float32), (4, 8), nc=3) == 3).all()


def _fit_and_score(x_train, y_train, x_eval, y_eval, nc):
    mean, std = channel_stats(x_train)
    probe = fit_linear_probe(standardise(x_train, mean, std), torch.from_numpy(y_train), nc + 1, ProbeSettings())
    return probe_scores(predict(probe, standardise(x_eval, mean, std)), y_eval, nc)


def _noise_images_with_boxes(n, nc, rng):
    images, targets = [], []
    for _ in range(n):
        images.append(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        xy, wh = rng.uniform(0.3, 0.7, (2, 2)), rng.uniform(0.2, 0.4, (2, 2))
        boxes = np.c_[rng.integers(0, nc, 2), xy, wh].astype(np.float32)
        targets.append(cell_targets(boxes, (8, 8), nc).ravel())
    return images, np.concatenate(targets)


def test_the_probe_scores_near_one_on_features_holding_the_answer_and_near_chance_on_noise():
    rng, nc = np.random.default_rng(0), 3
    y = rng.choice(nc + 1, 8000, p=[0.1, 0.1, 0.1, 0.7])
    x = (np.eye(nc + 1)[y] + rng.normal(0, 0.2, (len(y), nc + 1)))[:, None].astype(np.float16)  # (N, T=1, C)
    answer = _fit_and_score(x[:4000], y[:4000], x[4000:], y[4000:], nc)
    assert min(answer.values()) > 0.9, answer

    pooled = ImageGrid("image-pooled", [(8, 8)], 1)
    splits = [_noise_images_with_boxes(60, nc, rng) for _ in range(2)]
    (x_train, y_train), (x_eval, y_eval) = [
        (pooled([], images)[0].permute(0, 3, 4, 1, 2).reshape(-1, 1, 1).numpy(), targets) for images, targets in splits]
    noise = _fit_and_score(x_train, y_train, x_eval, y_eval, nc)
    share = np.mean(y_eval != nc)
    assert noise["mIoU"] < 0.12 and noise["cell AP"] < 0.12 and noise["defect AP"] < share + 0.05, (noise, share)


def _labelled_copy(stage1_run, tmp_path):
    """The stage-1 fixture's images (same bytes, so the repository knows them) with one box each."""
    data = tmp_path / "data"
    shutil.copytree(stage1_run["data"].parent / "images", data / "images")
    for image in (data / "images").rglob("*.png"):
        label = data / "labels" / image.parent.name / f"{image.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0.5 0.5 0.4 0.6\n")
    yaml_path = data / "data.yaml"
    yaml_path.write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames: [defect]\n")
    return yaml_path


def test_cli_writes_a_row_per_source_level_and_timestep_and_repeats_itself(stage1_run, tmp_path):
    args = ["--repo", str(stage1_run["out"]), "--data", str(_labelled_copy(stage1_run, tmp_path)),
            "--out", str(tmp_path / "probe"), "--device", "cpu", "--epochs", "3", "--quiet"]
    first = main(args)
    rows = json.loads((tmp_path / "probe" / "probe.json").read_text())["rows"]
    expected = {(s, level, t) for s in SOURCES for level in ("P3", "P4", "P5")
                for t in (["-"] if s.startswith("image") else ["100", "150", "250", "all"])}
    assert {(r["source"], r["level"], r["timestep"]) for r in rows} == expected and len(rows) == len(expected)
    table = (tmp_path / "probe" / "probe.md").read_text()
    assert sum(line.startswith("| ddpm-decoded |") for line in table.splitlines()) == 12
    assert table.count("over the best control") == 3
    assert all(0 <= r["defect AP"] <= 1 and r["channels"] > 0 for r in rows)
    second = main(args)
    assert second["out"] == str(tmp_path / "probe2") and second["rows"] == first["rows"]


@pytest.mark.parametrize("case", ["no repo", "no ddpm", "no labels"])
def test_user_errors_are_one_line_naming_the_path(case, stage1_run, repo_copy, tmp_path):
    repo, data = repo_copy, _labelled_copy(stage1_run, tmp_path)
    if case == "no repo":
        repo, named = tmp_path / "nowhere", tmp_path / "nowhere"
    elif case == "no ddpm":
        (repo / "ddpm.pt").unlink()
        named = repo / "ddpm.pt"
    else:
        data, named = stage1_run["data"], stage1_run["data"].parent / "labels" / "train"
    with pytest.raises(SystemExit) as e:
        main(["--repo", str(repo), "--data", str(data), "--out", str(tmp_path / "probe"), "--device", "cpu", "--quiet"])
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message and str(named) in message, message
    assert not (tmp_path / "probe").exists()


def _plain_detector(path, imgsz=64, record_size=True):
    """A (random-weight) plain yolov5n checkpoint: the probe's reference needs its maps, not its skill."""
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=1).eval()
    save_model(path, model, **({"train_opts": {"imgsz": imgsz}} if record_size else {}))
    return model


def test_the_detector_reference_is_its_neck_maps_and_the_joined_one_puts_the_ddpm_beside_them(stage1_run, tmp_path):
    model = _plain_detector(tmp_path / "det.pt")
    repo = LatentRepository(stage1_run["out"])
    paths = sorted((stage1_run["data"].parent / "images" / "train").glob("*.png"))[:2]
    images = [read_image(p) for p in paths]
    grids = [(8, 8), (4, 4), (2, 2)]  # a 64-px yolov5n's own P3/P4/P5 grids: the resize is the identity
    maps = DetectorMaps(tmp_path / "det.pt", grids, torch.device("cpu"))
    seen = DetectInputs(model.detect)
    x = torch.from_numpy(np.stack([stretch(im, (64, 64))[0][..., ::-1].transpose(2, 0, 1) for im in images]).copy())
    model(x.float() / 255.0)
    got = maps(paths, images)
    assert [tuple(g.shape) for g in got] == [(2, 1, c, *hw) for c, hw in zip((64, 128, 256), grids)]
    assert all(torch.allclose(g[:, 0], s) for g, s in zip(got, seen.maps))

    decoded = DecodedLatents(repo, torch.device("cpu"))
    joined = JoinedSource("detector+ddpm", DetectorMaps(tmp_path / "det.pt", [lv.hw for lv in repo.levels],
                                                         torch.device("cpu")), decoded)(paths, images)
    for j, d in zip(joined, decoded(paths, images)):
        assert j.shape[1] == 1 and torch.equal(j[:, 0, -d.shape[1] * d.shape[2]:], d.flatten(1, 2))


def test_cli_with_a_detector_adds_the_references_and_says_what_the_ddpm_adds_beside_it(stage1_run, tmp_path):
    _plain_detector(tmp_path / "det.pt")
    common = ["--repo", str(stage1_run["out"]), "--data", str(_labelled_copy(stage1_run, tmp_path)), "--device", "cpu",
              "--epochs", "2", "--quiet", "--detector", str(tmp_path / "det.pt")]
    result = main([*common, "--out", str(tmp_path / "probe"), "--sources", "ddpm-decoded", "image-pooled"])
    rows = {(r["source"], r["level"], r["timestep"]): r for r in result["rows"]}
    for level, width in zip(("P3", "P4", "P5"), (64, 128, 256)):
        assert rows[("detector", level, "-")]["channels"] == width and rows[("detector", level, "-")]["reference"]
        ddpm_channels = rows[("ddpm-decoded", level, "all")]["channels"]
        assert rows[("detector+ddpm", level, "all")]["channels"] == width + ddpm_channels
        assert rows[("detector+random-unet", level, "all")]["channels"] == width + ddpm_channels  # same tap widths
    assert len(result["reference_summary"]) == 3 and result["text"].count("(reference)") == 9
    assert all("random-UNet features beside them" in line for line in result["reference_summary"])
    assert result["text"].count("over the best control") == 3  # the references never pose as our DDPM rows

    alone = main([*common, "--out", str(tmp_path / "refs"), "--sources", "detector", "detector+random-unet"])
    assert {r["source"] for r in alone["rows"]} == {"detector", "detector+random-unet"} and not alone["summary"]


def test_a_source_shared_by_a_reference_computes_each_batch_once():
    calls = []
    pooled = ImageGrid("image-pooled", [(4, 4)], 1)
    shared = LastBatch(pooled)
    images = [np.zeros((16, 16, 3), np.uint8)]
    first = shared([Path("a.png")], images)
    assert shared([Path("a.png")], images) is first  # the joined reference's call: no second extraction
    shared.source = lambda paths, ims: calls.append(paths) or pooled(paths, ims)
    shared([Path("b.png")], images)
    assert calls == [[Path("b.png")]] and shared.name == "image-pooled"


@pytest.mark.parametrize("case", ["no size", "no weights"])
def test_a_detector_reference_without_what_it_needs_is_a_one_line_error(case, stage1_run, tmp_path):
    _plain_detector(tmp_path / "det.pt", record_size=False)
    extra = ["--detector", str(tmp_path / "det.pt")] if case == "no size" else ["--sources", "detector"]
    with pytest.raises(SystemExit) as e:
        main(["--repo", str(stage1_run["out"]), "--data", str(_labelled_copy(stage1_run, tmp_path)),
              "--out", str(tmp_path / "probe"), "--device", "cpu", "--quiet", *extra])
    message = str(e.value)
    named = str(tmp_path / "det.pt") if case == "no size" else "--detector"
    assert message.startswith("error: ") and "\n" not in message and named in message, message
    assert not (tmp_path / "probe").exists()
