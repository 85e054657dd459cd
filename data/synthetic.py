"""A deterministic synthetic steel-surface defect dataset: the project's embedded default.

The paper's datasets cannot be fetched here, so quickstart, demos and tests train on grey,
textured "hot-rolled steel" images carrying NEU-DET's six defect classes, each with its own look,
about a third of them deliberately faint (non-salient defects are what D3N is for). Boxes are
exact: tight around every drawn pixel, clipped to the image. With task "segment" the labels are
YOLOv5 segment rows instead: each instance's outer contour traced on the very pixels painted
(an instance painted in pieces, such as a cluster of pits, becomes one polygon with its parts
bridged), so the images are the same as for "detect".

    python -m data.synthetic --out datasets/synth-defects --seed 0 --samples-grid grid.jpg

Each image has its own numpy Generator seeded from (seed, split, index), so the same arguments
give byte-identical files. A marker `.complete.json` holding the arguments is written last: a
crash mid-way leaves none, and `ensure_dataset` (called by the data-YAML loader) regenerates.
The generator only ever writes into a folder it made: `.synthetic-owner` is written first into a
new (or empty) folder, and a folder holding neither marker, such as a user's own dataset named by
a copied data YAML's `path:`, is refused untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from data.defect_painters import CONTRAST_GAINS, PAINTERS, REGION_SIZES
from data.polygons import mask_to_polygons, merge_polygons
from data.scripts.common import atomic_write_bytes, atomic_write_text, segment_label_text, yolo_label_text

LOGGER = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
GENERATOR = "synth-defects"
VERSION = 1  # bump when the rendering changes, so existing datasets are regenerated
MARKER = ".complete.json"
OWNER = ".synthetic-owner"  # written first: the folder is the generator's to change
SPLIT_IDS = {"train": 0, "val": 1, "unlabeled": 2}  # each split its own pictures
TASKS = ("detect", "segment")  # label rows: boxes, or polygons of the painted pixels
FAINT_SHARE = 0.3  # share of instances drawn at low contrast on purpose
FAINT_CONTRAST = (8.0, 14.0)  # grey levels; the surface texture has a std of about 4
CLEAR_CONTRAST = (20.0, 55.0)
SUPPORT = 0.1  # pattern values below this (of its peak) are not drawn, so boxes stay tight
MIN_BOX = 0.08  # least visible box side, as a share of the image side
MAX_OVERLAP = 0.05  # least overlap allowed between two instances, as a share of the smaller one
PLACEMENT_TRIES = 30
CLASS_COLOURS = ((56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72))


@dataclass(frozen=True)
class Defect:
    """One drawn instance: class index, pixel box (x1, y1, x2, y2; x2, y2 exclusive), contrast, and
    the (S, S) bool mask of the pixels it painted."""

    cls: int
    box: tuple[int, int, int, int]
    contrast: float
    painted: np.ndarray | None = field(default=None, compare=False, repr=False)

    def polygon(self) -> np.ndarray:
        """The painted pixels' outer contour as one normalised (k, 2) polygon, pieces bridged."""
        parts, _ = mask_to_polygons(self.painted)
        return merge_polygons(parts)


# ---------------------------------------------------------------- rendering


