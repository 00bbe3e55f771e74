"""Which rows each process trains on, in which order: one global order, shared by every rank.

The global order is sequential, a seeded shuffle, or length-grouped (rows of similar length
batched together: less padding); it changes with the epoch and the seed only. Rank r of W takes
every W-th index from r, so the k-th batches of all ranks together are exactly the k-th batch of
one process with W times the batch size: 1 process, DDP and FSDP see the same global batches.
Orders are numpy arrays (8 bytes a row), never Python lists: a million rows cost 8 MB.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Sampler


def length_grouped_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows shuffled, cut into mega-batches of 50 batches, sorted by length inside each (longest
    first), and the resulting batches shuffled: batches of similar lengths in a random order."""
    order = rng.permutation(len(lengths))
    position = np.arange(len(order))
    order = order[np.lexsort((-lengths[order], position // (batch_size * 50)))]  # by mega-batch, then longest first
    batch = position // batch_size
    place = rng.permutation(batch[-1] + 1) if len(order) else batch  # where each batch goes
    return order[np.argsort(place[batch], kind="stable")]


class RankSampler(Sampler[int]):
    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        global_batch_size: int,
        *,
        shuffle: bool,
        group_by_length: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths)
        self.global_batch_size = global_batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # rows of this rank's share already consumed this epoch (a resumed run)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def global_order(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.group_by_length:
            return length_grouped_order(self.lengths, self.global_batch_size, rng)
        return rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        order = np.concatenate([order, order[: len(self) * self.world_size - len(order)]])  # every rank the same number of rows
        return (int(i) for i in order[self.rank :: self.world_size][self.start :])


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch goes into Lightning checkpoints (``state_dict`` /
    ``load_state_dict``), so a resumed run continues with the next batch, not the epoch's start.

    ``batches_done`` counts the batches of epoch ``epoch`` handed out. Lightning stops taking
    batches once it has the epoch's length, so the iterator never runs to its end: the count
    starts again when Lightning moves the sampler to another epoch, or after a whole epoch (it
    used to wait for the iterator's end, and every other epoch came out empty; a run resumed at an
    epoch's last batch then drew other data than the uninterrupted run)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch, self.batches_done = 0, 0

    def __iter__(self):
        if self.sampler.epoch != self.epoch or self.batches_done >= len(self):
            self.epoch, self.batches_done = self.sampler.epoch, 0
        self.sampler.start = self.batches_done * self.batch_size
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch = self.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
