"""Run a trained detector on images, directories, globs, .txt lists or videos.

    python detect.py --weights runs/train/exp/weights/best.pt --source data/images

Results go to runs/detect/exp<N>/: annotated images (videos: annotated .mp4), labels/*.txt with
--save-txt, crops/<class>/ with --save-crop.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from deploy.backends import DetectBackend, load_backend
from engine.predictor import PredictOptions, Predictor
from utils.boxes import xyxy2xywh
from utils.cli import exit_on_user_error
from utils.files import atomic_write_bytes, increment_path, safe_name
from utils.gradcam import CamWriter
from utils.logging import set_logging
from utils.plots import Annotator, colors
from utils.sources import Frame, iter_frames, resolve_source
from utils.torch_utils import select_device

LOGGER = logging.getLogger("detect")
ROOT = Path(__file__).resolve().parent


@dataclass
class OutputOptions:
    save_dir: Path
    save_img: bool = True
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False
    cam_layers: list[int] | None = None  # --cam: Grad-CAM++ strips in cam/ for these layers ([]: Detect's inputs)


def write_labels(path: Path, det: torch.Tensor, shape: tuple[int, int], with_conf: bool) -> None:
    """YOLO-format rows `cls xc yc w h [conf]`, normalised to the image; written atomically."""
    h, w = shape
    rows = []
    for *xyxy, conf, cls in det.tolist():
        xc, yc, bw, bh = xyxy2xywh(np.array(xyxy, dtype=np.float64)) / np.array([w, h, w, h])
        rows.append(f"{int(cls)} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}" + (f" {conf:.6f}" if with_conf else ""))
    atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


def annotate(frame: Frame, det: torch.Tensor, names: list[str], out: OutputOptions) -> np.ndarray:
    annotator = Annotator(frame.image.copy(), line_width=out.line_thickness)
    for *xyxy, conf, cls in det.tolist():
        c = int(cls)
        label = None if out.hide_labels else (names[c] if out.hide_conf else f"{names[c]} {conf:.2f}")
        annotator.box_label(xyxy, label or "", color=colors(c, True))
    return annotator.result()


def save_crops(frame: Frame, det: torch.Tensor, names: list[str], save_dir: Path) -> None:
    h, w = frame.image.shape[:2]
    for k, (*xyxy, _, cls) in enumerate(det.tolist()):
        x1, y1, x2, y2 = (int(max(0, min(v, lim))) for v, lim in zip(xyxy, (w, h, w, h)))
        if x2 > x1 and y2 > y1:
            ok, buf = cv2.imencode(".jpg", frame.image[y1:y2, x1:x2])
            name = frame.stem.with_name(f"{frame.stem.name}_{k}.jpg")  # keeps the input's sub-folder
            atomic_write_bytes(save_dir / "crops" / safe_name(names[int(cls)]) / name, buf.tobytes())


def describe(det: torch.Tensor, names: list[str]) -> str:
    if not len(det):
        return "(no detections)"
    counts = torch.bincount(det[:, 5].long(), minlength=len(names)).tolist()
    return ", ".join(f"{n} {names[c]}{'s' * (n > 1)}" for c, n in enumerate(counts) if n)


class VideoWriters:
    """One annotated .mp4 per source video, opened on its first frame."""

    def __init__(self):
        self.writers: dict[Path, cv2.VideoWriter] = {}

    def write(self, out_path: Path, frame: Frame, image: np.ndarray) -> None:
        if out_path not in self.writers:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            self.writers[out_path] = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps or 30, (w, h))
        self.writers[out_path].write(image)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()


def run(weights: Path, source: str, predict: PredictOptions, out: OutputOptions, device: str = "",
        side_fn=None) -> Path:
    """Detect on every frame of `source`; returns the run directory."""
    dev = select_device(device)
    model = load_backend(weights, dev, fuse=True)
    if predict.half and dev.type == "cuda":
        model.half()
    if model.side_inputs and side_fn is None:
        raise SystemExit(f"error: {weights}: this model needs side inputs {sorted(model.side_inputs)} "
                         "(a D3N teacher): pass --latents <feature repository>")
    predictor = Predictor(model, predict, side_fn)
    names = model.names
    if out.cam_layers is not None and isinstance(model, DetectBackend):
        raise ValueError(f"{weights}: --cam needs gradients, so the .pt checkpoint, not an export")
    cam = CamWriter(model, predictor, names, out.save_dir, out.cam_layers) if out.cam_layers is not None else None
    files = resolve_source(source)
    out.save_dir.mkdir(parents=True, exist_ok=True)
    videos, seen, skipped = VideoWriters(), 0, []
    try:
        for frame in iter_frames(files, skipped):
            det = predictor(frame.image, frame.path)
            seen += 1
            _save_frame(frame, det, names, out, videos)
            if cam is not None:
                cam.write(frame, det)
            where = f"video {frame.frame + 1}/{frame.frames}" if frame.is_video else f"image {seen}"
            LOGGER.info("%s %s: %dx%d %s, %.1fms", where, frame.path, frame.image.shape[1], frame.image.shape[0],
                        describe(det, names), 1e3 * predictor.timings.last[1])
    finally:
        videos.close()
    if skipped:
        LOGGER.warning("WARNING: skipped %d unreadable file(s): %s", len(skipped), ", ".join(map(str, skipped)))
    if not seen:
        raise ValueError(f"{source}: none of its {len(files)} input(s) could be read; nothing was detected")
    pre, inf, nms = predictor.timings.per_image_ms()
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at %s", pre, inf, nms,
                f"{predictor.imgsz}" + (" (stretched)" if predict.scale else " (letterbox)"))
    LOGGER.info("Results saved to %s", out.save_dir)
    return out.save_dir


def _save_frame(frame: Frame, det: torch.Tensor, names: list[str], out: OutputOptions, videos: VideoWriters) -> None:
    """Outputs under the frame's relative name (frame.stem), so inputs in sub-folders keep them apart."""
    stem = frame.stem
    if out.save_txt:
        write_labels(out.save_dir / "labels" / f"{stem}.txt", det, frame.image.shape[:2], out.save_conf)
    if out.save_crop:
        save_crops(frame, det, names, out.save_dir)
    if out.save_img:
        image = annotate(frame, det, names, out)
        if frame.is_video:
            videos.write(out.save_dir / f"{frame.out_stem or frame.path.stem}.mp4", frame, image)
        else:
            suffix = frame.path.suffix if frame.path.suffix.lower() in (".jpg", ".png", ".bmp") else ".jpg"
            ok, buf = cv2.imencode(suffix, image)
            if ok:
                atomic_write_bytes(out.save_dir / f"{stem}{suffix}", buf.tobytes())


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=ROOT / "yolov5s.pt",
                   help="detector checkpoint (.pt) or export (.onnx, .torchscript)")
    p.add_argument("--source", default=str(ROOT / "data" / "images"), help="image, dir, glob, .txt list or video")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    p.add_argument("--save-conf", action="store_true", help="add confidences to --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped boxes under crops/<class>/")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="keep only these classes, e.g. --classes 0 2")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", type=Path, default=ROOT / "runs" / "detect", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")
    p.add_argument("--line-thickness", type=int, default=3, help="box line thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA, bf16 autocast on CPU")
    p.add_argument("--scale", action="store_true", help="letterbox-free: stretch images to imgsz x imgsz (as the D3N paper)")
    p.add_argument("--latents", type=Path, default=None,
                   help="feature repository of a D3N teacher; images not in it are encoded online (needs d3n_ext)")
    p.add_argument("--cam", nargs="*", type=int, default=None, metavar="LAYER",
                   help="Grad-CAM++ heat maps per class in cam/ (.pt only); model layers, default Detect's inputs")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p.parse_args(argv)


