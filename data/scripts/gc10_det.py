"""Convert GC10-DET (VOC-style XML, grey steel-plate images) into a YOLO dataset.

    python -m data.scripts.gc10_det --src path/to/GC10-DET --out datasets/GC10-DET

The XML files (in the download's `lable/` folder) name classes `1_chongkong` ... `10_yaozhe`;
the English names are accepted too. Images are found by file name anywhere under --src (the
download keeps them in one folder per class). Split 8:2 as in the paper, stratified by class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data.scripts.common import ConversionSummary, class_lookup, converter_parser, convert_voc, run_converter

NAMES = ["punching_hole", "welding_line", "crescent_gap", "water_spot", "oil_spot",
         "silk_spot", "inclusion", "rolled_pit", "crease", "waist_folding"]
PINYIN = ["chongkong", "hanfeng", "yueyawan", "shuiban", "youban",
          "siban", "yiwu", "yahen", "zhehen", "yaozhe"]
# `1_chongkong` and the bare `chongkong` both name class 0, and so on
ALIASES = {**{f"{i + 1}_{p}": NAMES[i] for i, p in enumerate(PINYIN)}, **dict(zip(PINYIN, NAMES))}


def convert(src: Path, out: Path, *, seed: int = 0, split: tuple[float, ...] = (0.8, 0.2),
            exist_ok: bool = False) -> ConversionSummary:
    """Write out/images/<split>, out/labels/<split> and out/data.yaml; return counts and skipped items."""
    return convert_voc(Path(src), Path(out), NAMES, class_lookup(NAMES, ALIASES), seed=seed,
                       split=split, exist_ok=exist_ok)


def build_parser() -> argparse.ArgumentParser:
    """The converter's flags; parses nothing."""
    return converter_parser("Convert GC10-DET (VOC XML) to YOLO labels.", "datasets/GC10-DET")


def main(argv: list[str] | None = None) -> int:
    return run_converter(convert, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
