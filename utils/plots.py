"""The pictures a YOLOv5 user looks for in a run directory: batch mosaics, results.png, labels.jpg,
the PR/F1/P/R curves and the confusion matrix.

Figures are built on matplotlib's object API with an Agg canvas (never pyplot's global state or
backend switch), text uses bundled fonts only (cv2 Hershey, matplotlib's DejaVu): nothing is
downloaded. Every file is written atomically.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.boxes import xywh2xyxy
from utils.files import atomic_write_bytes
from utils.smoothing import smooth

LOGGER = logging.getLogger(__name__)

# Tableau's 20 colours, the strong ten first so neighbouring class ids differ most (RGB hex)
PALETTE = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f",
           "bcbd22", "17becf", "aec7e8", "ffbb78", "98df8a", "ff9896", "c5b0d5", "c49c94",
           "f7b6d2", "c7c7c7", "dbdb8d", "9edae5")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MOSAIC_MAX_SIDE = 1920  # px; a batch mosaic is scaled down to fit
PRED_CONF_SHOWN = 0.25  # predictions drawn in a mosaic must beat this confidence


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class `i` from the fixed palette, RGB (matplotlib) or BGR (cv2)."""
    h = PALETTE[int(i) % len(PALETTE)]
    rgb = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    return rgb[::-1] if bgr else rgb


def _class_name(names: list[str] | dict | None, c: int) -> str:
    """Name of class `c`, or its number where `names` does not cover it."""
    if isinstance(names, dict):
        return str(names.get(c, c))
    if names is not None and 0 <= c < len(names):
        return str(names[c])
    return str(c)


def _new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4)):
    """A stand-alone figure on an Agg canvas (no pyplot, so nothing global changes)."""
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _save_figure(fig: Figure, path: Path, dpi: int = 200) -> Path:
    """Render to memory, then write atomically; the format follows the file's suffix."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower(), dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _write_image(path: Path, im: np.ndarray) -> Path:
    """Encode a BGR image by the file's suffix and write it atomically."""
    ok, buf = cv2.imencode(path.suffix, im)
    if not ok:
        raise ValueError(f"{path}: cv2 cannot encode an image with this suffix")
    atomic_write_bytes(path, buf.tobytes())
    return path


