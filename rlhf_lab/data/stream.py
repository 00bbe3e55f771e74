"""Streaming (``data.streaming=true``): rows read, validated and tokenised as training needs them,
for data larger than the disk budget; no table is written.

Order: each epoch every source is read in a seeded order (``data.shuffle``: a buffer of
``data.shuffle_buffer`` rows shuffled as it fills) and, in a mixture, each next row's source is
drawn by weight from a seeded generator. Rows go through the tables' pipeline (``data/table.py``)
``CHUNK_ROWS`` at a time, a chunk's rows of every source tokenised together (an epoch's single
last row joins the chunk before: KTO pairs rows within what it tokenises); the features are cut
into global batches of batch_size x world_size, of which rank r takes every W-th feature (as
``RankSampler`` does), so that N processes train on exactly the batches of one. Every rank reads
the whole stream: all of them agree on where it ends (a rank that ran out first would leave the
others waiting). Validation rows (the head of each source) and held-out tasks: ``data/module.py``.

Exact resume: a position is the epoch, the rows drawn and read from each source before the chunk
that holds the next feature, and how many of that chunk's features are already in batches. Every
batch carries the position after it; the loader keeps the position of the last batch training
took (not of batches fetched ahead) and checkpoints it. A resumed run skips each source to its row
(read again, not tokenised), tokenises that one chunk again and drops the features already used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from rlhf_lab.data.sources import Source
from rlhf_lab.data.table import Pipeline, encode_entries
from rlhf_lab.errors import DataError

CHUNK_ROWS = 256  # rows drawn, then tokenised together; a resume tokenises at most this many again


@dataclass
class Position:
    epoch: int = 0
    draws: int = 0  # rows drawn this epoch before the current chunk
    rows: list[int] = field(default_factory=list)  # rows read from each source this epoch before the current chunk
    used: int = 0  # features of the current chunk already in batches
    counts: dict[str, int] = field(
        default_factory=lambda: dict(rows_read=0, dropped_invalid=0, dropped_too_long=0, truncated=0, held_out=0))


class RowReader:
    """One source's rows one at a time, read in batches."""

    def __init__(self, batches: Iterator[tuple[list[int], list[dict]]]):
        self.batches, self.pending = batches, iter(())

    def next(self) -> tuple[int, dict] | None:
        got = next(self.pending, None)
        if got is None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.pending = zip(*batch)
            got = next(self.pending)
        return got


