"""Convert the Tianchi fabric defect dataset (2019, JSON boxes) into a YOLO dataset the way the
paper did: keep 9 of the 15 classes, cut each 4096x1696 image into a left and a right
2048x1696 half, keep the halves that hold a defect, split 8:2.

    python -m data.scripts.tianchi --src path/to/guangdong1_round2_train --out datasets/tianchi-fabric

The annotations are a JSON list of {"name": image file, "defect_name": ..., "bbox": [x1, y1, x2, y2]}.
A box across the cut is clipped to each half; a part showing less than --min-visible of the box's
area is dropped (its half keeps an unlabelled sliver, the lesser evil than a sliver labelled as
a whole defect). Both halves of one image go to the same split, so val never sees the other
half of a training image.

Class names: the JSON uses the Chinese names. The paper names its 9 classes in English only;
DEFAULT_CLASS_MAP is our reading (an assumption: "scrimp" <- 网折); pass --class-map to use
another ({"source name": "english name" or null to leave it out}).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.scripts.common import (Box, ConversionSummary, ImageIndex, atomic_write_bytes, atomic_write_text,
                                 box_area, check_box, clip_box, converter_parser, normalise_name,
                                 prepare_output, read_image, run_converter, split_fractions,
                                 stratified_split, write_data_yaml, yolo_label_text)

NAMES = ["sewing", "sewing_print", "scrimp", "bug", "flaw", "color_shade", "miss_print", "hole", "fold"]
DEFAULT_CLASS_MAP: dict[str, str | None] = {
    "缝头": "sewing", "缝头印": "sewing_print", "网折": "scrimp", "虫粘": "bug", "织疵": "flaw",
    "色差": "color_shade", "漏印": "miss_print", "破洞": "hole", "褶子": "fold",
    # the six classes the paper leaves out: stain, mis-pattern, watermark, fluff, wax spot, other
    "沾污": None, "错花": None, "水印": None, "花毛": None, "蜡斑": None, "其他": None,
}
MIN_VISIBLE = 0.25  # least share of a box's area a half must show to keep the box
JPEG_QUALITY = 95  # halves are re-encoded; 95 keeps the fabric texture


def load_class_map(path: Path | None) -> dict[str, int | None]:
    """Normalised source name -> class index, or None for a class the paper leaves out."""
    table = DEFAULT_CLASS_MAP
    if path is not None:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            raise ValueError(f"{path}: must hold a JSON object {{source name: class name or null}}")
    lookup: dict[str, int | None] = {normalise_name(n): i for i, n in enumerate(NAMES)}
    for source, target in table.items():
        if target is not None and normalise_name(target) not in lookup:
            raise ValueError(f"{path or 'DEFAULT_CLASS_MAP'}: {source!r} maps to {target!r}, not one of {NAMES}")
        lookup[normalise_name(source)] = None if target is None else lookup[normalise_name(target)]
    return lookup


def find_annotations(src: Path) -> Path:
    """The one `anno*.json` under src (the download names it anno_train.json)."""
    found = sorted(src.rglob("anno*.json"))
    if len(found) != 1:
        what = "none" if not found else ", ".join(str(p) for p in found)
        raise FileNotFoundError(f"{src}: expected one anno*.json, found {what}; pass --annotations")
    return found[0]


def read_annotations(path: Path, lookup: dict[str, int | None],
                     summary: ConversionSummary) -> dict[str, list[tuple[int, Box]]]:
    """Image name -> (class, box) rows of the kept classes; report entries that cannot be used."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of annotations")
    rows: dict[str, list[tuple[int, Box]]] = defaultdict(list)
    seen = set()
    for i, entry in enumerate(entries):
        item = f"{path.name}[{i}]"
        try:
            name, defect, box = entry["name"], entry["defect_name"], tuple(float(v) for v in entry["bbox"])
            if len(box) != 4:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            summary.skip(item, "entry needs name, defect_name and a 4-number bbox")
            continue
        seen.add(name)
        key = normalise_name(str(defect))
        if key not in lookup:
            summary.note_odd(item, f"unknown class name {defect!r}, box dropped")
        elif lookup[key] is None:
            summary.notes["boxes of left-out classes"] += 1
        else:
            rows[name].append((lookup[key], box))
    summary.notes["images with left-out classes only"] += len(seen - rows.keys())
    return rows


