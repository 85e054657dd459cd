"""Shared pieces of the dataset converters: reading VOC XML, finding images, splitting,
clipping boxes, writing YOLO labels atomically and reporting what was converted or skipped.

The converters (NEU-DET, GC10-DET, Tianchi fabric; NEU-Seg for segment labels) differ only in
their class tables and in how one source image becomes output images; everything else lives here
once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
OUTSIDE_TOLERANCE_PX = 1.0  # VOC's 1-based corners are often off by one at the border
REPORT_NAME = "conversion.json"
DATA_YAML_NAME = "data.yaml"

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, continuous edges


# ---------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # open() keeps the umask
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def yolo_label_text(rows: Iterable[tuple[int, Box]], width: int, height: int) -> str:
    """Rows `cls xc yc w h`, normalised to 0-1 with 6 decimals, from pixel corner boxes."""
    lines = []
    for cls, (x1, y1, x2, y2) in rows:
        xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{cls} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def segment_label_text(rows: Iterable[tuple[int, np.ndarray]]) -> str:
    """YOLOv5 segment rows `cls x1 y1 ... xn yn`, from (class, (k, 2) normalised polygon) pairs, 6 decimals."""
    return "".join(f"{cls} " + " ".join(f"{v:.6f}" for v in np.asarray(polygon).reshape(-1)) + "\n"
                   for cls, polygon in rows)


def prepare_output(out: Path, exist_ok: bool, splits: Iterable[str] = ("train", "val")) -> None:
    """Refuse to mix a new conversion into an existing folder unless asked to replace it.

    With exist_ok the folder's images/, labels/ and report are removed first, so no stale
    image of an earlier run is trained with a label it no longer has.
    """
    if out.exists() and any(out.iterdir()):
        if not exist_ok:
            raise FileExistsError(f"{out}: already exists and is not empty; pass --exist-ok to replace it")
        LOGGER.warning("%s: replacing images/, labels/ and %s", out, REPORT_NAME)
        for sub in ("images", "labels"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / REPORT_NAME).unlink(missing_ok=True)
    for split in splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)


def write_data_yaml(out: Path, names: list[str], fractions: dict[str, float], how: str | None = None) -> Path:
    """<out>/data.yaml naming exactly the splits written (no `path:`, so it resolves to its own folder).

    `how` says in its first comment how the split was made (default: the --split shares).
    """
    how = how or "--split " + " ".join(f"{fractions[s]:g}" for s in fractions)
    lines = [f"# written by the converter: {how}; train with --data {out / DATA_YAML_NAME}\n"]
    lines += [f"{s}: images/{s}\n" for s in SPLITS if fractions.get(s, 0.0) > 0]
    lines += ["names:\n"] + [f"  {i}: {n}\n" for i, n in enumerate(names)]
    path = out / DATA_YAML_NAME
    atomic_write_text(path, "".join(lines))
    return path


class ImageIndex:
    """Every image file under a folder, found by file name or by stem (datasets nest them)."""

    def __init__(self, root: Path):
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        self.duplicates: list[Path] = []
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            if path.name in self.by_name:
                self.duplicates.append(path)
                continue
            self.by_name[path.name] = path
            self.by_stem.setdefault(path.stem, path)

    def find(self, name: str) -> Path | None:
        """Exact file name first, then the stem (VOC `<filename>` often lacks the suffix)."""
        name = Path(name.strip()).name
        return self.by_name.get(name) or self.by_stem.get(Path(name).stem) or self.by_stem.get(name)


def read_image(path: Path) -> tuple[bytes, np.ndarray]:
    """Raw bytes (to copy unchanged) and the decoded image (to know its true size)."""
    data = path.read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return data, image


# ---------------------------------------------------------------- annotations


def normalise_name(name: str) -> str:
    """`Rolled-in Scale` and `rolled_in_scale` are the same class."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def class_lookup(names: Iterable[str], aliases: dict[str, str] | None = None) -> dict[str, int]:
    """Normalised source name -> class index, from the class names plus aliases to them."""
    lookup = {normalise_name(n): i for i, n in enumerate(names)}
    for alias, target in (aliases or {}).items():
        lookup[normalise_name(alias)] = lookup[normalise_name(target)]
    return lookup


