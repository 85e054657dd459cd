"""How the trainer joins unlabelled images to an epoch's labelled batches: which ones, and none prepared for nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
from torch.utils.data import DistributedSampler

from engine.trainer import Trainer
from tests.utils.counting import CountsSamples
from utils.dataloaders import UNLABELED, LoadImagesAndLabels, create_dataloader


class Counting(CountsSamples, LoadImagesAndLabels):
    pass


def _images(folder: Path, n: int, labelled: bool) -> list[Path]:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    files = []
    for i in range(n):
        path = folder / "images" / f"{i}.png"
        cv2.imwrite(str(path), np.full((64, 64, 3), 20 * i, np.uint8))
        if labelled:
            (folder / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
        files.append(path)
    return files


def _order(n: int, seed: int, epoch: int) -> list[int]:
    sampler = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_joins_the_head_of_fresh_unlabelled_passes_and_prepares_no_more(tmp_path):
    train, _ = create_dataloader(_images(tmp_path / "train", 6, True), 64, 2, 32, augment=False, workers=2,
                                 shuffle=True, seed=0)  # 3 batches an epoch
    unlabeled, ds = create_dataloader(_images(tmp_path / "pool", 4, False), 64, 2, 32, augment=False, workers=2,
                                      shuffle=True, seed=1, dataset_cls=Counting, dataset_kwargs={"labelled": False})
    trainer = SimpleNamespace(train_loader=train, unlabeled_loader=unlabeled)  # a pass of 2 batches: 1 1/2 passes
    for epoch in (0, 5):
        ds.calls.zero_()
        batches = list(Trainer._batches(trainer, epoch))
        drawn = [Path(p).stem for _, _, paths, _, extras in batches for p, u in zip(paths, extras[UNLABELED]) if u]
        expected = _order(4, 1, epoch * 1000) + _order(4, 1, epoch * 1000 + 1)[:2]  # a whole pass, then the head of the next
        assert drawn == [str(i) for i in expected]
        assert int(ds.calls.sum()) == 6  # the second pass prepared only the batch the epoch still needed
