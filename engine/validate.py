"""`validate(...)`: a checkpoint or export scored on a split of a data YAML — what val.py, the D3N
pipeline, the ablation runner and export.py's int8 check (`evaluate`) call.

It loads the model and the split, checks that they fit each other (classes, side inputs), applies the
side inputs' input rules and runs the shared evaluation loop; outputs go to `save_dir` when one is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deploy.backends import load_backend
from engine.plugins import SideInputs, apply_input_rules
from utils.data_config import DataConfig, load_data_config
from utils.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.checkpoints import CheckpointError
from utils.image_size import check_img_size
from utils.logging import quieter
from utils.torch_utils import cpu_has_fast_bf16, select_device
from engine.segment_validator import SegmentValidator
from engine.predictor import PredictOptions, TiledPredictor, warn_static_size
from engine.validator import ValOptions, ValResult, Validator, log_result, run_validation
from utils.sources import read_image
from utils.segment_dataset import LoadImagesAndMasks

LOGGER = logging.getLogger(__name__)
RECT_PAD = 0.5  # rect batches get half a stride of border, as YOLOv5's val
SPLITS = ("train", "val", "test")
KINDS = {"detect": ("val.py", "detect.py"), "segment": ("segment/val.py", "segment/predict.py")}


@dataclass
class ValidationRun:
    """What to score and how the split is read (the metric options are ValOptions)."""

    weights: Path  # detector checkpoint (.pt) or export (.onnx, .torchscript)
    data: Path  # data YAML
    split: str = "val"  # train, val or test
    imgsz: int = 640
    batch_size: int = 32
    scale: bool = False  # letterbox-free: stretch images to imgsz x imgsz (the D3N paper)
    device: str = ""
    workers: int = 8
    save_dir: Path | None = None  # plots, labels/, predictions.json; None writes nothing
    kind: str = "detect"  # or "segment": a YOLOv5-seg model scored on boxes and masks (segment/val.py)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r}: expected one of {', '.join(SPLITS)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        self.weights, self.data = Path(self.weights), Path(self.data)


def load_eval_model(weights: Path, device: torch.device, half: bool = False, kind: str = "detect") -> torch.nn.Module:
    """A checkpoint (fused) or export of a detector (`kind` "detect") or segmenter ("segment"), ready for
    inference on `device`; the other kind is refused with the scripts that take it."""
    model = load_backend(weights, device, fuse=True)
    segmenter = bool(model.nm)  # a Model's or an export's
    if segmenter != (kind == "segment"):
        what = "a segmentation model (Segment head)" if segmenter else "a detector (no Segment head)"
        scripts = KINDS["segment" if segmenter else "detect"]
        raise ValueError(f"{weights}: {what}; score and run it with {scripts[0]} and {scripts[1]}")
    if half and device.type == "cuda":
        model.half()
    if half and device.type == "cpu" and not cpu_has_fast_bf16():
        LOGGER.warning("WARNING: --half on this CPU (no AMX or AVX-512 bf16): bf16 autocast is emulated and usually "
                       "slower than fp32 here (python -m benchmarks.deploy measures it); drop --half")
    return model


def split_loader(run: ValidationRun, data: DataConfig, stride: int, single_cls: bool,
                 dataset: tuple[type, dict] | None = None, rect: bool = True) -> DataLoader:
    """The split's loader: rect batches padded by half a stride (letterbox), or stretched (--scale).

    `dataset` is (class, kwargs) from the model's side inputs; `rect=False` letterboxes to imgsz
    squares, because a static-shape export takes one input size.
    """
    dataset_cls, kwargs = LoadImagesAndLabels, ({} if run.scale else {"pad": RECT_PAD})
    if dataset is not None:
        dataset_cls, extra = dataset
        kwargs.update(extra)
    loader, _ = create_dataloader(data.images(run.split), run.imgsz, run.batch_size, stride,
                                  rect=rect and not run.scale, scale_mode=run.scale, workers=run.workers,
                                  shuffle=False, single_cls=single_cls, nc=data.nc, prefix=f"{run.split}: ",
                                  dataset_cls=dataset_cls, dataset_kwargs=kwargs)
    return loader


def check_fits(model: torch.nn.Module, run: ValidationRun, data: DataConfig, single_cls: bool,
               inputs: SideInputs | None) -> None:
    if model.side_inputs and inputs is None:
        raise ValueError(f"{run.weights}: this model needs side inputs {sorted(model.side_inputs)}; "
                         "pass its plug-in's flags (e.g. --latents <feature repository>)")
    if not single_cls and len(model.names) != data.nc:
        raise ValueError(f"{run.weights}: model has {len(model.names)} classes but {run.data} has {data.nc}")


def validate(run: ValidationRun, options: ValOptions | None = None, inputs: SideInputs | None = None,
             model: torch.nn.Module | None = None, data: DataConfig | None = None) -> ValResult:
    """Score `run.weights` (or an already loaded `model` of it) on `run.split` of `run.data` (or its
    already loaded `data`)."""
    options = options or ValOptions()
    check_img_size(run.imgsz, 1)  # a size below 1 px fails before anything is loaded
    data = data if data is not None else load_data_config(run.data)
    if inputs is not None:
        apply_input_rules(run, inputs.rules, inputs.describe())
    device = select_device(run.device)
    model = model if model is not None else load_eval_model(run.weights, device, options.half, run.kind)
    check_fits(model, run, data, options.single_cls, inputs)
    dataset = inputs.dataset(model, str(run.weights)) if inputs is not None else None
    validator_cls = Validator
    if run.kind == "segment":  # polygons for the masks; a plug-in's dataset of a segmenter carries them too
        dataset, validator_cls = dataset or (LoadImagesAndMasks, {}), SegmentValidator
    stride = max(int(model.stride.max()), 32)
    run.imgsz = check_img_size(run.imgsz, stride)
    warn_static_size(model, run.imgsz)
    loader = split_loader(run, data, stride, options.single_cls, dataset, rect=getattr(model, "fixed_hw", None) is None)
    names = ["item"] if options.single_cls else data.names
    return run_validation(model, loader, names, run.save_dir, options, device=device, validator_cls=validator_cls)


def validate_tiled(run: ValidationRun, options: ValOptions, predict_options: PredictOptions,
                   model: torch.nn.Module, data: DataConfig) -> ValResult:
    """val.py --tile: each image of the split whole, through TiledPredictor (the whole image shrunk plus full-
    resolution windows), scored by the shared Validator in the original image's pixels."""
    if model.side_inputs:
        raise ValueError(f"{run.weights}: --tile: a D3N teacher's latents describe the whole image; tile its student")
    dataset = LoadImagesAndLabels(data.images(run.split), run.imgsz, 1, augment=False, single_cls=options.single_cls,
                                  nc=data.nc, prefix=f"{run.split}: ")
    names = ["item"] if options.single_cls else data.names
    predictor = TiledPredictor(model, predict_options)
    validator = Validator(model, names, run.save_dir, replace(options, plots=False), None, predictor.device)
    with torch.inference_mode():
        for path, labels, (w0, h0) in zip(dataset.im_files, dataset.labels, dataset.shapes):
            image = read_image(Path(path))
            if image is None:
                continue  # the dataset has already warned about it
            det = predictor(image, path)
            validator.process_image(det, torch.as_tensor(labels, dtype=torch.float32).reshape(-1, 5),
                                    (int(h0), int(w0)), Path(path), ((int(h0), int(w0)), ((1.0, 1.0), (0.0, 0.0))))
        result = validator.finish()
    result.speed = predictor.timings.per_image_ms()
    validator.save_json()
    log_result(result, validator.nc, options, None)
    return result


def evaluate(weights: str | Path, data: DataConfig, imgsz: int | None = None, batch_size: int = 32,
             workers: int = 2, split: str = "val") -> ValResult:
    """mAP of any back-end (.pt / .onnx / .torchscript) on a split on the CPU, as val.py scores it, without
    plots or tables: export.py's before/after check of int8. Static exports take their exported square size."""
    model = load_eval_model(Path(weights), torch.device("cpu"))
    fixed = getattr(model, "fixed_hw", None)
    if fixed is not None and fixed[0] != fixed[1]:
        raise CheckpointError(f"{weights}: a static {fixed[0]}x{fixed[1]} export cannot be scored on square "
                              "batches; re-export with --dynamic")
    meta = getattr(model, "meta", None)
    if fixed is None and imgsz is None and meta is None:
        raise ValueError("evaluate: pass imgsz for a .pt checkpoint")
    size = fixed[0] if fixed is not None else int(imgsz or max(meta.imgsz))
    job = ValidationRun(Path(weights), data.yaml_path, split, size, batch_size, device="cpu", workers=workers)
    with quieter("engine.validator"):
        return validate(job, ValOptions(plots=False), model=model, data=data)
