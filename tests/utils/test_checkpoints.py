"""Checkpoints rebuild their model bit-for-bit and refuse broken or foreign files in one line."""

from __future__ import annotations

import pickle

import pytest
import torch

from models.loading import load_model, save_model
from models.yolo import Model
from utils.checkpoints import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_reproduces_outputs_bit_for_bit(tmp_path, tiny_cfg):
    model = Model(tiny_cfg).eval()
    model.names = ["a", "b", "c"]
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    save_model(tmp_path / "m.pt", model)
    loaded = load_model(tmp_path / "m.pt")
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert loaded.names == ["a", "b", "c"]


def test_loading_uses_weights_only(tmp_path, tiny_cfg, monkeypatch):
    save_model(tmp_path / "m.pt", Model(tiny_cfg))
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(tmp_path / "m.pt")
    assert seen.get("weights_only") is True


def test_truncated_checkpoint_is_one_line_error(tmp_path, tiny_cfg):
    save_model(tmp_path / "m.pt", Model(tiny_cfg))
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "cut.pt")
    assert str(tmp_path / "cut.pt") in str(e.value) and "\n" not in str(e.value)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "d3n-checkpoint/1", "kind": "detector", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_and_wrong_kind_checkpoints(tmp_path):
    torch.save({"model": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a D3N checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint({"kind": "ddpm"}, tmp_path / "ddpm.pt")
    with pytest.raises(CheckpointError, match="holds a 'ddpm' checkpoint, expected 'detector'"):
        load_model(tmp_path / "ddpm.pt")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"kind": "x", "v": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    import os

    monkeypatch.setattr(os, "fsync", boom)  # fails after the temporary file has been written
    with pytest.raises(OSError):
        save_checkpoint({"kind": "x", "v": 2}, path)
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_refusals_are_plain_text(tmp_path):
    """PyTorch colours parts of its weights_only message with terminal escape codes; ours carry none."""
    path = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(1, 1)}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "\x1b" not in str(e.value) and "Weights only load failed" in str(e.value)
