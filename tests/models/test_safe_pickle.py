"""Hostile or broken .pt files are refused in one line, and nothing they carry runs.

Each payload would create a marker file if it ran; the tests check the refusal and that the file is absent.
"""

from __future__ import annotations

import builtins
import os
import zipfile

import pytest
import torch
import torch.nn as nn

from models.loading import load_model
from tests.models.yolov5_files import genuine
from utils.checkpoints import CheckpointError


class Payload:
    """Pickles as a call of `fn(*args)`: what a hostile checkpoint carries."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class UnknownModel(nn.Module):
    """A module of some other program (its class lives in this test file, not in YOLOv5)."""


def _refused(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message and "\x1b" not in message
    return message


def _torch_zip(path, pickle_bytes: bytes):
    """A zip laid out as torch.save writes it, holding a hand-written pickle."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("fn, code, name", [
    (os.system, "touch {marker}", "posix.system" if os.name == "posix" else "nt.system"),
    (builtins.exec, "open({marker!r}, 'w').close()", "__builtin__.exec"),  # protocol 2 writes Python 2 names
    (builtins.eval, "open({marker!r}, 'w').close()", "__builtin__.eval"),
])
def test_reduce_payloads_are_refused_unrun(tmp_path, fn, code, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = Payload(fn, code.format(marker=str(marker)))
    torch.save({"epoch": -1, "model": payload, "ema": None, "opt": {"x": payload}}, path)
    message = _refused(path, "refused")
    assert name in message and "nothing in it was run" in message
    assert not marker.exists()


def test_a_payload_beside_a_genuine_model_refuses_the_whole_file(tmp_path):
    marker = tmp_path / "pwned"
    ckpt_bytes = genuine("det-git-best").read_bytes()
    path = tmp_path / "det.pt"
    path.write_bytes(ckpt_bytes)
    evil = tmp_path / "evil.pt"
    torch.save({"model": None, "ema": None, "opt": Payload(os.system, f"touch {marker}")}, evil)
    _refused(evil, "refused")
    assert not marker.exists()
    assert load_model(path).names  # the genuine file itself still loads


def test_getattr_chains_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    # getattr(getattr(<Detect>, '__init__'), '__globals__'): the second lookup is on a record, not a class
    chain = (b"\x80\x02c__builtin__\ngetattr\n(c__builtin__\ngetattr\n(cyolov5.models.yolo\nDetect\n"
             b"V__init__\ntRV__globals__\ntR.")
    _refused(_torch_zip(tmp_path / "chain.pt", chain), "builtins.getattr applied to PickledObject")
    # getattr(<Detect>, 'system')('touch ...'): the looked-up "attribute" is an inert record, not callable
    call = (b"\x80\x02c__builtin__\ngetattr\n(cyolov5.models.yolo\nDetect\nVsystem\ntR(V"
            + f"touch {marker}".encode() + b"\ntR.")
    _refused(_torch_zip(tmp_path / "call.pt", call), "not a readable checkpoint")
    # getattr on a plain object (str.join, os via __import__) never resolves
    _refused(_torch_zip(tmp_path / "str.pt", b"\x80\x02c__builtin__\ngetattr\n(Vx\nVjoin\ntR."),
             "getattr applied to str")
    _refused(_torch_zip(tmp_path / "imp.pt", b"\x80\x02c__builtin__\n__import__\n(Vos\ntR."), "__builtin__.__import__")
    assert not marker.exists()


def test_a_file_pickling_an_unknown_module_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": UnknownModel(), "ema": None}, path)
    _refused(path, r"names tests\.models\.test_safe_pickle\.UnknownModel")


def test_a_truncated_file_is_refused(tmp_path):
    data = genuine("seg-pip-best").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "not a readable checkpoint")


def _rewrite(src, dst, change):
    """Copy a zip entry by entry; `change(name, data)` returns new bytes, or None to leave the entry out."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def test_a_zip_with_tensor_data_missing_is_refused(tmp_path):
    path = _rewrite(genuine("det-git-best"), tmp_path / "holes.pt",
                    lambda name, data: None if name.endswith("/data/3") else data)
    _refused(path, r"tensor data det-git-best/data/3 is missing")


def test_tensor_data_shorter_than_its_tensor_is_refused(tmp_path):
    path = _rewrite(genuine("det-git-best"), tmp_path / "short.pt",
                    lambda name, data: data[: len(data) // 2] if name.endswith("/data/3") else data)
    _refused(path, r"data/3 holds \d+ bytes, expected")
