"""Images per second of the training dataloader: mosaic on, 256 px, batch 16, 2 workers.

    python -m benchmarks.dataloader_throughput [--images 160] [--epochs 3] [--workers 2]

Runs on a generated synthetic dataset (written to a temporary folder), first plain, then with
D3N-sized extras (three fp16 latent maps per image, 3 timesteps x 64 channels at 16², 32², 64²)
warped through every tile, to show what replaying the geometry costs. The first epoch (worker
start-up) is not timed.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch

from utils.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.epoch_stream import epoch_stream, epochs
from utils.hyp import Hyp

LATENT_SHAPES = {"p3": ((192, 64, 64), 8), "p4": ((192, 32, 32), 16), "p5": ((192, 16, 16), 32)}


class LatentLikeDataset(LoadImagesAndLabels):
    """fp16 maps shaped like the D3N repository's latents, copied from a bank in memory (as from a memmap)."""

    extra_strides = {name: stride for name, (_, stride) in LATENT_SHAPES.items()}

    def load_extras(self, index: int) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in _latent_bank()[index % 8].items()}


@functools.cache
def _latent_bank() -> list[dict[str, torch.Tensor]]:
    return [{name: torch.randn(shape, generator=torch.Generator().manual_seed(k)).half()
             for name, (shape, _) in LATENT_SHAPES.items()} for k in range(8)]


def ensure_images(root: Path, n: int) -> list[Path]:
    """Synthetic 200 px defect images (data.synthetic), or plain noise images if it is unavailable."""
    try:
        from data.synthetic import generate_dataset
        generate_dataset(root, seed=0, size=200, n_train=n, n_val=1)
    except ImportError:
        import cv2
        import numpy as np
        rng = np.random.default_rng(0)
        (root / "images" / "train").mkdir(parents=True)
        (root / "labels" / "train").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / "train" / f"{i}.png"), rng.integers(0, 255, (200, 200, 3), np.uint8))
            (root / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return sorted((root / "images" / "train").glob("*.png"))


def images_per_second(files: list[Path], dataset_cls: type, args: argparse.Namespace) -> float:
    loader, dataset = create_dataloader(files, args.imgsz, args.batch_size, 32, hyp=Hyp(), augment=True,
                                        workers=args.workers, shuffle=True, dataset_cls=dataset_cls)
    stream = epoch_stream(loader, epochs(0, args.epochs + 1))  # as training draws its epochs
    for _ in range(len(loader)):  # warm-up: worker start-up and first reads
        next(stream)
    seen, t0 = 0, time.perf_counter()
    for imgs, *_ in stream:
        seen += len(imgs)
    return seen / (time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=160, help="synthetic images generated (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="epochs, the first one untimed (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=256, help="image size in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (default: %(default)s)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = ensure_images(Path(tmp) / "synth", args.images)
        plain = images_per_second(files, LoadImagesAndLabels, args)
        latents = images_per_second(files, LatentLikeDataset, args)
    print(f"dataloader, mosaic on, {args.imgsz} px, batch {args.batch_size}, {args.workers} workers, "
          f"{args.images} images x {args.epochs} epochs")
    print(f"  plain:                 {plain:7.1f} images/s")
    print(f"  with D3N-size latents: {latents:7.1f} images/s ({latents / plain:.2f}x)")


if __name__ == "__main__":
    main()