def _to_numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """results.csv-like file with column names stripped of the padding YOLOv5 writes."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: CSV file not found")
    try:
        df = pd.read_csv(csv_path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv_path}: CSV file is empty") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise ValueError(f"{csv_path}: CSV file has a header but no rows")
    return df


class Annotator:
    """Draws boxes and labels on a BGR uint8 image with cv2 (Hershey font, nothing to download)."""

    def __init__(self, im: np.ndarray, line_width: int | None = None) -> None:
        if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3
                and im.dtype == np.uint8):
            shape = getattr(im, "shape", None)
            raise ValueError(f"Annotator: expected an (H, W, 3) uint8 BGR image, got {shape}")
        self.im = np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
        self.font_scale = self.lw / 3
        self.font_thickness = max(self.lw - 1, 1)

    def box_label(self, xyxy, label: str = "", color=(128, 128, 128),
                  txt_color=(255, 255, 255)) -> None:
        """A box outline, and `label` on a filled tab above it (inside it at the image's top)."""
        color = tuple(int(c) for c in color)
        p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            x1, y1, x2, y2, baseline_y = self.label_box(label, p1)
            cv2.rectangle(self.im, (x1, y1), (x2, y2), color, thickness=-1, lineType=cv2.LINE_AA)
            cv2.putText(self.im, label, (x1 + 1, baseline_y), cv2.FONT_HERSHEY_SIMPLEX,
                        self.font_scale, tuple(int(c) for c in txt_color), self.font_thickness,
                        lineType=cv2.LINE_AA)

    def label_box(self, label: str, anchor: tuple[int, int]) -> tuple[int, int, int, int, int]:
        """Tab (x1, y1, x2, y2) and text baseline y for a label at a box's top-left `anchor`.

        The tab sits above the box when there is room, below its top edge otherwise, and is
        shifted left/up so that it stays inside the image.
        """
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, self.font_scale,
                                         self.font_thickness)
        h, w = self.im.shape[:2]
        bw, bh = tw + 2, th + base + 2
        x1 = min(max(anchor[0], 0), max(w - bw, 0))
        y1 = anchor[1] - bh if anchor[1] - bh >= 0 else anchor[1]
        y1 = min(max(y1, 0), max(h - bh, 0))
        return x1, y1, x1 + bw - 1, y1 + bh - 1, y1 + th + 1

    def text(self, xy: tuple[int, int], text: str, txt_color=(255, 255, 255)) -> None:
        """Plain text whose top-left corner is at `xy` (file names in a mosaic)."""
        th = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, self.font_scale / 1.5,
                             self.font_thickness)[0][1]
        cv2.putText(self.im, text, (int(xy[0]), int(xy[1]) + th), cv2.FONT_HERSHEY_SIMPLEX,
                    self.font_scale / 1.5, tuple(int(c) for c in txt_color),
                    self.font_thickness, lineType=cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated (H, W, 3) BGR image."""
        return self.im


def _mosaic(images: np.ndarray, ns: int, scale: float) -> np.ndarray:
    """Tile (b, 3, H, W) uint8 RGB images on an ns x ns white grid -> BGR mosaic."""
    b, _, h, w = images.shape
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    mosaic = np.full((ns * th, ns * tw, 3), 255, dtype=np.uint8)
    for i in range(b):
        tile = np.ascontiguousarray(images[i].transpose(1, 2, 0)[..., ::-1])  # CHW RGB -> HWC BGR
        if scale < 1:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        row, col = divmod(i, ns)
        mosaic[row * th:row * th + th, col * tw:col * tw + tw] = tile
    return mosaic


def _as_uint8(images) -> np.ndarray:
    """(B, 3, H, W) floats in 0-1 (or 0-255) or uint8 -> uint8."""
    images = _to_numpy(images)
    if images.dtype == np.uint8:
        return images
    images = images.astype(np.float32)
    if images.size and images.max() <= 1.0:
        images = images * 255
    return images.clip(0, 255).round().astype(np.uint8)


def plot_images(images, targets, paths: list[str] | None = None, fname: Path | str = "images.jpg",
                names: list[str] | dict | None = None, max_subplots: int = 16) -> Path:
    """Batch mosaic with its boxes, as train_batch0.jpg / val_batch0_labels.jpg / _pred.jpg.

    images (B, 3, H, W) RGB; targets (n, 6) [img_idx, cls, x, y, w, h], normalised 0-1 (pixels of
    the input also work), or (n, 7) with the confidence last for predictions (conf > 0.25 drawn).
    """
    fname, images = Path(fname), _as_uint8(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{fname}: images must be (B, 3, H, W), got {tuple(images.shape)}")
    targets = np.zeros((0, 6)) if targets is None or len(targets) == 0 else _to_numpy(targets)
    targets = targets.astype(np.float64)
    b = min(len(images), max_subplots)
    ns = max(math.ceil(math.sqrt(b)), 1)
    h, w = images.shape[2:]
    scale = min(1.0, MOSAIC_MAX_SIDE / (ns * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    annotator = Annotator(_mosaic(images[:b], ns, scale),
                          line_width=max(round((th + tw) * ns * 0.001), 1))
    normalised = targets.size == 0 or targets[:, 2:6].max() <= 1.1
    gain = np.array([w, h, w, h]) * scale if normalised else np.full(4, scale)
    for i in range(b):
        y0, x0 = (i // ns) * th, (i % ns) * tw
        cv2.rectangle(annotator.im, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), 1)
        if paths is not None and i < len(paths):
            annotator.text((x0 + 3, y0 + 3), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        rows = targets[targets[:, 0] == i]
        boxes = xywh2xyxy(rows[:, 2:6]) * gain + np.array([x0, y0, x0, y0])  # (k, 4) mosaic px
        for row, box in zip(rows, boxes):
            c = int(row[1])
            conf = row[6] if len(row) > 6 else None
            if conf is not None and conf <= PRED_CONF_SHOWN:
                continue
            label = _class_name(names, c) if conf is None else f"{_class_name(names, c)} {conf:.2f}"
            annotator.box_label(box, label, color=colors(c, bgr=True))
    return _write_image(fname, annotator.result())


def result_panels(columns) -> list[str]:
    """Every train/, val/ and metrics/ column, in the file's order (a segmenter adds masks, a distiller its terms)."""
    return [c for c in columns if c.startswith(("train/", "val/", "metrics/"))]


def plot_results(csv_path: Path) -> Path:
    """results.png beside results.csv: the losses (train, val), P, R, mAP50, mAP50-95 (of boxes and masks)."""
    csv_path = Path(csv_path)
    df = _read_csv(csv_path)
    x = df["epoch"].to_numpy() if "epoch" in df else np.arange(len(df))
    panels = result_panels(df.columns)
    rows = -(-len(panels) // 5)
    fig, axes = _new_figure(rows, 5, figsize=(12, 3 * rows))
    for ax, column in zip(axes, panels):
        ax.set_title(column, fontsize=11)
        y = df[column].to_numpy(dtype=np.float64)
        ax.plot(x, y, marker=".", linewidth=2, markersize=6, label="results")
        if len(y) > 2:
            ax.plot(x, smooth(y, 0.1), ":", linewidth=2, label="smooth")
    if axes[0].lines:
        axes[0].legend()
    return _save_figure(fig, csv_path.with_name("results.png"))


def _draw_label_boxes(labels: np.ndarray, size: int = 1000, limit: int = 1000) -> np.ndarray:
    """Up to `limit` label boxes centred on one white canvas, to show the box shapes at a glance."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    boxes = labels[:limit].copy()
    boxes[:, 1:3] = 0.5
    corners = xywh2xyxy(boxes[:, 1:5]) * size
    for c, box in zip(boxes[:, 0].astype(int), corners):
        cv2.rectangle(canvas, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])),
                      colors(c), 1)
    return canvas  # RGB, for imshow


def plot_labels(labels: np.ndarray, names: list[str], save_dir: Path) -> Path:
    """labels.jpg: instances per class, box shapes, centre and width-height distributions."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)  # (n, 5) [cls, x, y, w, h]
    cls = labels[:, 0].astype(int)
    nc = max(len(names), int(cls.max()) + 1 if len(cls) else 0)
    fig, ax = _new_figure(2, 2, figsize=(8, 8))
    ax[0].bar(range(nc), np.bincount(cls, minlength=nc),
              color=[np.array(colors(c)) / 255 for c in range(nc)])
    ax[0].set_ylabel("instances")
    if 0 < nc < 30:
        ax[0].set_xticks(range(nc), [_class_name(names, c) for c in range(nc)], rotation=90,
                         fontsize=8)
    ax[1].imshow(_draw_label_boxes(labels))
    ax[1].axis("off")
    for a, (i, j), (xl, yl) in ((ax[2], (1, 2), ("x", "y")), (ax[3], (3, 4), ("width", "height"))):
        a.hist2d(labels[:, i], labels[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        a.set_xlabel(xl)
        a.set_ylabel(yl)
    return _save_figure(fig, Path(save_dir) / "labels.jpg")


def _curve_path(save_dir: Path, fname: str) -> Path:
    """`save_dir` is a folder; a path with an image suffix is taken as the file itself."""
    save_dir = Path(save_dir)
    return save_dir if save_dir.suffix.lower() in IMAGE_SUFFIXES else save_dir / fname


def _class_lines(ax, px: np.ndarray, py: np.ndarray, labels: list[str]) -> None:
    """One thin line per class, labelled when there are few enough classes to read a legend."""
    for i, y in enumerate(py):
        if len(py) < 21:
            ax.plot(px, y, linewidth=1, label=labels[i])
        else:
            ax.plot(px, y, linewidth=1, color="grey")


def _finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if ax.lines:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize=8)


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_dir: Path,
                  names: list[str], fname: str = "PR_curve.png") -> Path:
    """Precision over recall per class (IoU 0.5) and their mean. px (k,), py (nc, k), ap (nc, t)."""
    py = np.asarray(py).reshape(-1, len(px))
    ap = np.asarray(ap).reshape(len(py), -1)
    fig, (ax,) = _new_figure(figsize=(9, 6))
    _class_lines(ax, px, py, [f"{names[i]} {ap[i, 0]:.3f}" for i in range(len(py))])
    if len(py):
        ax.plot(px, py.mean(0), linewidth=3, color="blue",
                label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    _finish_axes(ax, "Recall", "Precision", "Precision-Recall Curve")
    return _save_figure(fig, _curve_path(save_dir, fname))


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_dir: Path, names: list[str],
                  xlabel: str = "Confidence", ylabel: str = "Metric",
                  fname: str | None = None) -> Path:
    """A metric over confidence per class and their (smoothed) mean, e.g. F1_curve.png."""
    py = np.asarray(py).reshape(-1, len(px))
    fig, (ax,) = _new_figure(figsize=(9, 6))
    _class_lines(ax, px, py, list(names))
    if len(py):
        mean = smooth(py.mean(0))
        best = int(mean.argmax())
        ax.plot(px, mean, linewidth=3, color="blue",
                label=f"all classes {mean[best]:.2f} at {px[best]:.3f}")
    _finish_axes(ax, xlabel, ylabel, f"{ylabel}-{xlabel} Curve")
    return _save_figure(fig, _curve_path(save_dir, fname or f"{ylabel}_curve.png"))


def plot_confusion_matrix(matrix: np.ndarray, save_dir: Path, names: list[str] | dict,
                          normalize: bool = True) -> Path:
    """confusion_matrix.png: a seaborn heatmap, predicted (rows) against true (columns)."""
    import seaborn as sn  # slow import, only needed here

    matrix = np.asarray(matrix, dtype=np.float64)  # (nc + 1, nc + 1)
    nc = len(matrix) - 1
    names = list(names.values()) if isinstance(names, dict) else list(names)
    array = matrix / (matrix.sum(0, keepdims=True) + 1e-9) if normalize else matrix.copy()
    array[array < (0.005 if normalize else 1)] = np.nan  # empty cells stay white
    ticks = [*list(names), "background"] if len(names) == nc else "auto"
    fig, (ax,) = _new_figure(figsize=(12, 9))
    sn.heatmap(array, ax=ax, annot=nc < 30, annot_kws={"size": 8}, cmap="Blues",
               fmt=".2f" if normalize else ".0f", square=True, vmin=0.0,
               xticklabels=ticks, yticklabels=ticks)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix" + (" (normalised per true class)" if normalize else ""))
    return _save_figure(fig, Path(save_dir) / "confusion_matrix.png")


def plot_columns(csv_path: Path, columns: list[str], out: Path, title: str, ylabel: str) -> Path:
    """Selected CSV columns against epoch, e.g. the fusion weights of the paper's Fig. 11."""
    csv_path = Path(csv_path)
    df = _read_csv(csv_path)
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"{csv_path}: no column(s) {missing}; columns are {list(df.columns)}")
    x = df["epoch"].to_numpy() if "epoch" in df else np.arange(len(df))
    fig, (ax,) = _new_figure(figsize=(8, 5))
    for c in columns:
        ax.plot(x, df[c].to_numpy(dtype=np.float64), marker=".", linewidth=2, label=c)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_figure(fig, Path(out))


def _first_column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df), None)


