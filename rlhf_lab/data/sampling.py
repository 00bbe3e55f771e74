"""Which rows each process trains on, in which order: one global order, shared by every rank.

The global order is sequential, a seeded shuffle, or length-grouped (rows of similar length
batched together: less padding); it changes with the epoch and the seed only. Rank r of W takes
every W-th index from r, so the k-th batches of all ranks together are exactly the k-th batch of
one process with W times the batch size: 1 process, DDP and FSDP see the same global batches.
"""

from __future__ import annotations

import math
import random
from typing import Iterator

from torch.utils.data import DataLoader, Sampler


def length_grouped_order(lengths: list[int], batch_size: int, rng: random.Random) -> list[int]:
    """Rows shuffled, cut into mega-batches of 50 batches, sorted by length inside each, and the
    resulting batches shuffled: batches of similar lengths in a random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


class RankSampler(Sampler[int]):
    def __init__(
        self,
        lengths: list[int],
        global_batch_size: int,
        *,
        shuffle: bool,
        group_by_length: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = lengths
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

    def global_order(self) -> list[int]:
        rng = random.Random(self.seed + self.epoch)
        if self.group_by_length:
            return length_grouped_order(self.lengths, self.global_batch_size, rng)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        return order

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        order += order[: len(self) * self.world_size - len(order)]  # every rank the same number of rows
        return iter(order[self.rank :: self.world_size][self.start :])


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch goes into Lightning checkpoints (``state_dict`` /
    ``load_state_dict``), so a resumed run continues with the next batch, not the epoch's start."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = 0

    def __iter__(self):
        self.sampler.start = self.batches_done * self.batch_size
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch
        self.batches_done = 0

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
