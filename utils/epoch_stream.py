"""One loader pass over many epochs, so that no epoch starts by waiting for its first batch.

A loader iterated once per epoch has its workers stop at each epoch's end; the next epoch waits
while they prepare its first batch (at 160 px with D3N's latents, 0.4 s). Here one iterator spans
the run: the batch sampler yields, pass after pass, each pass's seeded shuffle cut into batches,
every sample keyed (stream, index), and the workers run ahead across the boundary. The keys carry
the epoch, so the batches are exactly those of a loader restarted per epoch with the same stream
number, whichever worker prepares them.

The wait goes; time comes back only where cores sat idle during it. On 2 busy CPU cores the workers'
work is done either way: `python -m benchmarks.epoch_stream` there measured the first-batch wait 155 ms
-> 4 ms and the time per epoch 1.01x. A GPU machine, whose main process waits on the device, gains the
wait.

A pass is (stream, batches): the sampler's shuffle for `stream`, cut to its first `batches` batches
(None: all of it), so a caller that uses only part of a pass has nothing prepared beyond it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Sampler

Pass = tuple[int, "int | None"]  # (stream: the epoch, or an epoch's numbered pass; batches to take, None = all)


class PassBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (stream, index) keys over `passes`, each pass reshuffled by its stream number."""

    def __init__(self, sampler: Iterable[int], batch_size: int, passes: Iterable[Pass]):
        self.sampler, self.batch_size, self.passes = sampler, batch_size, passes

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for stream, batches in self.passes:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(stream)
            order = list(self.sampler)
            if batches is not None:
                order = order[:batches * self.batch_size]
            for start in range(0, len(order), self.batch_size):
                yield [(stream, i) for i in order[start:start + self.batch_size]]


def epoch_stream(loader: DataLoader, passes: Iterable[Pass]) -> Iterator[Any]:
    """The batches of `loader` (from `create_dataloader`) for `passes`, one worker pool for all of them."""
    spanning = DataLoader(loader.dataset, batch_sampler=PassBatchSampler(loader.sampler, loader.batch_size, passes),
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          worker_init_fn=loader.worker_init_fn, generator=loader.generator)
    return iter(spanning)


def epochs(start: int, end: int) -> Iterator[Pass]:
    """Every epoch in start..end-1, whole."""
    return ((epoch, None) for epoch in range(start, end))


def epoch_heads(start: int, end: int, per_epoch: int, per_pass: int, stride: int = 1000) -> Iterator[Pass]:
    """`per_epoch` batches an epoch from passes of `per_pass` batches (an unlabelled pool joined to each labelled
    batch): every epoch starts a fresh pass, numbered epoch * stride + k, and takes only the head it needs."""
    for epoch in range(start, end):
        need, k = per_epoch, 0
        while need > 0:
            take = min(need, per_pass)
            yield epoch * stride + k, take
            need, k = need - take, k + 1