def render_background(rng: np.random.Generator, size: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A grey rolled-steel surface: streaks along the rolling direction (x), grain, shading.

    `size` sets the texture's scale (an image of that side looks like NEU-DET's 200 px); `shape`
    (h, w), default (size, size), the surface drawn, so a large canvas keeps the same grain.
    """
    h, w = shape or (size, size)
    base = rng.uniform(90.0, 170.0)
    rows = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, 1)).astype(np.float32), (1, 0), 1.0)
    knots = max(4, round(4 * w / size))
    along = 1.0 + 0.5 * cv2.resize(rng.normal(0.0, 1.0, (1, knots)).astype(np.float32), (w, 1),
                                   interpolation=cv2.INTER_CUBIC)
    streaks = rows * along * rng.uniform(2.0, 5.0)  # (h, w) by broadcasting
    grain = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0),
                             sigmaX=2.5 * size / 200, sigmaY=0.6 * size / 200)
    grain *= rng.uniform(2.5, 4.5) / max(float(grain.std()), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    gx, gy = rng.normal(0.0, 1.0, 2)
    shading = (gx * xx + gy * yy) * rng.uniform(0.0, 25.0)
    return base + streaks + grain + shading


def draw_defect(cls: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """One instance of a class at a random place: its (S, S) signed layer and exact box.

    The layer is zero outside the box; the box is None when too little of it lies inside the
    image. Instances may run off the edge, as real defects do; the box is then clipped.
    """
    (w_lo, w_hi), (h_lo, h_hi) = REGION_SIZES[cls]
    w = max(int(rng.uniform(w_lo, w_hi) * size), 8)
    h = max(int(rng.uniform(h_lo, h_hi) * size), 8)
    pattern = PAINTERS[cls](rng, h, w, size / 200)  # (h, w), peak |value| 1
    pattern[np.abs(pattern) < SUPPORT] = 0.0
    x0 = int(rng.integers(-w // 6, size - w + w // 6 + 1))
    y0 = int(rng.integers(-h // 6, size - h + h // 6 + 1))
    layer = np.zeros((size, size), np.float32)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
    if ix1 <= ix0 or iy1 <= iy0:
        return layer, None
    layer[iy0:iy1, ix0:ix1] = pattern[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    ys, xs = np.nonzero(layer)
    if len(xs) == 0:
        return layer, None
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if min(box[2] - box[0], box[3] - box[1]) < MIN_BOX * size:
        return layer, None
    return layer, box


def _overlaps(box: tuple[int, int, int, int], others: list[Defect]) -> bool:
    for other in others:
        ox1, oy1, ox2, oy2 = other.box
        inter = max(min(box[2], ox2) - max(box[0], ox1), 0) * max(min(box[3], oy2) - max(box[1], oy1), 0)
        smaller = min((box[2] - box[0]) * (box[3] - box[1]), (ox2 - ox1) * (oy2 - oy1))
        if inter > MAX_OVERLAP * smaller:
            return True
    return False


def _paint_defects(image: np.ndarray, rng: np.random.Generator, size: int,
                   count: int) -> tuple[np.ndarray, list[Defect]]:
    """Up to `count` defects drawn as on a size x size image (overlapping at most MAX_OVERLAP), each placed
    at a random offset when the float surface is larger, then sensor noise: the uint8 image and the defects."""
    h, w = image.shape
    defects: list[Defect] = []
    for k in range(count):
        cls = int(rng.integers(len(CLASS_NAMES)))
        tries = PLACEMENT_TRIES * (4 if k == 0 else 1)  # more for the first, so no image is empty
        for _ in range(tries):
            layer, box = draw_defect(cls, rng, size)
            ox, oy = (0, 0) if (h, w) == (size, size) else (int(rng.integers(0, w - size + 1)),
                                                            int(rng.integers(0, h - size + 1)))
            if box is not None:
                box = (box[0] + ox, box[1] + oy, box[2] + ox, box[3] + oy)
                if not _overlaps(box, defects):
                    break
        else:
            continue
        faint = rng.random() < FAINT_SHARE
        contrast = float(rng.uniform(*(FAINT_CONTRAST if faint else CLEAR_CONTRAST))) * CONTRAST_GAINS[cls]
        image[oy:oy + size, ox:ox + size] += contrast * layer
        painted = np.zeros((h, w), bool)
        painted[oy:oy + size, ox:ox + size] = layer != 0
        defects.append(Defect(cls, box, contrast, painted))
    image += rng.normal(0.0, 1.5, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), defects


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[Defect]]:
    """One grey image (S, S) uint8 with 1-4 defects (overlapping at most MAX_OVERLAP), and their boxes."""
    image, defects = _paint_defects(render_background(rng, size), rng, size, int(rng.integers(1, 5)))
    if rng.random() < 0.5:  # rolling direction vertical: transpose pixels and boxes
        image = np.ascontiguousarray(image.T)
        defects = [Defect(d.cls, (d.box[1], d.box[0], d.box[3], d.box[2]), d.contrast, d.painted.T) for d in defects]
    return image, defects


def _check_canvas(canvas, size: int) -> tuple[int, int]:
    """(w, h) of a canvas given as two integers at least `size` each; a ValueError naming it otherwise."""
    if (not isinstance(canvas, (list, tuple)) or len(canvas) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in canvas)):
        raise ValueError(f"synthetic dataset: canvas={canvas!r} must be two integers [width, height]")
    w, h = canvas
    if min(w, h) < size:
        raise ValueError(f"synthetic dataset: canvas {w}x{h} must be at least size {size} on each side")
    return w, h


def render_large_sample(rng: np.random.Generator, size: int, canvas: tuple[int, int]) -> tuple[np.ndarray, list[Defect]]:
    """One large grey image (h, w) uint8, canvas (w, h), whose defects are drawn at the scale of a size x size
    image: what a factory camera's 2048 px frame of NEU-scale defects looks like (sliced inference, --tile).

    A quarter to a half defect per size x size area; the rolling direction stays horizontal (a canvas need not
    be square).
    """
    w, h = _check_canvas(canvas, size)
    most = max(1, round(w * h / size ** 2 / 2))
    image = render_background(rng, size, (h, w))
    return _paint_defects(image, rng, size, int(rng.integers(max(1, most // 2), most + 1)))


# ---------------------------------------------------------------- dataset on disk


def _marker_args(seed: int, size: int, n_train: int, n_val: int, task: str = "detect",
                 canvas: tuple[int, int] | None = None, n_unlabeled: int = 0) -> dict:
    """The arguments a dataset was made with; `task` only when not "detect", `canvas` only when given and
    `n_unlabeled` only when > 0, so markers (and datasets) made before those options existed still count."""
    for key, value, least in (("seed", seed, 0), ("size", size, 32), ("n_train", n_train, 0), ("n_val", n_val, 0),
                              ("n_unlabeled", n_unlabeled, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"synthetic dataset: {key}={value!r} must be an integer >= {least}")
    if task not in TASKS:
        raise ValueError(f"synthetic dataset: task={task!r} must be one of {', '.join(TASKS)}")
    args = {"generator": GENERATOR, "version": VERSION, "seed": seed, "size": size, "n_train": n_train, "n_val": n_val}
    if task != "detect":
        args["task"] = task
    if canvas is not None:
        args["canvas"] = list(_check_canvas(canvas, size))
    if n_unlabeled:
        args["n_unlabeled"] = n_unlabeled
    return args


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_ours(path: Path) -> bool:
    """Files a generation writes (or leaves behind when it crashes)."""
    leftover = path.name.startswith(".") and path.suffix == ".tmp"  # of an interrupted atomic write
    return (path.name.startswith("synth_") or path.name in (MARKER, OWNER, "data.yaml") or path.suffix == ".cache"
            or leftover)


def _check_ownership(root: Path) -> None:
    """Refuse, before touching anything, a folder the generator did not make (no marker of ours, not empty)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root}: is a file, not a dataset folder")
    if (root / OWNER).is_file() or (root / MARKER).is_file():  # MARKER alone: made before OWNER existed
        return
    existing = next((p for p in sorted(root.rglob("*")) if p.is_file()), None)
    if existing is not None:
        raise FileExistsError(f"{root}: was not made by the synthetic generator (no {OWNER}) and holds other files "
                              f"(e.g. {existing}); nothing was changed. Generate into a new folder (data YAML "
                              "'path:' or --out), or remove 'generate:' to use your own data")


