"""Inputs for detect.py: an image, a directory, a glob, a .txt list of paths, or a video file.

Unreadable images and videos are skipped with a warning, never a crash in the middle of a run.
Every input gets an output name of its own: its path below the inputs' common folder, so
a/img.jpg and b/img.jpg do not overwrite each other's results.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from utils.data_config import IMG_FORMATS, VID_FORMATS
from utils.images import MIN_IMAGE_SIDE, decode_image

LOGGER = logging.getLogger(__name__)


@dataclass
class Frame:
    path: Path
    image: np.ndarray  # (H, W, 3) uint8 BGR
    frame: int = 0  # frame index for videos, 0 for images
    frames: int = 1  # frames in the video, 1 for images
    fps: float = 0.0
    out_stem: Path | None = None  # output name, relative, no extension, unique in the run (None: the file's stem)

    @property
    def stem(self) -> Path:
        """Relative name for this frame's outputs: out_stem, plus _<frame> for a video frame."""
        stem = self.out_stem or Path(self.path.stem)
        return stem.with_name(f"{stem.name}_{self.frame}") if self.is_video else stem

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VID_FORMATS


def resolve_source(source: str | Path) -> list[Path]:
    """Media files named by `source`, in a stable order; raises if it names nothing at all."""
    s = str(source)
    p = Path(s)
    if any(ch in s for ch in "*?["):
        files = glob_files(s)
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
    elif p.suffix.lower() == ".txt" and p.is_file():
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        files = [Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines]
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"{source}: no such file, directory, glob or list")
    media = [f for f in files if f.suffix.lower() in IMG_FORMATS + VID_FORMATS]
    if not media:
        raise FileNotFoundError(f"{source}: no images or videos found (image types: {', '.join(IMG_FORMATS)}; "
                                f"video types: {', '.join(VID_FORMATS)})")
    return media


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob, each once, sorted. `**` is walked by hand, every real folder visited once: Python's
    glob follows a symlink loop (`sub/loop -> ..`) under ever longer names until the OS gives up (40 levels,
    or with two loops effectively forever), where a directory --source already visits each folder once."""
    if "**" not in pattern:
        return sorted(Path(f) for f in glob.glob(pattern) if os.path.isfile(f))
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    root = Path(*parts[:first]) if first else Path(".")
    rule = re.compile(glob_regex(parts[first:]))
    found, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # as glob: hidden folders only by name
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and rule.fullmatch(path.relative_to(root).as_posix()) and path.is_file():
                found.append(path)
    unique = {}
    for path in sorted(found, key=lambda p: (len(p.parts), str(p))):  # the shortest name of a file reached twice
        unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values())


def glob_regex(parts: tuple[str, ...]) -> str:
    """A regular expression for the parts of a glob below its fixed folder (matched against '/'-joined relative
    paths): `**` any number of folders (none included), `*` and `?` within one name, `[...]` a character class."""
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
        else:
            out.append(_name_regex(part) + ("" if last else "/"))
    return "".join(out)


def _name_regex(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        close = name.find("]", i + 2) if ch == "[" else -1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif close > 0:
            body = name[i + 1:close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def output_stems(files: list[Path]) -> dict[Path, Path]:
    """Per input its output name: the path below the inputs' common folder, without extension.

    a/img.jpg and b/img.jpg stay apart (a/img, b/img); so do img.jpg and img.png beside each other
    (img_jpg, img_png), whose labels would otherwise share img.txt.
    """
    if not files:
        return {}
    absolute = {f: Path(f).absolute() for f in files}
    base = Path(os.path.commonpath([a.parent for a in absolute.values()]))
    stems = {f: a.relative_to(base).with_suffix("") for f, a in absolute.items()}
    taken = Counter(stems.values())
    return {f: s.with_name(f"{s.name}_{Path(f).suffix.lstrip('.').lower()}") if taken[s] > 1 else s
            for f, s in stems.items()}


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8 (H, W, 3), grey and alpha images converted; None when the file is unreadable.

    A truncated JPEG is used with a warning, by the rule every reader follows (utils.images).
    """
    im, problem = decode_image(path)
    if im is not None and problem:
        LOGGER.warning("WARNING: %s: %s; used", path, problem)
    return im


def iter_frames(files: list[Path], skipped: list[Path] | None = None) -> Iterator[Frame]:
    """Yield every image and every video frame; warn about, skip (and list in `skipped`) what cannot be read."""
    skipped = [] if skipped is None else skipped
    stems = output_stems(files)
    for path in files:
        if path.suffix.lower() in VID_FORMATS:
            yield from _video_frames(path, skipped, stems[path])
            continue
        im = read_image(path)
        if im is None or min(im.shape[:2]) < MIN_IMAGE_SIDE:  # the rule training's label scan follows
            problem = "unreadable or corrupt image" if im is None else \
                f"image smaller than {MIN_IMAGE_SIDE} px ({im.shape[1]}x{im.shape[0]})"
            LOGGER.warning("WARNING: %s: %s, skipped", path, problem)
            skipped.append(path)
            continue
        yield Frame(path, im, out_stem=stems[path])


def _video_frames(path: Path, skipped: list[Path], out_stem: Path) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        LOGGER.warning("WARNING: %s: cannot open video, skipped", path)
        skipped.append(path)
        return
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    i = 0
    try:
        while True:
            ok, im = cap.read()
            if not ok:
                break
            yield Frame(path, im, i, frames, fps, out_stem)
            i += 1
    finally:
        cap.release()
    if i == 0:
        LOGGER.warning("WARNING: %s: no decodable frames, skipped", path)
        skipped.append(path)
    elif i < frames:
        LOGGER.warning("WARNING: %s: decoding stopped after frame %d of the %d its header announces: the video is "
                       "truncated or damaged, %d frame(s) missing", path, i, frames, frames - i)
