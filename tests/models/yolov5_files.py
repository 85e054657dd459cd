"""Helpers for tests of ultralytics/yolov5 checkpoints: the committed genuine files and pickles of stand-in
classes placed under YOLOv5's module names (for layouts the genuine fixtures do not cover)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yolov5"
GENUINE = ("det-pip-last", "seg-pip-best", "det-git-best", "seg-git-last")


def genuine(stem: str) -> Path:
    return FIXTURES / f"{stem}.pt"


def expected() -> dict:
    """Reference outputs of yolov5==7.0.14 (tests/fixtures/make_yolov5_fixtures.py) on one fixed input."""
    return torch.load(FIXTURES / "expected.pt", weights_only=True)


def save_under_name(monkeypatch, path: Path, module: str, cls_name: str, payload_of) -> Path:
    """torch.save what `payload_of(cls)` builds, `cls` being an nn.Module subclass importable as module.cls_name
    only while saving (so the pickle names it as ultralytics' code would)."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules or i == len(parts):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type(cls_name, (nn.Module,), {"__module__": module})
    setattr(sys.modules[module], cls_name, cls)
    torch.save(payload_of(cls), path)
    return path