def _check_target(root: Path, args: dict, exist_ok: bool) -> None:
    if exist_ok or not root.exists():
        return
    old = _read_marker(root)
    if old is not None and old != args:
        raise FileExistsError(f"{root}: holds a synthetic dataset made with {old}; pass --exist-ok to replace it")
    foreign = [p for p in root.rglob("*") if p.is_file() and not _is_ours(p)]
    if foreign:
        raise FileExistsError(f"{root}: holds other files (e.g. {foreign[0]}); pass --exist-ok or another --out")


def _clear_previous(root: Path) -> None:
    """Remove the marker first (a crash from here on must read as incomplete), then our files."""
    (root / MARKER).unlink(missing_ok=True)
    for sub in ("images", "labels"):
        if (root / sub).is_dir():
            for path in (root / sub).rglob("*"):
                if path.is_file() and _is_ours(path):
                    path.unlink()


def _write_split(root: Path, split: str, n: int, seed: int, size: int, task: str,
                 canvas: tuple[int, int] | None = None) -> None:
    for i in tqdm(range(n), desc=f"synthetic {split}", leave=False):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        image, defects = render_large_sample(rng, size, canvas) if canvas else render_sample(rng, size)
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError(f"{root}: PNG encoding failed")
        if task == "segment":
            labels = segment_label_text((d.cls, d.polygon()) for d in defects)
        else:
            labels = yolo_label_text(((d.cls, d.box) for d in defects), image.shape[1], image.shape[0])
        atomic_write_bytes(root / "images" / split / f"synth_{i:05d}.png", png.tobytes())
        if split != "unlabeled":  # unlabelled images come without label files, as a factory's do
            atomic_write_text(root / "labels" / split / f"synth_{i:05d}.txt", labels)


