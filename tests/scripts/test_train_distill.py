"""train_distill.py with a plain YOLOv5 teacher: the self-distillation control of the pipeline."""

from __future__ import annotations

import pytest
import torch

import train
import train_distill
from utils.checkpoints import load_checkpoint


def _flags(data, cfg, project, name, epochs="1"):
    return ["--data", str(data), "--cfg", str(cfg), "--imgsz", "64", "--batch-size", "8", "--epochs", epochs,
            "--workers", "0", "--project", str(project), "--name", name, "--noplots", "--quiet", "--scale"]


def test_a_plain_teacher_distils_without_latents_and_with_feature_terms(tmp_path, tiny_data, tiny_model_yaml):
    teacher = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "teacher")) / "weights" / "best.pt"
    run = train_distill.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "student") +
                             ["--teacher", str(teacher), "--dist-lambda", "0.1", "--dist-feat", "0.5"])
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["task"]["distilled_from"] == {"teacher": str(teacher), "latents": "", "dist_lambda": 0.1,
                                              "dist_loss": "l2", "temperature": 20.0, "obj_scaled": False,
                                              "dist_feat": 0.5, "dist_proto": 0.0,
                                              "unlabeled_share": 0.0, "unlabeled_weight": 1.0}
    losses = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert "train/dist_loss" in losses
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_latents_for_a_plain_teacher_are_refused_in_one_line(tmp_path, tiny_data, tiny_model_yaml):
    teacher = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "teacher")) / "weights" / "best.pt"
    with pytest.raises(SystemExit, match=r"^error: .*a plain YOLOv5 teacher reads no latents; drop --latents$"):
        train_distill.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "student") +
                           ["--teacher", str(teacher), "--latents", str(tmp_path)])
