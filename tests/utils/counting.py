"""A dataset mixin that counts the samples prepared, in whichever worker process prepared them."""

from __future__ import annotations

import torch


class CountsSamples:
    """`calls[i]`: how often sample i was prepared (a shared tensor, one slot per index, so workers do not race)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = torch.zeros(len(self.im_files), dtype=torch.int64).share_memory_()

    def __getitem__(self, index):
        self.calls[index[1] if isinstance(index, tuple) else index] += 1  # a (stream, index) key or an index
        return super().__getitem__(index)