@dataclass
class VocObject:
    name: str
    box: Box  # pixel edges: VOC's 1-based inclusive xmin becomes xmin - 1


@dataclass
class VocAnnotation:
    filename: str
    width: int
    height: int
    objects: list[VocObject]


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: <{tag}> is {text!r}, not a number") from None


def parse_voc_xml(path: Path) -> VocAnnotation:
    """Read one Pascal VOC file; a malformed file raises ValueError naming it."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    width = int(_number(size, "width", path)) if size is not None else 0
    height = int(_number(size, "height", path)) if size is not None else 0
    objects = []
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{path}: an <object> has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bnd, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject((obj.findtext("name") or "").strip(), (xmin - 1, ymin - 1, xmax, ymax)))
    return VocAnnotation((root.findtext("filename") or "").strip(), width, height, objects)


def clip_box(box: Box, x_lo: float, y_lo: float, x_hi: float, y_hi: float) -> Box:
    x1, y1, x2, y2 = box
    return max(x1, x_lo), max(y1, y_lo), min(x2, x_hi), min(y2, y_hi)


def box_area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def check_box(box: Box, width: int, height: int) -> tuple[Box | None, str | None]:
    """Clip a box to the image; say what was wrong with it (None when nothing was).

    Returns (None, reason) for a box to drop: inverted, or nothing left inside the image.
    """
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return None, f"empty or inverted box {_fmt(box)}"
    tol = OUTSIDE_TOLERANCE_PX
    outside = x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol
    clipped = clip_box(box, 0, 0, width, height)
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return None, f"box {_fmt(box)} outside the {width}x{height} image"
    return clipped, (f"box {_fmt(box)} outside the {width}x{height} image, clipped" if outside else None)


def _fmt(box: Box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


# ---------------------------------------------------------------- split


def split_fractions(values: list[float] | tuple[float, ...]) -> dict[str, float]:
    """{'train', 'val'[, 'test']} -> share of images, from `--split 0.8 0.2` or `--split 0.7 0.1 0.2`."""
    if len(values) not in (2, 3) or any(v < 0 for v in values) or values[0] <= 0:
        raise ValueError(f"--split {' '.join(map(str, values))}: give 2 or 3 shares (train val [test]), "
                         "train above 0, none negative")
    total = float(sum(values))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--split {' '.join(map(str, values))}: the shares add up to {total:g}, not 1")
    return dict(zip(("train", "val", "test"), (float(v) for v in values)))


def _quotas(by_group: dict[str, list[str]], share: float, total: int) -> dict[str, int]:
    """Per group how many keys a split of `share` takes: round(total * share) overall, shared out in
    proportion to the group sizes, largest remainders first (half rounds up, unlike round())."""
    quota = {g: len(keys) * share for g, keys in by_group.items()}
    n = {g: int(q) for g, q in quota.items()}
    left = int(total * share + 0.5) - sum(n.values())
    for g in sorted(quota, key=lambda g: (n[g] - quota[g], g))[:max(left, 0)]:
        n[g] += 1
    return n


def stratified_split(groups: dict[str, str], fractions: dict[str, float] | float, seed: int) -> dict[str, str]:
    """Key -> split name, stratified by group and reproducible by seed.

    `fractions` maps split names to shares ({'train': 0.7, 'val': 0.1, 'test': 0.2}); a bare float is
    the val share of a train/val split. Every split but train holds round(n * share) keys, shared out
    over the groups in proportion to their sizes; train takes the rest. Keys are sorted before
    shuffling, so the result does not depend on file-system order, and the val keys of a 3-way split
    are drawn first: `--split 0.7 0.1 0.2` and `--split 0.9 0.1` with one seed share their val set.
    """
    if not isinstance(fractions, dict):
        if not 0.0 <= fractions < 1.0:
            raise ValueError(f"val fraction {fractions} must be in [0, 1)")
        fractions = {"train": 1.0 - fractions, "val": fractions}
    by_group: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        by_group[groups[key]].append(key)
    held_out = [s for s in ("val", "test") if fractions.get(s, 0.0) > 0]
    quotas = {s: _quotas(by_group, fractions[s], len(groups)) for s in held_out}
    rng = np.random.default_rng(seed)
    split = {}
    for group in sorted(by_group):
        keys = by_group[group]
        names = [s for s in held_out for _ in range(quotas[s][group])]
        for rank, i in enumerate(rng.permutation(len(keys))):
            split[keys[i]] = names[rank] if rank < len(names) else "train"
    return split


# ---------------------------------------------------------------- report


@dataclass
class ConversionSummary:
    """What a conversion produced and what it left out, for the user to check."""

    names: list[str]
    images: Counter = field(default_factory=Counter)  # split -> images written
    instances: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # split -> name -> n
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason): left out
    odd: list[tuple[str, str]] = field(default_factory=list)  # (item, reason): fixed and kept
    notes: Counter = field(default_factory=Counter)  # other tallies (excluded classes, dropped slices)

    def add_labels(self, split: str, classes: Iterable[int]) -> None:
        self.images[split] += 1
        for c in classes:
            self.instances[split][self.names[c]] += 1

    def skip(self, item: str, reason: str) -> None:
        LOGGER.debug("skipped %s: %s", item, reason)
        self.skipped.append((item, reason))

    def note_odd(self, item: str, reason: str) -> None:
        self.odd.append((item, reason))

    def splits(self) -> list[str]:
        """train and val always, test when the split wrote one."""
        return [s for s in SPLITS if s != "test" or self.images[s]]

    def to_dict(self) -> dict:
        return {
            "images": {s: self.images[s] for s in self.splits()},
            "instances": {s: {n: self.instances[s][n] for n in self.names} for s in self.splits()},
            "skipped": [list(x) for x in self.skipped],
            "odd": [list(x) for x in self.odd],
            "notes": dict(self.notes),
        }

    def report(self, max_items: int = 20) -> str:
        """A table of instances per class and split, then the skipped and odd items."""
        width = max(len(n) for n in self.names + ["class"])
        splits = self.splits()
        lines = [f"{'class':<{width}}" + "".join(f" {s:>7}" for s in splits)]
        for n in self.names:
            lines.append(f"{n:<{width}}" + "".join(f" {self.instances[s][n]:>7}" for s in splits))
        lines.append(f"{'images':<{width}}" + "".join(f" {self.images[s]:>7}" for s in splits))
        for key, value in sorted(self.notes.items()):
            lines.append(f"{key}: {value}")
        for title, items in (("skipped", self.skipped), ("odd (kept)", self.odd)):
            lines.append(f"{title}: {len(items)}")
            lines += [f"  {item}: {reason}" for item, reason in items[:max_items]]
            if len(items) > max_items:
                lines.append(f"  ... {len(items) - max_items} more in {REPORT_NAME}")
        return "\n".join(lines)

    def save(self, out: Path) -> None:
        atomic_write_text(out / REPORT_NAME, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))


# ---------------------------------------------------------------- VOC datasets


@dataclass
class _VocItem:
    xml: Path
    image: Path
    annotation: VocAnnotation


def _collect_voc(src: Path, summary: ConversionSummary) -> list[_VocItem]:
    """Parse every XML under src and pair it with its image; report what cannot be used."""
    images = ImageIndex(src)
    for dup in images.duplicates:
        summary.note_odd(str(dup), "duplicate image file name, the first one found is used")
    items, claimed = [], set()
    for xml in sorted(src.rglob("*.xml")):
        try:
            ann = parse_voc_xml(xml)
        except ValueError as e:
            summary.skip(str(xml), str(e).split(": ", 1)[-1])
            continue
        image = images.find(ann.filename) if ann.filename else None
        image = image or images.find(xml.stem)
        if image is None:
            summary.skip(str(xml), f"image {ann.filename or xml.stem!r} not found under {src}")
            continue
        if image.name in claimed:
            summary.skip(str(xml), f"image {image.name} already annotated by another XML file")
            continue
        claimed.add(image.name)
        items.append(_VocItem(xml, image, ann))
    return items


def _voc_rows(item: _VocItem, width: int, height: int, lookup: dict[str, int],
              summary: ConversionSummary) -> list[tuple[int, Box]]:
    rows = []
    for obj in item.annotation.objects:
        cls = lookup.get(normalise_name(obj.name))
        if cls is None:
            summary.note_odd(str(item.xml), f"unknown class name {obj.name!r}, box dropped")
            continue
        box, problem = check_box(obj.box, width, height)
        if problem:
            summary.note_odd(str(item.xml), problem)
        if box is not None:
            rows.append((cls, box))
    return rows


def convert_voc(src: Path, out: Path, names: list[str], lookup: dict[str, int], *, seed: int,
                split: tuple[float, ...], exist_ok: bool) -> ConversionSummary:
    """Convert a folder of VOC XML files and their images into YOLO images/labels.

    Images are copied unchanged; their true size (decoded) normalises the boxes. The split is
    stratified by the first object's class name.
    """
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source folder not found")
    fractions = split_fractions(split)
    prepare_output(out, exist_ok, fractions)
    summary = ConversionSummary(list(names))
    items = _collect_voc(src, summary)
    groups = {it.image.name: str(lookup.get(normalise_name(it.annotation.objects[0].name), -1))
              if it.annotation.objects else "" for it in items}
    split_of = stratified_split(groups, fractions, seed)
    for item in tqdm(items, desc=f"converting {src.name}", leave=False):
        try:
            data, image = read_image(item.image)
        except (OSError, ValueError) as e:
            summary.skip(str(item.image), str(e).split(": ", 1)[-1])
            continue
        height, width = image.shape[:2]
        ann = item.annotation
        if (ann.width, ann.height) not in ((width, height), (0, 0)):
            summary.note_odd(str(item.xml), f"XML size {ann.width}x{ann.height} but image is {width}x{height}")
        rows = _voc_rows(item, width, height, lookup, summary)
        if ann.objects and not rows:
            summary.skip(str(item.xml), "no usable box left")
            continue
        s = split_of[item.image.name]
        atomic_write_bytes(out / "images" / s / item.image.name, data)
        atomic_write_text(out / "labels" / s / f"{item.image.stem}.txt", yolo_label_text(rows, width, height))
        summary.add_labels(s, (c for c, _ in rows))
    summary.save(out)
    write_data_yaml(out, names, fractions)
    return summary


# ---------------------------------------------------------------- CLI


def converter_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """The flags every converter shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--src", type=Path, required=True, help="the downloaded dataset folder")
    parser.add_argument("--out", type=Path, default=Path(default_out), help="YOLO dataset folder to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: %(default)s)")
    parser.add_argument("--split", type=float, nargs="+", default=[0.8, 0.2], metavar="SHARE",
                        help="shares of train val [test], stratified by class, e.g. 0.7 0.1 0.2 (default: 0.8 0.2)")
    parser.add_argument("--exist-ok", action="store_true", help="replace an existing --out")
    return parser


def run_converter(convert: Callable[..., ConversionSummary], args: argparse.Namespace, **extra) -> int:
    """Call a converter with the shared flags, print its report; one-line error on bad input."""
    return run_and_report(lambda: convert(args.src, args.out, seed=args.seed, split=tuple(args.split),
                                          exist_ok=args.exist_ok, **extra), args.out)


def run_and_report(conversion: Callable[[], ConversionSummary], out: Path) -> int:
    """Run a conversion, print its report and where it wrote; bad input is one logged line and exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = conversion()
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        LOGGER.error("error: %s", e)
        return 1
    print(summary.report())
    print(f"wrote {out} (data YAML: {out / DATA_YAML_NAME}, report: {out / REPORT_NAME})")
    return 0
