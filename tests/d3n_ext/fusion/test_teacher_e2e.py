"""The hybrid teacher end to end: train.py, val.py and detect.py with --latents on the tiny repository."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
import torch

import detect
import train
import val
from d3n_ext.fusion import teacher_inputs
from d3n_ext.fusion.binding import repository_fingerprint
from d3n_ext.fusion.task import D3NTask
from d3n_ext.fusion.teacher_inputs import RepositoryInputs, TeacherSideInputs
from d3n_ext.stage1.features import read_image
from d3n_ext.stage1.repository import LatentRepository
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401  (fixture)
from tests.d3n_ext.teacher_fixtures import teacher_repo  # noqa: F401  (fixture)
from utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: faster, and immune to a busy machine


def train_flags(paths: dict, project, *extra: str) -> list[str]:
    return ["--data", str(paths["data"]), "--cfg", "yolov5n-d3n.yaml", "--imgsz", "128", "--batch-size", "4",
            "--epochs", "1", "--workers", "0", "--project", str(project), "--name", "teacher", "--noplots", "--noval",
            "--quiet", *extra]


def test_teacher_trains_validates_and_detects(teacher_repo, tmp_path, monkeypatch):
    run = train.main(train_flags(teacher_repo, tmp_path, "--latents", str(teacher_repo["repo"])))
    best = run / "weights" / "best.pt"
    ckpt = load_checkpoint(best)
    opts = ckpt["train_opts"]  # the task describes itself: kind and options, for --resume
    assert opts["scale"] and opts["task"] == "d3n-teacher" and opts["task_state"]["repository"] == str(teacher_repo["repo"])
    assert ckpt["task"] == {"repository": str(teacher_repo["repo"].resolve()),
                            "fingerprint": repository_fingerprint(LatentRepository(teacher_repo["repo"]))}
    resumed, task = train.task_for(train.parse_opt(["--resume", str(run / "weights" / "last.pt")]))
    # --resume rebuilds the task, with its repository opened, from the checkpoint alone
    assert isinstance(task, D3NTask) and task.root == teacher_repo["repo"] and resumed.scale
    with open(run / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    for layer in (27, 31, 35):  # Fig. 11: the branch weights of each fusion block, logged per epoch
        weights = [float(row[f"fusion/L{layer}/{b}"]) for b in ("det", "ddpm", "cross")]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)

    result = val.main(["--data", str(teacher_repo["data"]), "--weights", str(best), "--latents",
                       str(teacher_repo["repo"]), "--imgsz", "128", "--project", str(tmp_path / "val"), "--quiet",
                       "--workers", "1"])  # a DataLoader worker unpickles the repository
    assert 0.0 <= result.map50 <= 1.0

    source = tmp_path / "source"
    source.mkdir()
    known = sorted((teacher_repo["data"].parent / "images" / "val").glob("*.png"))[0]
    shutil.copy(known, source / known.name)  # same bytes: found in the repository
    cv2.imwrite(str(source / "unseen.png"), np.random.default_rng(0).integers(0, 255, (100, 140, 3), dtype=np.uint8))
    encoded = []

    class Spy(teacher_inputs.OnlineLatentEncoder):
        def __call__(self, image_bgr):
            encoded.append(image_bgr.shape)
            return super().__call__(image_bgr)

    monkeypatch.setattr(teacher_inputs, "OnlineLatentEncoder", Spy)
    out = detect.main(["--weights", str(best), "--source", str(source), "--latents", str(teacher_repo["repo"]),
                       "--imgsz", "128", "--conf-thres", "0.0", "--save-txt", "--project", str(tmp_path / "detect"),
                       "--quiet"])
    assert encoded == [(100, 140, 3)]  # only the image the repository lacks is encoded online
    assert {p.name for p in (out / "labels").iterdir()} == {known.with_suffix(".txt").name, "unseen.txt"}


def test_detect_side_inputs_match_the_stored_latents_and_the_online_encoder(teacher_repo):
    side = TeacherSideInputs(teacher_repo["repo"], {"latents_p3": (12, 8), "latents_p5": (12, 32)})
    image = sorted((teacher_repo["data"].parent / "images" / "train").glob("*.png"))[1]
    stored = side(image, read_image(image), (256, 256))
    online = side(None, read_image(image), (256, 256))
    assert (side.stored, side.online) == (1, 1)
    level = torch.from_numpy(LatentRepository(teacher_repo["repo"]).lookup(image)[0]).flatten(0, 1)
    assert torch.equal(stored["latents_p3"][0], level)  # the stretched input: stride-8 grid = the stored grid
    for name in stored:
        assert stored[name].shape == online[name].shape
        torch.testing.assert_close(online[name].float(), stored[name].float(), atol=2e-2, rtol=2e-2)


def test_scripts_refuse_a_teacher_without_latents_in_one_line(teacher_repo, tmp_path):
    with pytest.raises(SystemExit, match="yolov5n-d3n.yaml: this model reads side inputs .* pass --latents"):
        train.main(train_flags(teacher_repo, tmp_path))
    with pytest.raises(SystemExit, match="nowhere: feature repository not found"):
        train.main(train_flags(teacher_repo, tmp_path, "--latents", str(tmp_path / "nowhere")))
    with pytest.raises(SystemExit, match="yolov5n.yaml: the model has no side inputs for d3n; drop --latents"):
        train.main(train_flags(teacher_repo, tmp_path, "--latents", str(teacher_repo["repo"]), "--cfg", "yolov5n.yaml"))


def test_fusion_weights_are_plotted_after_training(teacher_repo, tmp_path):
    (tmp_path / "results.csv").write_text("epoch,metrics/mAP_0.5,fusion/L27/det,fusion/L27/ddpm,fusion/L27/cross\n"
                                          "0,0.1,0.34,0.33,0.33\n1,0.2,0.4,0.3,0.3\n")
    D3NTask(RepositoryInputs.open(teacher_repo["repo"])).on_train_end(tmp_path)
    assert (tmp_path / "fusion_weights.png").stat().st_size > 0
