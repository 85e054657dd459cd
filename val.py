"""Validate a trained detector on a dataset split: P, R, mAP@0.5 and mAP@0.5:0.95, per class.

    python val.py --data data/synth-defects.yaml --weights runs/train/exp/weights/best.pt --imgsz 640

Results go to runs/val/exp<N>/: PR/F1/P/R curves, confusion_matrix.png, val_batch*_labels/_pred.jpg,
labels/*.txt with --save-txt, predictions.json (COCO results format) with --save-json.
Test-time augmentation (YOLOv5's --augment) is not supported.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from torch.utils.data import DataLoader

from deploy.backends import load_backend
from engine.validator import ValOptions, ValResult, run_validation
from utils.cli import exit_on_user_error
from utils.data_config import DataConfig, load_data_config
from utils.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.files import increment_path
from utils.image_size import check_img_size
from utils.logging import set_logging
from utils.torch_utils import select_device

LOGGER = logging.getLogger("val")
ROOT = Path(__file__).resolve().parent
SPEED_CONF, SPEED_IOU = 0.25, 0.45  # --task speed: the thresholds of deployment, as YOLOv5
RECT_PAD = 0.5  # rect batches get half a stride of border, as YOLOv5's val


def make_dataset_hook(latents: Path, model, weights: Path) -> tuple[type, dict]:
    """(dataset class, its extra kwargs) that feed a D3N teacher's side inputs from `latents`.

    The D3N plug-in provides this, imported only here; the core never imports it.
    """
    from d3n_ext.fusion.task import teacher_dataset_hook

    return teacher_dataset_hook(latents, model, str(weights))


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synth-defects.yaml", help="data YAML")
    p.add_argument("--weights", type=Path, default=ROOT / "yolov5s.pt",
                   help="detector checkpoint (.pt) or export (.onnx, .torchscript)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=("train", "val", "test", "speed"),
                   help="split to evaluate; 'speed' times the val split at conf 0.25, IoU 0.45")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat every class as one")
    p.add_argument("--augment", action="store_true",
                   help="test-time augmentation: NOT supported (YOLOv5's flag; this project refuses it)")
    p.add_argument("--verbose", action="store_true", help="report mAP per class")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    p.add_argument("--save-conf", action="store_true", help="add confidences to --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save predictions.json (COCO results format)")
    p.add_argument("--project", type=Path, default=ROOT / "runs" / "val", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA, bf16 autocast on CPU")
    p.add_argument("--scale", action="store_true",
                   help="letterbox-free: stretch images to imgsz x imgsz (as the D3N paper)")
    p.add_argument("--latents", type=Path, default=None,
                   help="feature repository of a D3N teacher (needs the d3n_ext plug-in)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p.parse_args(argv)


def val_options(opt: argparse.Namespace) -> ValOptions:
    speed = opt.task == "speed"
    return ValOptions(conf_thres=SPEED_CONF if speed else opt.conf_thres,
                      iou_thres=SPEED_IOU if speed else opt.iou_thres,
                      max_det=opt.max_det, single_cls=opt.single_cls, save_txt=opt.save_txt and not speed,
                      save_conf=opt.save_conf, save_json=opt.save_json and not speed, plots=not speed,
                      verbose=opt.verbose, half=opt.half, speed_only=speed)


def build_loader(opt: argparse.Namespace, data: DataConfig, stride: int,
                 plugin: tuple[type, dict] | None, rect: bool = True) -> DataLoader:
    """The split's loader: rect batches padded by half a stride (letterbox), or stretched (--scale).

    `plugin` is (dataset class, its kwargs) from make_dataset_hook, for models with side inputs.
    `rect=False` letterboxes to imgsz squares: static-shape exports take one input size.
    """
    split = "val" if opt.task == "speed" else opt.task
    dataset_cls, dataset_kwargs = LoadImagesAndLabels, ({} if opt.scale else {"pad": RECT_PAD})
    if plugin is not None:
        dataset_cls, extra = plugin
        dataset_kwargs.update(extra)
    loader, _ = create_dataloader(data.images(split), opt.imgsz, opt.batch_size, stride, rect=rect and not opt.scale,
                                  scale_mode=opt.scale, workers=opt.workers, shuffle=False,
                                  single_cls=opt.single_cls, nc=data.nc, prefix=f"{split}: ",
                                  dataset_cls=dataset_cls, dataset_kwargs=dataset_kwargs)
    return loader


def run(opt: argparse.Namespace) -> ValResult:
    """Check the cheap inputs first, load the checkpoint and the split, evaluate; outputs in project/name<N>."""
    if opt.augment:
        raise SystemExit("error: --augment (test-time augmentation) is not supported")
    check_img_size(opt.imgsz, 1)  # a size below 1 px fails before anything is loaded
    data = load_data_config(opt.data)
    if opt.latents is not None:
        import d3n_ext  # noqa: F401  (registers the teacher's blocks before its checkpoint is rebuilt)

        if not opt.scale:
            LOGGER.warning("WARNING: a D3N teacher reads latents of the whole stretched image: turning on --scale")
            opt.scale = True
    device = select_device(opt.device)
    model = load_backend(opt.weights, device, fuse=True)
    if opt.half and device.type == "cuda":
        model.half()
    if model.side_inputs and opt.latents is None:
        raise SystemExit(f"error: {opt.weights}: this model needs side inputs {sorted(model.side_inputs)} "
                         "(a D3N teacher): pass --latents <feature repository>")
    if not opt.single_cls and len(model.names) != data.nc:
        raise ValueError(f"{opt.weights}: model has {len(model.names)} classes but {opt.data} has {data.nc}")
    names = ["item"] if opt.single_cls else data.names
    plugin = make_dataset_hook(opt.latents, model, opt.weights) if opt.latents is not None else None
    stride = max(int(model.stride.max()), 32)
    opt.imgsz = check_img_size(opt.imgsz, stride)
    loader = build_loader(opt, data, stride, plugin, rect=getattr(model, "fixed_hw", None) is None)
    save_dir = increment_path(opt.project / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    result = run_validation(model, loader, names, save_dir, val_options(opt), device=device)
    LOGGER.info("Results saved to %s", save_dir)
    return result


def main(argv: list[str] | None = None) -> ValResult:
    opt = parse_opt(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt))


if __name__ == "__main__":
    main()
