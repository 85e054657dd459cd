"""Our exports carry the metadata ultralytics/yolov5's DetectMultiBackend reads, beside our own.

Each check reads a file the way YOLOv5's code does (FACTS.md): ONNX `metadata_props` with int(stride) and
ast.literal_eval(names); TorchScript's `config.txt` extra file as JSON with digit keys made ints; OpenVINO's
<name>.yaml beside <name>.xml. Our own back-ends must still read everything they read before. The model is
the genuine ultralytics/yolov5 fixture, so this is also the round trip a YOLOv5 user makes.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from deploy.backends import ExportMetadata, load_backend
from deploy.export import export_onnx, export_openvino, export_torchscript, prepare_model
from tests.models.yolov5_files import genuine

NAMES = {0: "class0", 1: "class1", 2: "class2"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, example, {format: path}) for the genuine detector fixture, exported at 64x64."""
    folder = tmp_path_factory.mktemp("y5meta")
    weights = folder / "best.pt"
    shutil.copyfile(genuine("det-git-best"), weights)
    model = prepare_model(weights, torch.device("cpu"), half=False)
    example = torch.zeros(1, 3, 64, 64)
    with torch.inference_mode():
        model(example)
    meta = ExportMetadata(names=list(model.names), stride=model.stride.tolist(), imgsz=(64, 64), source=weights.name)
    files = {"onnx": export_onnx(model, example, meta, weights.with_suffix(".onnx")),
             "torchscript": export_torchscript(model, example, meta, weights.with_suffix(".torchscript"))}
    pytest.importorskip("openvino", reason="openvino not installed")
    files["openvino"] = export_openvino(model, example, meta, folder / "best_openvino_model")
    return model, example, files


def test_onnx_metadata_as_yolov5_reads_it(exported):
    import onnxruntime as ort

    meta = ort.InferenceSession(str(exported[2]["onnx"]), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = meta.custom_metadata_map
    assert int(props["stride"]) == 32 and ast.literal_eval(props["names"]) == NAMES


def test_torchscript_config_txt_as_yolov5_reads_it(exported):
    extra = {"config.txt": ""}
    torch.jit.load(str(exported[2]["torchscript"]), _extra_files=extra)
    d = json.loads(extra["config.txt"], object_hook=lambda d: {int(k) if k.isdigit() else k: v for k, v in d.items()})
    assert int(d["stride"]) == 32 and d["names"] == NAMES and d["shape"] == [1, 3, 64, 64]


def test_openvino_yaml_beside_the_xml_as_yolov5_reads_it(exported):
    xml = next(Path(exported[2]["openvino"]).glob("*.xml"))
    d = yaml.safe_load(xml.with_suffix(".yaml").read_text())
    assert d["stride"] == 32 and d["names"] == NAMES


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "openvino"])
def test_our_readers_still_get_every_stride_and_the_outputs(exported, fmt):
    model, example, files = exported
    backend = load_backend(files[fmt])
    assert backend.names == list(NAMES.values()) and backend.stride.tolist() == [8.0, 16.0, 32.0]
    x = torch.rand(example.shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(backend(x), model(x), rtol=1e-3, atol=1e-2)


def test_exports_of_the_first_metadata_layout_still_read():
    """d3n-export/1 wrote each field as its own JSON key (stride as a list), which YOLOv5 could not read."""
    old = {"format": "d3n-export/1", "names": json.dumps(["a", "b"]), "stride": json.dumps([8.0, 16.0, 32.0]),
           "imgsz": json.dumps([64, 96]), "nm": "0"}
    meta = ExportMetadata.from_strings(old, Path("old.onnx"))
    assert meta.names == ["a", "b"] and meta.stride == [8.0, 16.0, 32.0] and meta.imgsz == (64, 96)