def halves(width: int) -> list[tuple[str, int, int]]:
    """(suffix, x_lo, x_hi) of the left and right halves; 4096 px wide gives two of 2048."""
    mid = width // 2
    return [("left", 0, mid), ("right", mid, width)]


def slice_rows(rows: list[tuple[int, Box]], x_lo: int, x_hi: int, height: int,
               min_visible: float) -> tuple[list[tuple[int, Box]], int]:
    """Boxes of one half in its own coordinates, and how many box parts were too small to keep."""
    kept, dropped = [], 0
    for cls, box in rows:
        if box[2] <= x_lo or box[0] >= x_hi:
            continue
        part = clip_box(box, x_lo, 0, x_hi, height)
        if box_area(part) < min_visible * box_area(box) or part[2] - part[0] < 1:
            dropped += 1
            continue
        kept.append((cls, (part[0] - x_lo, part[1], part[2] - x_lo, part[3])))
    return kept, dropped


def _encode(image: np.ndarray, suffix: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, image, params)
    if not ok:
        raise ValueError(f"cannot encode a {suffix} image")
    return buf.tobytes()


def _convert_image(path: Path, rows: list[tuple[int, Box]], out_dir: tuple[Path, Path],
                   min_visible: float, summary: ConversionSummary, split: str) -> None:
    """Check the boxes against the image, then write each half that holds a defect."""
    try:
        _, image = read_image(path)
    except (OSError, ValueError) as e:
        summary.skip(str(path), str(e).split(": ", 1)[-1])
        return
    height, width = image.shape[:2]
    checked = []
    for cls, box in rows:
        fixed, problem = check_box(box, width, height)
        if problem:
            summary.note_odd(path.name, problem)
        if fixed is not None:
            checked.append((cls, fixed))
    suffix = path.suffix.lower()
    for side, x_lo, x_hi in halves(width):
        kept, dropped = slice_rows(checked, x_lo, x_hi, height, min_visible)
        summary.notes["box parts below --min-visible dropped"] += dropped
        if not kept:
            summary.notes["halves without defects dropped"] += 1
            continue
        stem = f"{path.stem}_{side}"
        atomic_write_bytes(out_dir[0] / f"{stem}{suffix}", _encode(image[:, x_lo:x_hi], suffix))
        atomic_write_text(out_dir[1] / f"{stem}.txt", yolo_label_text(kept, x_hi - x_lo, height))
        summary.add_labels(split, (c for c, _ in kept))


def convert(src: Path, out: Path, *, seed: int = 0, split: tuple[float, ...] = (0.8, 0.2), exist_ok: bool = False,
            annotations: Path | None = None, class_map: Path | None = None,
            min_visible: float = MIN_VISIBLE) -> ConversionSummary:
    """Write out/images/<split>, out/labels/<split> and out/data.yaml; return counts and skipped items."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source folder not found")
    lookup = load_class_map(class_map)
    annotations = Path(annotations) if annotations else find_annotations(src)
    fractions = split_fractions(split)
    prepare_output(out, exist_ok, fractions)
    summary = ConversionSummary(list(NAMES))
    rows = read_annotations(annotations, lookup, summary)
    images = ImageIndex(src)
    paths = {}
    for name in sorted(rows):
        paths[name] = images.find(name)
        if paths[name] is None:
            summary.skip(name, f"image not found under {src}")
    found = {n: p for n, p in paths.items() if p is not None}
    split_of = stratified_split({n: str(rows[n][0][0]) for n in found}, fractions, seed)
    for name, path in tqdm(found.items(), desc="slicing Tianchi images", leave=False):
        s = split_of[name]
        _convert_image(path, rows[name], (out / "images" / s, out / "labels" / s), min_visible, summary, s)
    summary.save(out)
    write_data_yaml(out, NAMES, fractions)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The converter's flags; parses nothing."""
    parser = converter_parser("Convert Tianchi fabric (JSON) to YOLO labels, sliced in halves.",
                              "datasets/tianchi-fabric")
    parser.add_argument("--annotations", type=Path, help="the JSON file (default: the anno*.json under --src)")
    parser.add_argument("--class-map", type=Path, help="JSON {source name: class name or null} "
                        "(default: the paper's classes, DEFAULT_CLASS_MAP)")
    parser.add_argument("--min-visible", type=float, default=MIN_VISIBLE,
                        help="least share of a box's area a half must show to keep it (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_converter(convert, args, annotations=args.annotations, class_map=args.class_map,
                         min_visible=args.min_visible)


if __name__ == "__main__":
    raise SystemExit(main())
