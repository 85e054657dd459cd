"""Shared fixtures of the stage-1 tests: a tiny image folder, a tiny preset, one built repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

TINY_CONFIG = """
unet: {image_size: 32, base_channels: 8, channel_mult: [1, 2, 3, 4], num_res_blocks: 1,
       attention_resolutions: [8], num_head_channels: 8, norm_groups: 4, dropout: 0.0}
ddpm_train: {iterations: 2, batch_size: 4, warmup_iters: 0}
features: {batch_size: 2}
vae: {latent_channels: 4, hidden_channels: 8, num_blocks: 1, epochs: 1, batch_size: 8, eval_images: 3}
"""


@pytest.fixture
def one_thread():
    """Tiny tensors are latency-bound: one intra-op thread is faster, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_dataset(root: Path, n_train: int = 5, n_val: int = 2, seed: int = 0) -> Path:
    """Random-texture PNGs (some grey) in images/train, images/val, and a data YAML; returns the YAML."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (40, 48) if i % 2 else (40, 48, 3)
            cv2.imwrite(str(folder / f"{split}{i}.png"), rng.integers(0, 255, shape, dtype=np.uint8))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [defect]\n")
    return yaml_path


def cli_args(command: str, data: Path, cfg: Path, out: Path, *extra: str) -> list[str]:
    return [command, "--data", str(data), "--ddpm-cfg", str(cfg), "--out", str(out), "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory) -> dict[str, Path]:
    """`extract_features.py all` on 7 tiny images: data YAML, config, repository folder.

    Test modules import this fixture, which makes one fixture per module; the fixed folder under
    the session's base temp lets the second module reuse the first one's finished build.
    """
    from extract_features import main

    root = tmp_path_factory.getbasetemp() / "stage1-shared"
    paths = {"data": root / "data" / "data.yaml", "cfg": root / "tiny.yaml", "out": root / "repo", "root": root}
    if not (paths["out"] / "manifest.json").is_file():
        make_dataset(root / "data")
        paths["cfg"].write_text(TINY_CONFIG)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main(cli_args("all", paths["data"], paths["cfg"], paths["out"])) == 0
        finally:
            torch.set_num_threads(before)
    return paths


@pytest.fixture
def repo_copy(stage1_run, tmp_path) -> Path:
    """A private copy of the built repository, free to corrupt."""
    dst = tmp_path / "repo"
    shutil.copytree(stage1_run["out"], dst)
    return dst
