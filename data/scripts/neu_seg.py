"""Convert NEU-Seg (8-bit class masks of 200x200 steel images) into a YOLOv5 segmentation dataset.

    python -m data.scripts.neu_seg --src path/to/NEU-Seg --out datasets/NEU-Seg

The source layout is images/{training,test}/<stem>.jpg with annotations/{training,test}/<stem>.png
(0 background, 1 inclusion, 2 patches, 3 scratches). Every connected region of a class becomes one
instance, written as its outer contour (`cls x1 y1 ... xn yn`, normalised; holes are filled);
regions under --min-area pixels are dropped and counted. The source's split is kept (training ->
train, test -> test: the two folders reuse 300 file names for different images, so they are never
merged) and a val split is drawn from training, seeded and stratified by the classes in each mask.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.polygons import mask_to_polygons
from data.scripts.common import (ConversionSummary, atomic_write_bytes, atomic_write_text, prepare_output,
                                 read_image, run_and_report, segment_label_text, stratified_split, write_data_yaml)

NAMES = ["inclusion", "patches", "scratches"]  # mask values 1, 2, 3
SOURCE_SPLITS = {"training": "train", "test": "test"}  # source folder -> split written
MIN_AREA = 10  # pixels; NEU-Seg masks hold a few hundred one-pixel specks


@dataclass
class NeuSegPair:
    """One image and its class mask, from one source split folder."""

    source_split: str
    image: Path
    mask: Path


def find_pairs(src: Path, summary: ConversionSummary | None = None) -> dict[str, list[NeuSegPair]]:
    """Source split -> image/mask pairs matched by stem within that split; strays are reported as skipped."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source folder not found")
    pairs = {}
    for split in SOURCE_SPLITS:
        image_dir, mask_dir = src / "images" / split, src / "annotations" / split
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise FileNotFoundError(f"{src}: no images/{split} and annotations/{split}; expected NEU-Seg's layout "
                                    "images/{training,test}/*.jpg and annotations/{training,test}/*.png")
        images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == ".png"}
        if summary is not None:
            for stem in sorted(images.keys() - masks.keys()):
                summary.skip(str(images[stem]), f"no mask annotations/{split}/{stem}.png")
            for stem in sorted(masks.keys() - images.keys()):
                summary.skip(str(masks[stem]), f"no image {stem}.jpg in images/{split}")
        pairs[split] = [NeuSegPair(split, images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    return pairs


def read_class_mask(path: Path) -> np.ndarray:
    """An (H, W) uint8 class mask; a colour PNG is accepted when its channels agree."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise ValueError(f"{path}: colour channels differ, not a class-index mask")
        mask = mask[..., 0]
    if mask.dtype != np.uint8:
        raise ValueError(f"{path}: {mask.dtype} pixels, expected 8-bit class indices")
    return mask


def segment_rows(mask: np.ndarray, min_area: int) -> tuple[list[tuple[int, np.ndarray]], int]:
    """(class, normalised polygon) of every region of every class in a class mask, and the regions dropped."""
    rows, dropped = [], 0
    for cls in range(len(NAMES)):
        polygons, small = mask_to_polygons(mask == cls + 1, min_area)
        rows += [(cls, p) for p in polygons]
        dropped += small
    return rows, dropped


@dataclass
class _Converted:
    pair: NeuSegPair
    rows: list[tuple[int, np.ndarray]]


def _convert_pair(pair: NeuSegPair, min_area: int, summary: ConversionSummary) -> _Converted | None:
    """Read and check one pair and trace its regions; None (reported) when it cannot be used."""
    try:
        mask = read_class_mask(pair.mask)
    except (OSError, ValueError) as e:
        summary.skip(str(pair.mask), str(e).split(": ", 1)[-1])
        return None
    try:
        _, image = read_image(pair.image)
    except (OSError, ValueError) as e:
        summary.skip(str(pair.image), str(e).split(": ", 1)[-1])
        return None
    if image.shape[:2] != mask.shape:
        summary.skip(str(pair.mask), f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                     f"{image.shape[1]}x{image.shape[0]}")
        return None
    unknown = sorted(set(np.unique(mask).tolist()) - set(range(len(NAMES) + 1)))
    if unknown:
        summary.note_odd(str(pair.mask), f"unknown mask values {unknown}, those pixels ignored")
    rows, dropped = segment_rows(mask, min_area)
    summary.notes["regions under --min-area px dropped"] += dropped
    if len({c for c, _ in rows}) > 1:
        summary.notes[f"masks with more than one class ({pair.source_split})"] += 1
    if not rows:
        summary.skip(str(pair.mask), f"no region of {min_area} px or more")
        return None
    return _Converted(pair, rows)


def convert(src: Path, out: Path, *, seed: int = 0, val_fraction: float = 0.1, min_area: int = MIN_AREA,
            exist_ok: bool = False) -> ConversionSummary:
    """Write out/images/{train,val,test}, out/labels/{train,val,test} and out/data.yaml; return the counts."""
    src, out = Path(src), Path(out)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction {val_fraction}: must lie between 0 and 1 (a share of training)")
    if min_area < 1:
        raise ValueError(f"--min-area {min_area}: must be at least 1 pixel")
    summary = ConversionSummary(list(NAMES))
    pairs = find_pairs(src, summary)
    prepare_output(out, exist_ok, ("train", "val", "test"))
    converted: dict[str, list[_Converted]] = {}
    for split, found in pairs.items():
        traced = (_convert_pair(p, min_area, summary) for p in tqdm(found, desc=f"tracing {split}", leave=False))
        converted[split] = [c for c in traced if c is not None]
    groups = {c.pair.image.name: "+".join(str(k) for k in sorted({cls for cls, _ in c.rows}))
              for c in converted["training"]}
    val_of = stratified_split(groups, val_fraction, seed)
    for split, items in converted.items():
        for c in items:
            target = val_of[c.pair.image.name] if split == "training" else SOURCE_SPLITS[split]
            atomic_write_bytes(out / "images" / target / c.pair.image.name, c.pair.image.read_bytes())
            atomic_write_text(out / "labels" / target / f"{c.pair.image.stem}.txt", segment_label_text(c.rows))
            summary.add_labels(target, (cls for cls, _ in c.rows))
    summary.save(out)
    write_data_yaml(out, NAMES, {"train": 1.0 - val_fraction, "val": val_fraction, "test": 1.0},
                    how=f"source training -> train + val ({val_fraction:g}, seed {seed}), test -> test")
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The converter's flags; parses nothing."""
    parser = argparse.ArgumentParser(description="Convert NEU-Seg (class masks) to YOLOv5 segment labels.")
    parser.add_argument("--src", type=Path, required=True, help="the downloaded NEU-Seg folder")
    parser.add_argument("--out", type=Path, default=Path("datasets/NEU-Seg"), help="YOLO dataset folder to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of training held out as val (default: %(default)s)")
    parser.add_argument("--min-area", type=int, default=MIN_AREA, help="drop regions of fewer pixels (default: %(default)s)")
    parser.add_argument("--exist-ok", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_and_report(lambda: convert(args.src, args.out, seed=args.seed, val_fraction=args.val_fraction,
                                          min_area=args.min_area, exist_ok=args.exist_ok), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