class FeatureStream(torch.utils.data.IterableDataset):
    """This rank's batches, collated, each with ``batch["stream"]``: the position after it and the
    counts of what was read (rows, invalid rows dropped, rows too long, sequences truncated, rows
    of held-out tasks). ``skip``: each source's first rows, never trained on (the validation head);
    ``holdout``: tasks whose rows are read and left out."""

    def __init__(self, sources: list[Source], pipelines: list[Pipeline], weights: list[float], size: int | None, batch_size: int,
                 collate: Callable, seed: int, shuffle: bool, buffer: int, skip: list[int] | None = None,
                 holdout: frozenset[str] = frozenset()):
        self.sources, self.pipelines = sources, pipelines
        self.skip, self.holdout = skip or [0] * len(sources), holdout
        self.weights = np.asarray(weights, dtype=float) / sum(weights)
        self.size, self.batch_size, self.collate = size, batch_size, collate
        self.seed, self.shuffle, self.buffer = seed, shuffle, buffer
        self.rank, self.world_size = 0, 1
        self.position = Position(rows=[0] * len(sources))

    def _draws(self, epoch: int) -> Iterator[int]:
        """The source of each next row, in blocks of CHUNK_ROWS (so a resume can draw them again)."""
        rng = np.random.default_rng([self.seed, epoch])
        while True:
            yield from (rng.choice(len(self.sources), size=CHUNK_ROWS, p=self.weights) if len(self.sources) > 1 else [0] * CHUNK_ROWS)

    def _chunks(self, start: Position) -> Iterator[tuple[Position, list[dict], dict[str, int]]]:
        """(position at the chunk's start, its features in draw order, counts to its end), to the end of the epoch."""
        epoch = start.epoch
        order = (lambda s: (self.seed + s, epoch, self.buffer)) if self.shuffle else (lambda s: None)
        readers = [RowReader(src.batches(CHUNK_ROWS, start=start.rows[s], shuffle=order(s), skip=self.skip[s]))
                   for s, src in enumerate(self.sources)]
        draws = self._draws(epoch)
        for _ in range(start.draws):
            next(draws)
        ahead: list[tuple[int, tuple[int, dict] | None]] = []  # rows read to look past a chunk's end, not yet in a chunk

        def draw() -> tuple[int, tuple[int, dict] | None]:
            if ahead:
                return ahead.pop(0)
            s = next(draws)
            return s, readers[s].next()

        here = replace(start, used=0, rows=list(start.rows), counts=dict(start.counts))
        while self.size is None or here.draws < self.size:
            wanted = CHUNK_ROWS if self.size is None else min(CHUNK_ROWS, self.size - here.draws)
            picked: list[tuple[int, tuple[int, dict]]] = []
            while len(picked) < wanted and (got := draw())[1] is not None:
                picked.append(got)
            if len(picked) == wanted and (self.size is None or here.draws + wanted < self.size):
                picked += self._lone_tail(draw, ahead, None if self.size is None else self.size - here.draws - wanted)
            features, counts = self._tokenise(picked, here.counts)
            yield here, features, counts
            rows = [n + sum(s == i for s, _ in picked) for i, n in enumerate(here.rows)]
            here = Position(epoch, here.draws + len(picked), rows, 0, counts)
            if len(picked) < wanted:  # a source ran out: the epoch ends
                break
        self._end = here

    @staticmethod
    def _lone_tail(draw: Callable, ahead: list, left: int | None) -> list:
        """The next row, when it would be the epoch's last and so a chunk of one (``left``: rows the
        epoch still draws, None: until a source runs out); else nothing (rows peeked at go to ``ahead``).
        An ``encode`` that pairs rows (KTO's mismatched completions) needs two in a chunk, as a
        table's lone last batch joins the one before (``table.no_lone_tail``)."""
        first = draw()
        if first[1] is None:
            ahead.append(first)
            return []
        if left == 1:
            return [first]
        second = draw()
        if second[1] is None:
            ahead.append(second)
            return [first]
        ahead += [first, second]
        return []

    def _tokenise(self, picked: list[tuple[int, tuple[int, dict]]], counts: dict[str, int]) -> tuple[list[dict], dict[str, int]]:
        """A chunk's features in draw order and the counts to its end. Each source's rows are
        converted and validated by its pipeline, then all of them are tokenised together, so that an
        ``encode`` that pairs rows (KTO) never sees a source's single row of the chunk alone."""
        per_source: list[list[tuple[int, dict]]] = [[] for _ in self.sources]
        for s, got in picked:
            per_source[s].append(got)
        prepared = [iter(pipe.prepare(*zip(*rows)) if rows else ()) for pipe, rows in zip(self.pipelines, per_source)]
        rows = [next(prepared[s]) for s, _ in picked]
        kept = [(row, problem) for row, problem in rows if problem is not None or row["task"] not in self.holdout]
        entries = encode_entries(self.pipelines[0].encode, self.pipelines[0].encoder, kept)
        features, counts = [], dict(counts)
        counts["rows_read"] += len(rows)
        counts["held_out"] = counts.get("held_out", 0) + len(rows) - len(kept)
        for entry in entries:
            if entry.note and entry.note.startswith("invalid: "):
                counts["dropped_invalid"] += 1
            counts["dropped_too_long"] += entry.note == "dropped"
            counts["truncated"] += sum(bool(getattr(seq, "truncated", False)) for f in entry.features for seq in f["sequences"])
            features += entry.features
        return features, counts

    def _features(self, start: Position) -> Iterator[tuple[Position, dict, dict[str, int]]]:
        """(this feature's position, feature, counts to the end of its chunk), from ``start`` to the end of the epoch."""
        first = True
        for chunk, features, counts in self._chunks(start):
            skip, first = (start.used if first else 0), False
            for j in range(skip, len(features)):
                yield replace(chunk, used=j), features[j], counts

    def __iter__(self) -> Iterator[dict]:
        start, width = self.position, self.batch_size * self.world_size
        features = self._features(start)
        ahead = next(features, None)
        if ahead is None and start.draws == 0:
            read = self._end.counts["rows_read"] - start.counts["rows_read"]
            raise DataError(f"the stream has no training rows: each of the {read} row(s) read in an epoch was invalid, too long or of a "
                            f"held-out task (data.holdout_tasks), besides the first {sum(self.skip)} taken for validation (data.val_rows).")
        while ahead is not None:
            batch = []
            while ahead is not None and len(batch) < width:
                _, feature, counts = ahead
                batch.append(feature)
                ahead = next(features, None)
            after = ahead[0] if ahead is not None else Position(start.epoch + 1, rows=[0] * len(self.sources), counts=self._end.counts)
            batch += batch[: -len(batch) % self.world_size]  # every rank the same number of rows, as RankSampler pads
            out = self.collate(batch[self.rank :: self.world_size])
            out["stream"] = {"position": asdict(after), "counts": counts}  # counts of the rows read so far
            yield out


def _as_is(batch: dict) -> dict:
    return batch  # the stream collates its own batches


class StreamLoader:
    """Iterates a FeatureStream from the position training last took; that position is its state
    in checkpoints (``state_dict``), set by the DataModule from each batch it hands to training.
    ``num_workers=1`` reads and tokenises in a worker process beside training."""

    def __init__(self, stream: FeatureStream, num_workers: int):
        self.stream = stream
        self.num_workers = num_workers
        self.taken = asdict(stream.position)

    def __iter__(self):
        self.stream.position = Position(**self.taken)
        return iter(DataLoader(self.stream, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers))

    def state_dict(self) -> dict:
        return {"position": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = state["position"]