def generate_dataset(root: Path, *, seed: int = 0, size: int = 200, n_train: int = 300, n_val: int = 100,
                     task: str = "detect", canvas: tuple[int, int] | None = None, exist_ok: bool = False,
                     n_unlabeled: int = 0) -> Path:
    """Write root/images/{train,val}/*.png, root/labels/{train,val}/*.txt, root/data.yaml, then the marker.

    n_unlabeled > 0 also writes root/images/unlabeled/*.png (other pictures, no label files) for `unlabeled:`.

    task "detect" writes box rows, "segment" polygon rows of the same images. canvas (w, h) makes
    large images whose defects keep the scale of a size x size image (render_large_sample). Refuses a folder it
    did not make (even with exist_ok), and in its own folders a dataset made with other arguments
    or other files unless exist_ok; other files are never deleted.
    """
    root = Path(root)
    args = _marker_args(seed, size, n_train, n_val, task, canvas, n_unlabeled)
    _check_ownership(root)
    _check_target(root, args, exist_ok)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / OWNER, json.dumps({"generator": GENERATOR}))
    _clear_previous(root)
    for split, n in (("train", n_train), ("val", n_val), ("unlabeled", n_unlabeled)):
        if split == "unlabeled" and not n:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        if split != "unlabeled":
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        _write_split(root, split, n, seed, size, task, canvas)
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val",
            **({"unlabeled": "images/unlabeled"} if n_unlabeled else {}), "names": dict(enumerate(CLASS_NAMES))}
    atomic_write_text(root / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    atomic_write_text(root / MARKER, json.dumps(args, indent=1))
    LOGGER.info("%s: wrote %d train, %d val and %d unlabeled synthetic images (seed %d, %d px%s, %s labels)", root,
                n_train, n_val, n_unlabeled, seed, size, f" defects on {canvas[0]}x{canvas[1]}" if canvas else "", task)
    return root


def ensure_dataset(root: Path, *, seed: int = 0, size: int = 200, n_train: int = 300, n_val: int = 100,
                   task: str = "detect", canvas: tuple[int, int] | None = None, n_unlabeled: int = 0) -> Path:
    """Generate the dataset unless a complete one with these arguments is already there."""
    root = Path(root)
    if _read_marker(root) == _marker_args(seed, size, n_train, n_val, task, canvas, n_unlabeled):
        return root
    _check_ownership(root)
    LOGGER.info("%s: generating the synthetic defect dataset (first use or changed arguments)", root)
    return generate_dataset(root, seed=seed, size=size, n_train=n_train, n_val=n_val, task=task, canvas=canvas,
                            exist_ok=True, n_unlabeled=n_unlabeled)


# ---------------------------------------------------------------- picture


def _read_labels(path: Path) -> list[tuple[int, np.ndarray]]:
    """(class, values) per row: 4 values for a box, 2k for a polygon."""
    if not path.exists():
        return []
    rows = (line.split() for line in path.read_text().splitlines())
    return [(int(r[0]), np.array([float(v) for v in r[1:]])) for r in rows if r]


def _draw_tile(image_path: Path, tile: int) -> np.ndarray:
    """One image scaled to tile x tile, its boxes or polygons and class names drawn (Hershey font, no files)."""
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{image_path}: cannot be read")
    image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_LINEAR)
    label_path = image_path.parents[2] / "labels" / image_path.parent.name / f"{image_path.stem}.txt"
    for cls, values in _read_labels(label_path):
        colour = CLASS_COLOURS[cls % len(CLASS_COLOURS)]
        if len(values) == 4:
            xc, yc, w, h = values
            x1, y1 = int(round((xc - w / 2) * tile)), int(round((yc - h / 2) * tile))
            x2, y2 = int(round((xc + w / 2) * tile)) - 1, int(round((yc + h / 2) * tile)) - 1
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, 1)
        else:
            points = np.round(values.reshape(-1, 2) * tile - 0.5).astype(np.int32)  # pixel centres
            cv2.polylines(image, [points], True, colour, 1)
            x1, y1 = (int(v) for v in points.min(0))
        name = CLASS_NAMES[cls] if cls < len(CLASS_NAMES) else str(cls)
        (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
        tx, ty = min(max(x1, 0), tile - tw - 2), (y1 - 2 if y1 - th - 3 >= 0 else min(y1 + th + 2, tile - 2))
        cv2.rectangle(image, (tx, ty - th - 1), (tx + tw + 1, ty + 2), colour, -1)
        cv2.putText(image, name, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def render_samples_grid(root: Path, out: Path, n: int = 16, tile: int = 200) -> None:
    """A JPEG grid of the first n val images (train if val is empty) with their labels and class names."""
    root, out = Path(root), Path(out)
    paths = sorted((root / "images" / "val").glob("*.png"))[:n] or sorted((root / "images" / "train").glob("*.png"))[:n]
    if not paths:
        raise FileNotFoundError(f"{root}: no images under images/val or images/train")
    cols = math.ceil(math.sqrt(len(paths)))
    rows = math.ceil(len(paths) / cols)
    step = tile + 4  # a white gap between tiles
    grid = np.full((rows * step - 4, cols * step - 4, 3), 255, np.uint8)
    for k, path in enumerate(paths):
        y, x = (step * v for v in divmod(k, cols))
        grid[y:y + tile, x:x + tile] = _draw_tile(path, tile)
    ok, jpg = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError(f"{out}: JPEG encoding failed")
    atomic_write_bytes(out, jpg.tobytes())


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The generator's flags; parses nothing."""
    parser = argparse.ArgumentParser(description="Generate the synthetic steel-surface defect dataset (YOLO format).")
    parser.add_argument("--out", type=Path, default=Path("datasets/synth-defects"),
                        help="dataset folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: %(default)s)")
    parser.add_argument("--size", type=int, default=200, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--train", type=int, default=300, help="number of training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=100, help="number of validation images (default: %(default)s)")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="number of extra images without labels, for unlabeled: (default: %(default)s)")
    parser.add_argument("--task", choices=TASKS, default="detect",
                        help="label rows: boxes (detect) or polygons (segment) (default: %(default)s)")
    parser.add_argument("--canvas", type=int, nargs=2, metavar=("W", "H"),
                        help="large W x H images with defects at --size scale, for sliced inference (--tile) "
                             "(default: none, --size squares)")
    parser.add_argument("--exist-ok", action="store_true", help="replace a dataset made with other arguments")
    parser.add_argument("--samples-grid", type=Path,
                        help="also write a JPEG grid of samples with their boxes to this file (default: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate_dataset(args.out, seed=args.seed, size=args.size, n_train=args.train, n_val=args.val,
                         n_unlabeled=args.unlabeled,
                         task=args.task, canvas=tuple(args.canvas) if args.canvas else None, exist_ok=args.exist_ok)
        if args.samples_grid:
            render_samples_grid(args.out, args.samples_grid)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        LOGGER.error("error: %s", e)
        return 1
    print(f"wrote {args.out}" + (f" and {args.samples_grid}" if args.samples_grid else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