RUN_PANELS = (("mAP@0.5", ("metrics/mAP_0.5", "metrics/mAP_0.5(B)")),
              ("mAP@0.5:0.95", ("metrics/mAP_0.5:0.95", "metrics/mAP_0.5:0.95(B)")))
GT_LOSSES = ("train/box_loss", "train/seg_loss", "train/obj_loss", "train/cls_loss")  # what every run minimises


def plot_runs(results: dict[str, Path], out: Path, title: str = "") -> Path:
    """Several runs' results.csv overlaid per epoch (the paper's Fig. 12): val mAP@0.5, mAP@0.5:0.95 and the
    ground-truth training loss (box + obj + cls [+ seg]; a distiller's own term left out, so runs compare)."""
    fig, axes = _new_figure(1, 3, figsize=(15, 4.5))
    for label, csv_path in results.items():
        df = _read_csv(Path(csv_path))
        x = df["epoch"].to_numpy() if "epoch" in df else np.arange(len(df))
        for ax, (name, columns) in zip(axes, RUN_PANELS):
            column = _first_column(df, columns)
            if column is not None:
                y = df[column].to_numpy(dtype=np.float64)
                seen = ~np.isnan(y)  # epochs between validations (--val-interval) have none
                ax.plot(x[seen], y[seen], marker=".", linewidth=2, label=label)
        losses = [c for c in GT_LOSSES if c in df]
        if losses:
            axes[2].plot(x, df[losses].to_numpy(dtype=np.float64).sum(1), marker=".", linewidth=2, label=label)
    for ax, name in zip(axes, ("val mAP@0.5", "val mAP@0.5:0.95", "train loss (box + obj + cls)")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, Path(out))


