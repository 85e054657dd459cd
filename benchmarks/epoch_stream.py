"""Short epochs: a loader restarted per epoch against one pass that spans them (`utils/epoch_stream.py`).

    python -m benchmarks.epoch_stream [--images 128] [--epochs 6] [--imgsz 160] [--batch-size 16] [--workers 2]

Label-efficient runs train many short epochs (150 epochs of 8 batches at 10 % of NEU-DET's labels). A
loader iterated once per epoch, even with persistent workers, leaves the main process waiting for each
epoch's first batch; one stream keeps the workers ahead across the boundary. Both variants serve batches of the
same cost (synthetic images with D3N-size latents warped through mosaic) to the same work per batch — a
yolov5n forward and backward at the batch's size, as training does — alternating, twice each, on one
machine. Printed: wall seconds per epoch and the mean wait for an epoch's first batch (medians of the
two runs), and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.dataloader_throughput import LatentLikeDataset, ensure_images
from models.yolo import Model
from utils.dataloaders import create_dataloader
from utils.epoch_stream import epoch_stream, epochs
from utils.hyp import Hyp


def per_epoch_batches(loader, n_epochs: int):
    """Batches as a loader restarted each epoch serves them: (epoch start?, batch)."""
    for epoch in range(n_epochs):
        loader.sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            yield i == 0, batch


def streamed_batches(loader, n_epochs: int):
    for k, batch in enumerate(epoch_stream(loader, epochs(0, n_epochs))):
        yield k % len(loader) == 0, batch


def run(variant, loader, model: Model, n_epochs: int) -> tuple[float, float]:
    """(wall seconds per epoch, mean wait in seconds for an epoch's first batch)."""
    waits, t0 = [], time.perf_counter()
    batches = variant(loader, n_epochs)
    while True:
        t = time.perf_counter()
        item = next(batches, None)
        if item is None:
            break
        first, (imgs, *_) = item
        if first:
            waits.append(time.perf_counter() - t)
        model(imgs.float() / 255)[0].sum().backward()  # the training step's compute, at the batch's size
    return (time.perf_counter() - t0) / n_epochs, statistics.mean(waits[1:] or waits)  # epoch 0: worker start-up


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=128, help="synthetic images generated (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=160, help="image size in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (default: %(default)s)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    model = Model("yolov5n.yaml", nc=6).train()
    results: dict[str, list[tuple[float, float]]] = {"restarted": [], "stream": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = ensure_images(Path(tmp) / "synth", args.images)
        loader, _ = create_dataloader(files, args.imgsz, args.batch_size, 32, hyp=Hyp(), augment=True,
                                      workers=args.workers, shuffle=True, dataset_cls=LatentLikeDataset)
        for _ in range(2):
            results["restarted"].append(run(per_epoch_batches, loader, model, args.epochs))
            results["stream"].append(run(streamed_batches, loader, model, args.epochs))
    (old_epoch, old_wait), (new_epoch, new_wait) = (
        (statistics.median(e for e, _ in r), statistics.median(w for _, w in r)) for r in results.values())
    print(f"{args.images} images, batch {args.batch_size} ({len(loader)} batches an epoch), {args.imgsz} px, "
          f"{args.workers} workers, {args.epochs} epochs x 2 runs each, yolov5n forward + backward per batch")
    print(f"  loader restarted per epoch: {old_epoch:6.2f} s/epoch, first batch waited {old_wait * 1000:6.0f} ms")
    print(f"  one stream over the epochs: {new_epoch:6.2f} s/epoch, first batch waited {new_wait * 1000:6.0f} ms")
    print(f"  stream / restarted: {new_epoch / old_epoch:.2f}x the time per epoch")


if __name__ == "__main__":
    main()
