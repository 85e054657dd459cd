"""Feature probe: the target maps, a probe that can succeed and one that must not, the CLI end to end, user errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from d3n_ext.experiments.probe import main
from d3n_ext.experiments.probe_data import SOURCES, ImageGrid, cell_targets
from d3n_ext.experiments.probe_fit import (ProbeSettings, channel_stats, fit_linear_probe, predict, probe_scores,
                                           standardise)
from tests.d3n_ext.stage1_fixtures import one_thread, repo_copy, stage1_run  # noqa: F401 (fixtures)

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
