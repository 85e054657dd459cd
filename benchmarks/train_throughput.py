"""Training throughput (images/s) of yolov5n at 256 px, batch 16, on the synthetic data, after warm-up.

    python -m benchmarks.train_throughput [--imgsz 256] [--batch-size 16] [--steps 30] [--workers 2] [--reference]

Times the Trainer's own step (forward, loss, backward, optimizer with accumulation, EMA) on batches
from the real training dataloader (mosaic on), and prints the dataloader's throughput alone beside
it, so a slow step can be told apart from a slow loader. Target on the 2-core reference machine:
>= 43 images/s, what ultralytics/yolov5's train.py reaches there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.reference_yolov5 import INSTALL_HINT, reference_model, reference_train_step
from engine.trainer import Trainer, TrainOptions

TARGET_IMAGES_S = 43.0


def _make_data(root: Path) -> Path:
    from data.synthetic import CLASS_NAMES, generate_dataset

    generate_dataset(root, seed=0, size=200, n_train=160, n_val=16)
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def loader_throughput(trainer: Trainer, batches: int) -> float:
    it = iter(trainer.train_loader)
    next(it)  # worker start-up is not timed
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            imgs = next(it)[0]
        except StopIteration:
            it = iter(trainer.train_loader)
            imgs = next(it)[0]
        n += imgs.shape[0]
    return n / (time.perf_counter() - t0)


def _cycle(loader):
    while True:
        yield from loader


def _step(trainer: Trainer, i: int, imgs, targets, extras) -> int:
    x = imgs.float() / 255
    loss, _ = trainer.task.loss(trainer.task.forward(trainer.model, x, extras), targets, x, extras)
    loss.backward()
    if i % trainer.accumulate == 0:
        trainer._optimizer_step()
    return x.shape[0]


def step_throughput(trainer: Trainer, steps: int, warmup: int = 5, from_loader: bool = True) -> float:
    """Images/s of training steps, fed by the live dataloader (end to end) or by cached batches."""
    trainer.model.train()
    source = _cycle(trainer.train_loader)
    cached = [next(source)[:2] + (next(source)[4],) for _ in range(4)] if not from_loader else None
    for i in range(warmup + steps):
        if i == warmup:
            t0, n = time.perf_counter(), 0
        imgs, targets, *_, extras = next(source) if from_loader else (*cached[i % 4][:2], None, None, cached[i % 4][2])
        images = _step(trainer, i, imgs, targets, extras)
        n = n + images if i >= warmup else 0
    return n / (time.perf_counter() - t0)


def reference_throughput(trainer: Trainer, cfg: str, steps: int, warmup: int = 5) -> float | None:
    """Images/s of ultralytics/yolov5's own train step (model, loss, SGD, EMA) on the same cached batches."""
    model = reference_model(cfg, nc=trainer.model.detect.nc)
    if model is None:
        print(INSTALL_HINT)
        return None
    source = _cycle(trainer.train_loader)
    cached = [next(source)[:2] for _ in range(4)]
    step = reference_train_step(model, trainer.opt.imgsz, trainer.model.detect.nc, trainer.accumulate)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        imgs, targets = cached[i % 4]
        step(imgs.float() / 255, targets, i)
    return steps * cached[0][0].shape[0] / (time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="yolov5n.yaml", help="model YAML trained (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=256, help="image size in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (default: %(default)s)")
    p.add_argument("--reference", action="store_true",
                   help="also time ultralytics/yolov5's train step on the same batches (benchmarks/reference_yolov5.py)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = _make_data(Path(tmp) / "synth")
        opt = TrainOptions(cfg=args.cfg, data=str(data), imgsz=args.imgsz, batch_size=args.batch_size, epochs=1,
                           workers=args.workers, project=tmp, name="bench", noplots=True, noautoanchor=True, quiet=True)
        trainer = Trainer(opt)
        trainer.setup()
        loader = loader_throughput(trainer, 3 * args.steps // 2)
        compute = step_throughput(trainer, args.steps, from_loader=False)
        end_to_end = step_throughput(trainer, args.steps)
        reference = reference_throughput(trainer, args.cfg, args.steps) if args.reference else None
    print(f"{args.cfg} {args.imgsz}px batch {args.batch_size}, {torch.get_num_threads()} threads:")
    print(f"  dataloader alone : {loader:7.1f} images/s ({args.workers} workers, mosaic on)")
    print(f"  training step    : {compute:7.1f} images/s (forward + loss + backward + optimizer/EMA, cached batches)")
    print(f"  training, end to end: {end_to_end:7.1f} images/s (the same steps fed by the live dataloader)")
    if reference is not None:
        print(f"  ultralytics/yolov5 step: {reference:7.1f} images/s (its model, loss, SGD, EMA; cached batches) -> "
              f"ours is {compute / reference:.2f}x")
    print(f"  target >= {TARGET_IMAGES_S:.0f} images/s end to end (ultralytics/yolov5's train.py on the FACTS.md "
          f"machine): {'met' if end_to_end >= TARGET_IMAGES_S else 'NOT met'}")


if __name__ == "__main__":
    main()