def teacher_side_fn(weights: Path, latents: Path, device: str):
    """Side inputs of a D3N teacher: its latents from the repository, else computed online.

    The plug-in is imported only here (it also registers the teacher's blocks); the core never imports it.
    """
    import d3n_ext  # noqa: F401
    from d3n_ext.fusion.teacher_inputs import TeacherSideInputs

    return TeacherSideInputs.from_checkpoint(weights, latents, select_device(device))


def main(argv: list[str] | None = None) -> Path:
    opt = parse_opt(argv)
    set_logging(not opt.quiet)
    if opt.latents is not None and not opt.scale:
        LOGGER.warning("WARNING: a D3N teacher reads latents of the whole stretched image: turning on --scale")
        opt.scale = True
    predict = PredictOptions(opt.imgsz, opt.conf_thres, opt.iou_thres, opt.max_det, opt.classes, opt.agnostic_nms,
                             opt.scale, opt.half)
    save_dir = increment_path(opt.project / opt.name, exist_ok=opt.exist_ok)
    out = OutputOptions(save_dir, not opt.nosave, opt.save_txt, opt.save_conf, opt.save_crop, opt.line_thickness,
                        opt.hide_labels, opt.hide_conf, opt.cam)
    def body():
        side_fn = teacher_side_fn(opt.weights, opt.latents, opt.device) if opt.latents is not None else None
        return run(opt.weights, opt.source, predict, out, opt.device, side_fn)

    return exit_on_user_error(body)


if __name__ == "__main__":
    main()