def plot_accuracy_vs_cost(points: list[tuple[str, float, float]], out: Path, ylabel: str = "mAP@0.5",
                          title: str = "") -> Path:
    """(label, GFLOPs, accuracy) per model as one labelled scatter (the paper's Fig. 13)."""
    fig, (ax,) = _new_figure(figsize=(7, 5))
    for i, (label, gflops, accuracy) in enumerate(points):
        ax.scatter([gflops], [accuracy], s=60, color=f"#{PALETTE[i % len(PALETTE)]}", label=label, zorder=3)
        ax.annotate(label, (gflops, accuracy), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{ylabel} vs computation")
    return _save_figure(fig, Path(out))


def plot_accuracy_vs_labels(series: dict[str, list[tuple[float, float, float]]], out: Path,
                            ylabel: str = "test mAP@0.5", title: str = "") -> Path:
    """Per model (labelled fraction, mean, sd) points as one line with error bars: what labels buy."""
    fig, (ax,) = _new_figure(figsize=(7, 5))
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points)
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, linewidth=2, color=f"#{PALETTE[i % len(PALETTE)]}", label=label)
    ax.set_xscale("log")
    fractions = sorted({p[0] for points in series.values() for p in points})
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlabel("labelled share of the train images")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{ylabel} vs labelled share (mean ± sd over seeds)")
    return _save_figure(fig, Path(out))


def save_axes(axes, path: Path) -> Path:
    """Save the figure of a library's matplotlib axes (e.g. Optuna's plots) atomically, then release it."""
    ax = axes.flat[0] if hasattr(axes, "flat") else axes
    fig = ax.figure
    try:
        return _save_figure(fig, Path(path))
    finally:
        import matplotlib.pyplot as plt  # the library drew on pyplot's figure manager; free it there

        plt.close(fig)
