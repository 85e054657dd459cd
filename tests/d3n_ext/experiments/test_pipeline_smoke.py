"""The one-command pipeline, end to end at tiny settings: baseline, stage 1, teacher, student, table."""

from __future__ import annotations

import json

import torch

from d3n_ext.experiments import pipeline
from models.loading import load_model
from models.yolo import Model
from tests.scripts.conftest import make_dataset


def test_pipeline_runs_end_to_end_and_reuses_finished_stages(tmp_path):
    data = make_dataset(tmp_path / "synth", n_train=12, n_val=6, size=96, n_test=4)
    argv = ["--data", str(data), "--out", str(tmp_path / "pipe"), "--epochs", "1", "--imgsz", "64",
            "--batch-size", "6", "--workers", "0", "--detect-source", str(data.parent / "images" / "val"),
            "--stage1", "ddpm_train.iterations=3", "vae.epochs=1", "--quiet"]
    rows = pipeline.main(argv)
    out = tmp_path / "pipe"
    assert [r["model"] for r in rows] == ["baseline", "teacher (hybrid)", "student (self-distilled)", "student (D3N)"]
    table = json.loads((out / "table.json").read_text())
    assert table["rows"] == rows and table["options"]["seed"] == 0 and "threads" in table["machine"]
    assert {r["split"] for r in rows} == {"test"}  # checkpoints chosen on val, figures on test
    text = (out / "table.md").read_text()
    assert "| student (D3N) |" in text and "figures on the test split" in text
    assert "DDPM contribution = D3N student − self-distilled student: " in text
    student = load_model(out / "student" / "weights" / "best.pt")
    assert rows[3]["parameters"] == rows[2]["parameters"] == rows[0]["parameters"] == sum(
        p.numel() for p in student.parameters())
    control = torch.load(out / "self-distilled" / "weights" / "best.pt", weights_only=True)
    assert control["task"]["distilled_from"]["teacher"] == str(out / "baseline" / "weights" / "best.pt")
    assert not student.side_inputs  # a plain YOLOv5: no DDPM, no VAE, no latents
    plain = Model("yolov5n.yaml", nc=student.detect.nc)
    plain.load_state_dict(student.state_dict())  # loads into Model from the plain YAML
    assert list((out / "detect").glob("*.png"))
    assert (out / "curves.png").stat().st_size and (out / "accuracy_vs_gflops.png").stat().st_size  # Figs. 12, 13
    stamp = (out / "baseline" / "weights" / "best.pt").stat().st_mtime
    pipeline.main(argv)  # a rerun reuses every finished stage
    assert (out / "baseline" / "weights" / "best.pt").stat().st_mtime == stamp
