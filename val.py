"""Validate a trained detector on a dataset split: P, R, mAP@0.5 and mAP@0.5:0.95, per class.

    python val.py --data data/synth-defects.yaml --weights runs/train/exp/weights/best.pt --imgsz 640

Results go to runs/val/exp<N>/: PR/F1/P/R curves, confusion_matrix.png, val_batch*_labels/_pred.jpg,
labels/*.txt with --save-txt, predictions.json (COCO results format) with --save-json. --augment scores
with YOLOv5's test-time augmentation (engine/tta.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.plugins import add_plugin_flags, load_plugins, side_inputs_for
from engine.tta import TTA
from engine.predictor import PredictOptions
from engine.validate import ValidationRun, load_eval_model, validate, validate_tiled
from utils.cli import check_flag_ranges, exit_on_user_error
from utils.data_config import check_data_yaml, load_data_config
from utils.files import increment_path
from utils.image_size import check_img_size
from utils.logging import set_logging
from utils.torch_utils import select_device
from engine.validator import ValOptions, ValResult

LOGGER = logging.getLogger("val")
ROOT = Path(__file__).resolve().parent
SPEED_CONF, SPEED_IOU = 0.25, 0.45  # --task speed: the thresholds of deployment, as YOLOv5


DEFAULTS = {"detect": ("yolov5s.pt", "val"), "segment": ("yolov5s-seg.pt", "val-seg")}  # weights, runs/<dir>


def build_parser(kind: str = "detect", prog: str | None = None, description: str = __doc__) -> argparse.ArgumentParser:
    """val.py's flags; segment/val.py takes the same ones (kind "segment" changes the defaults). Parses nothing."""
    weights, runs = DEFAULTS[kind]
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synth-defects.yaml",
                   help="data YAML: image folders and class names (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=ROOT / weights,
                   help="checkpoint (.pt) or export (.onnx, .torchscript, _openvino_model/) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640,
                   help="inference size in pixels (default: %(default)s)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold (default: %(default)s)")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold (default: %(default)s)")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image (default: %(default)s)")
    p.add_argument("--task", default="val", choices=("train", "val", "test", "speed"),
                   help="split to evaluate; 'speed' times the val split at conf 0.25, IoU 0.45 (default: %(default)s)")
    p.add_argument("--device", default="",
                   help="device: cpu or a CUDA index such as 0 (default: the first GPU, else cpu)")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (default: %(default)s)")
    p.add_argument("--single-cls", action="store_true", help="treat every class as one")
    p.add_argument("--tile", type=int, default=0, metavar="PIXELS",
                   help="score sliced inference (detect.py --tile) on each whole image, in its own pixels "
                        "(default: %(default)s = off)")
    p.add_argument("--tile-overlap", type=float, default=0.2,
                   help="overlap of neighbouring windows, as a share of a tile (default: %(default)s)")
    p.add_argument("--tile-merge", default="nms", choices=("nms", "nmm"),
                   help="merge duplicates across windows by NMS, or nmm: join boxes a window border cut "
                        "(default: %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="test-time augmentation: full size, flipped at 0.83x and 0.67x, merged before NMS")
    p.add_argument("--verbose", action="store_true", help="report mAP per class")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    p.add_argument("--save-conf", action="store_true", help="add confidences to --save-txt labels")
    p.add_argument("--save-json", action="store_true",
                   help="save predictions.json (COCO results format; masks as RLE for segmenters)")
    p.add_argument("--project", type=Path, default=ROOT / "runs" / runs,
                   help="save to project/name (default: %(default)s)")
    p.add_argument("--name", default="exp", help="save to project/name, numbered exp, exp2, ... (default: %(default)s)")
    p.add_argument("--exist-ok", action="store_true",
                   help="reuse an existing project/name instead of numbering a new one")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA, bf16 autocast on CPU")
    p.add_argument("--scale", action="store_true",
                   help="letterbox-free: stretch images to imgsz x imgsz (as the D3N paper)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return add_plugin_flags(p, "val")


def parse_opt(argv: list[str] | None = None, kind: str = "detect", prog: str | None = None,
              description: str = __doc__) -> argparse.Namespace:
    return build_parser(kind, prog, description).parse_args(argv)


def val_options(opt: argparse.Namespace) -> ValOptions:
    speed = opt.task == "speed"
    return ValOptions(conf_thres=SPEED_CONF if speed else opt.conf_thres,
                      iou_thres=SPEED_IOU if speed else opt.iou_thres,
                      max_det=opt.max_det, single_cls=opt.single_cls, save_txt=opt.save_txt and not speed,
                      save_conf=opt.save_conf, save_json=opt.save_json and not speed, plots=not speed,
                      verbose=opt.verbose, half=opt.half, speed_only=speed)


def run(opt: argparse.Namespace, kind: str = "detect") -> ValResult:
    """Check the cheap inputs first, load the model and its side inputs, evaluate; outputs in project/name<N>."""
    check_img_size(opt.imgsz, 1)  # a size below 1 px fails before anything is loaded
    check_flag_ranges(opt, positive=("batch_size", "max_det"), non_negative=("workers", "tile"),
                      fractions=("conf_thres", "iou_thres", "tile_overlap"))
    check_data_yaml(opt.data)  # a bad data YAML fails before the model is loaded
    job = ValidationRun(opt.weights, opt.data, "val" if opt.task == "speed" else opt.task, opt.imgsz,
                         opt.batch_size, opt.scale, opt.device, opt.workers, kind=kind)
    model = load_eval_model(opt.weights, select_device(opt.device), opt.half, kind)
    data = load_data_config(opt.data)  # a generated dataset is built only once the weights have loaded
    inputs = side_inputs_for(getattr(model, "yaml", None), opt, str(opt.weights), bool(model.side_inputs))
    if opt.augment:
        model = TTA(model)
    job.save_dir = increment_path(opt.project / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    options = val_options(opt)
    if opt.tile:
        if kind != "detect":
            raise ValueError(f"{opt.weights}: --tile scores detectors")
        tiling = PredictOptions(opt.imgsz, options.conf_thres, options.iou_thres, opt.max_det, scale=opt.scale,
                                tile=opt.tile, tile_overlap=opt.tile_overlap, tile_merge=opt.tile_merge)
        result = validate_tiled(job, options, tiling, model, data)
    else:
        result = validate(job, options, inputs, model, data)
    LOGGER.info("Results saved to %s", job.save_dir)
    return result


def main(argv: list[str] | None = None) -> ValResult:
    exit_on_user_error(load_plugins)
    opt = parse_opt(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt))


if __name__ == "__main__":
    main()
