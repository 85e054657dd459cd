"""How the trainer joins unlabelled images to an epoch's labelled batches: which ones, and none prepared for nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
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


def _trainer(tmp_path: Path, epochs: int):
    """The trainer's batch plumbing alone: 3 labelled batches an epoch, unlabelled passes of 2 batches."""
    train, _ = create_dataloader(_images(tmp_path / "train", 6, True), 64, 2, 32, augment=False, workers=2,
                                 shuffle=True, seed=0)
    unlabeled, ds = create_dataloader(_images(tmp_path / "pool", 4, False), 64, 2, 32, augment=False, workers=2,
                                      shuffle=True, seed=1, dataset_cls=Counting, dataset_kwargs={"labelled": False})
    trainer = Trainer.__new__(Trainer)  # no model, no data YAML: only what _batches reads
    trainer.train_loader, trainer.unlabeled_loader, trainer.nb = train, unlabeled, len(train)
    trainer.opt, trainer._stream_epoch = SimpleNamespace(epochs=epochs), None
    return trainer, ds


def _drawn(batches) -> list[str]:
    return [Path(p).stem for _, _, paths, _, extras in batches for p, u in zip(paths, extras[UNLABELED]) if u]


def test_each_epoch_joins_the_head_of_fresh_unlabelled_passes_and_the_run_prepares_no_more(tmp_path):
    trainer, ds = _trainer(tmp_path, epochs=3)
    for epoch in range(3):
        expected = _order(4, 1, epoch * 1000) + _order(4, 1, epoch * 1000 + 1)[:2]  # a whole pass, then a head
        assert _drawn(trainer._batches(epoch)) == [str(i) for i in expected]
    assert int(ds.calls.sum()) == 3 * 6  # each epoch's second pass prepared only the batch the epoch needed


def test_a_resumed_run_draws_the_batches_of_the_uninterrupted_one(tmp_path):
    whole, _ = _trainer(tmp_path / "a", epochs=4)
    straight = [list(whole._batches(epoch)) for epoch in range(4)]
    resumed, _ = _trainer(tmp_path / "b", epochs=4)
    for epoch in (2, 3):  # --resume at epoch 2 opens the streams there
        for got, want in zip(resumed._batches(epoch), straight[epoch], strict=True):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            assert [Path(p).name for p in got[2]] == [Path(p).name for p in want[2]]


def test_an_epoch_left_unfinished_reopens_the_streams(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=3)
    next(trainer._batches(0))  # a consumer that stopped after one batch (an error, an interrupt)
    assert _drawn(trainer._batches(1)) == [str(i) for i in _order(4, 1, 1000) + _order(4, 1, 1001)[:2]]
