"""Shared fixture of the stage-2 (teacher) tests: labelled images whose pixels say where they came from, and
one tiny latent repository built over them with the real stage-1 pipeline.

Each image is 256 x 256 with B = 40·(image id + 1), G = x and R = y of the pixel, so any output
pixel of an augmented sample names its source image and source position; each image has one labelled
box. The tiny DDPM (32 px) makes latents on 32/16/8 grids: exactly the P3/P4/P5
grids of a 256-px detector.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.d3n_ext.stage1_fixtures import TINY_CONFIG, cli_args

SIZE = 256
N_TRAIN, N_VAL = 4, 2


def coordinate_image(image_id: int) -> np.ndarray:
    """(256, 256, 3) BGR: B = 40·(id + 1), G = x, R = y."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([np.full_like(xs, 40 * (image_id + 1)), xs, ys], -1).astype(np.uint8)


def write_split(root: Path, split: str, ids: range) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for k in ids:
        cv2.imwrite(str(root / "images" / split / f"im{k}.png"), coordinate_image(k))
        (root / "labels" / split / f"im{k}.txt").write_text(f"{k % 2} 0.5 0.5 0.25 0.25\n")


@pytest.fixture(scope="session")
def teacher_repo(tmp_path_factory) -> dict[str, Path]:
    """{'data': data YAML, 'repo': ResVAE latents of every split, 'pca': PCA coefficients, 'raw': raw features,
    'root': the folder}; built once per session."""
    from extract_features import main

    root = tmp_path_factory.getbasetemp() / "teacher-shared"
    paths = {"data": root / "data" / "data.yaml", "repo": root / "repo", "root": root}
    paths.update(pca=paths["repo"] / "pca", raw=paths["repo"] / "raw")
    if not (paths["pca"] / "manifest.json").is_file():
        data = root / "data"
        write_split(data, "train", range(N_TRAIN))
        write_split(data, "val", range(N_TRAIN, N_TRAIN + N_VAL))
        paths["data"].write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames: [dark, light]\n")
        (root / "tiny.yaml").write_text(TINY_CONFIG)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main(cli_args("all", paths["data"], root / "tiny.yaml", paths["repo"])) == 0
            assert main(cli_args("build", paths["data"], root / "tiny.yaml", paths["repo"], "--raw")) == 0
            assert main(cli_args("build", paths["data"], root / "tiny.yaml", paths["repo"], "--compressor", "pca")) == 0
        finally:
            torch.set_num_threads(before)
    return paths


def bound_model(repo_root: Path, cfg: str = "yolov5n-d3n.yaml", nc: int = 2):
    """A D3N model YAML bound to the repository, with its frozen decoders loaded (what D3NTask builds)."""
    from d3n_ext.fusion.binding import bind_repository, load_repository_weights
    from d3n_ext.stage1.repository import LatentRepository
    from models.yolo import Model, load_model_yaml

    repo = LatentRepository(repo_root)
    model = Model(bind_repository(load_model_yaml(cfg)[0], repo), nc=nc)
    return load_repository_weights(model, repo)
