"""Write a pool of unlabelled images a data YAML may use: its val/test copies dropped, the count reported.

    python -m utils.unlabeled_pool --data datasets/NEU-DET-712/data.yaml \
        --pool ../shared/datasets/NEU-Seg/images --out datasets/NEU-DET-712/unlabeled-neu-seg.txt

The guard is utils.unlabeled's (exact copies by SHA-256, near copies by a 16-px thumbnail's cosine
>= 0.998); `--drop-train-copies` also drops copies of train images. The list holds absolute paths, one per line, so `unlabeled: unlabeled-neu-seg.txt` in the
data YAML names it; a JSON report beside it lists every dropped image and the held-out image it copies.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from utils.cli import exit_on_user_error
from utils.data_config import list_images, load_data_config
from utils.files import atomic_write_text
from utils.unlabeled import HELD_OUT, cache_path, find_leaks

LOGGER = logging.getLogger("utils.unlabeled_pool")


def write_pool(data: str | Path, pool: list[str], out: Path, drop_train_copies: bool = False) -> dict:
    """Keep every pool image that copies no val/test image of `data` (nor, if asked, a train image); write the
    list and its report."""
    cfg = load_data_config(data, autogenerate=False)
    images = list_images(pool)
    if not images:
        raise ValueError(f"{', '.join(pool)}: no images found")
    splits = (*HELD_OUT, "train") if drop_train_copies else HELD_OUT
    leaks = find_leaks(images, {s: cfg.splits[s] for s in splits if s in cfg.splits}, cache_path(cfg))
    dropped = {leak.unlabeled for leak in leaks}
    kept = [p.resolve() for p in images if p not in dropped]
    atomic_write_text(out, "".join(f"{p}\n" for p in kept))
    report = {"data": str(cfg.yaml_path), "pool": pool, "images": len(images), "kept": len(kept),
              "dropped": [{"image": str(k.unlabeled), "copies": str(k.held_out), "split": k.split, "how": k.how}
                          for k in leaks]}
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=1))
    LOGGER.info("%s: %d of %d images kept, %d dropped as copies of %s images (report: %s)", out, len(kept),
                len(images), len(leaks), "/".join(splits), out.with_suffix(".json"))
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, parsing nothing (the help and README tests read them)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data YAML whose val/test images the pool must not copy")
    ap.add_argument("--pool", nargs="+", required=True, help="folders, globs or .txt lists of unlabelled images")
    ap.add_argument("--out", type=Path, required=True, help="the .txt list to write (a .json report goes beside it)")
    ap.add_argument("--drop-train-copies", action="store_true",
                    help="also drop copies of train images (allowed, but they add no new picture; default: keep)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return exit_on_user_error(lambda: write_pool(args.data, args.pool, args.out, args.drop_train_copies))


if __name__ == "__main__":
    main()
