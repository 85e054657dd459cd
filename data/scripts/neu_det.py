"""Convert NEU-DET (Pascal VOC XML, 200x200 grey steel images) into a YOLO dataset.

    python -m data.scripts.neu_det --src path/to/NEU-DET --out datasets/NEU-DET

Any layout works (ANNOTATIONS/ + IMAGES/, or train/ and validation/ folders): every XML under
--src is read and its image is found by file name. The split is drawn anew from --seed,
stratified by class (NEU-DET has 300 images per class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data.scripts.common import ConversionSummary, class_lookup, converter_parser, convert_voc, run_converter

NAMES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def convert(src: Path, out: Path, *, seed: int = 0, split: tuple[float, ...] = (0.8, 0.2),
            exist_ok: bool = False) -> ConversionSummary:
    """Write out/images/<split>, out/labels/<split> and out/data.yaml; return counts and skipped items."""
    return convert_voc(Path(src), Path(out), NAMES, class_lookup(NAMES), seed=seed,
                       split=split, exist_ok=exist_ok)


def build_parser() -> argparse.ArgumentParser:
    """The converter's flags; parses nothing."""
    return converter_parser("Convert NEU-DET (VOC XML) to YOLO labels.", "datasets/NEU-DET")


def main(argv: list[str] | None = None) -> int:
    return run_converter(convert, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
