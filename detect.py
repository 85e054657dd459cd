"""Run a trained detector on images, directories, globs, .txt lists or videos (engine.predict does the work).

    python detect.py --weights runs/train/exp/weights/best.pt --source data/images

Results go to runs/detect/exp<N>/: annotated images (videos: annotated .mp4), labels/*.txt with
--save-txt, crops/<class>/ with --save-crop.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.plugins import add_plugin_flags, load_plugins, side_inputs_for
from engine.predict import OutputOptions, predict
from engine.predictor import PredictOptions
from engine.tta import TTA
from engine.validate import load_eval_model
from utils.cli import check_flag_ranges, exit_on_user_error
from utils.files import increment_path
from utils.image_size import check_img_size
from utils.logging import set_logging
from utils.torch_utils import select_device

LOGGER = logging.getLogger("detect")
ROOT = Path(__file__).resolve().parent


DEFAULTS = {"detect": ("yolov5s.pt", "detect"), "segment": ("yolov5s-seg.pt", "predict-seg")}  # weights, runs/<dir>


def build_parser(kind: str = "detect", prog: str | None = None, description: str = __doc__) -> argparse.ArgumentParser:
    """detect.py's flags; segment/predict.py takes the same ones (kind "segment" changes the defaults). Parses
    nothing."""
    weights, runs = DEFAULTS[kind]
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=ROOT / weights,
                   help="checkpoint (.pt) or export (.onnx, .torchscript, _openvino_model/) (default: %(default)s)")
    p.add_argument("--source", default=str(ROOT / "data" / "images"),
                   help="image, dir, glob, .txt list, video, camera index (0) or stream URL (rtsp://, http://) "
                        "(default: %(default)s)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640,
                   help="inference size in pixels (default: %(default)s)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold (default: %(default)s)")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold (default: %(default)s)")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image (default: %(default)s)")
    p.add_argument("--device", default="",
                   help="device: cpu or a CUDA index such as 0 (default: the first GPU, else cpu)")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt (segmenters: polygons)")
    p.add_argument("--save-conf", action="store_true", help="add confidences to --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped boxes under crops/<class>/")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="keep only these classes, e.g. --classes 0 2 (default: all)")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", type=Path, default=ROOT / "runs" / runs,
                   help="save to project/name (default: %(default)s)")
    p.add_argument("--name", default="exp", help="save to project/name, numbered exp, exp2, ... (default: %(default)s)")
    p.add_argument("--exist-ok", action="store_true",
                   help="reuse an existing project/name instead of numbering a new one")
    p.add_argument("--line-thickness", type=int, default=3, help="box line thickness in pixels (default: %(default)s)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--tile", type=int, default=0, metavar="PIXELS",
                   help="sliced inference for large images: tile x tile windows at full resolution plus the whole "
                        "image, 0 = off (default: %(default)s)")
    p.add_argument("--tile-overlap", type=float, default=0.2,
                   help="overlap of neighbouring windows, as a share of a tile (default: %(default)s)")
    p.add_argument("--tile-merge", default="nms", choices=("nms", "nmm"),
                   help="merge duplicates across windows by NMS, or nmm: join boxes a window border cut "
                        "(default: %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="test-time augmentation: full size, flipped at 0.83x and 0.67x, merged before NMS")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA, bf16 autocast on CPU")
    p.add_argument("--scale", action="store_true",
                   help="letterbox-free: stretch images to imgsz x imgsz (as the D3N paper)")
    p.add_argument("--cam", nargs="*", type=int, default=None, metavar="LAYER",
                   help="Grad-CAM++ heat maps per class in cam/ (.pt only) of these model layers, the flag alone: the "
                        "layers Detect reads (default: off)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return add_plugin_flags(p, "detect")


def parse_opt(argv: list[str] | None = None, kind: str = "detect", prog: str | None = None,
              description: str = __doc__) -> argparse.Namespace:
    return build_parser(kind, prog, description).parse_args(argv)


def run(opt: argparse.Namespace, kind: str = "detect") -> Path:
    """Check the flags, load the model and its side inputs, predict over --source; outputs in project/name<N>."""
    check_img_size(opt.imgsz, 1)
    check_flag_ranges(opt, positive=("max_det",), non_negative=("tile", "line_thickness"),
                      fractions=("conf_thres", "iou_thres", "tile_overlap"))
    options = PredictOptions(opt.imgsz, opt.conf_thres, opt.iou_thres, opt.max_det, opt.classes, opt.agnostic_nms,
                             opt.scale, opt.half, opt.tile, opt.tile_overlap, opt.tile_merge)
    out = OutputOptions(increment_path(opt.project / opt.name, exist_ok=opt.exist_ok), not opt.nosave, opt.save_txt,
                        opt.save_conf, opt.save_crop, opt.line_thickness, opt.hide_labels, opt.hide_conf, opt.cam)

    model = load_eval_model(opt.weights, select_device(opt.device), options.half, kind)
    inputs = side_inputs_for(getattr(model, "yaml", None), opt, str(opt.weights), bool(model.side_inputs))
    if opt.augment:
        if opt.cam is not None:
            raise ValueError("--augment and --cam: Grad-CAM++ explains one forward pass; drop one of them")
        model = TTA(model)
    return predict(opt.weights, opt.source, options, out, opt.device, inputs, model, kind)


def main(argv: list[str] | None = None) -> Path:
    exit_on_user_error(load_plugins)
    opt = parse_opt(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt))


if __name__ == "__main__":
    main()
