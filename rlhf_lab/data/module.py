"""The DataModule: every source tokenised once into a cached, memory-mapped table (``data/table.py``)
or streamed (``data/stream.py``); mixtures drawn and splits made over feature indices; batches read
by index. No step holds the rows, or a Python object per row, in memory."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import DataLoader

from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.data.collate import Collator, MicroBatches
from rlhf_lab.data.sampling import RankSampler, ResumableLoader
from rlhf_lab.data.sources import Source, open_source
from rlhf_lab.data.stream import FeatureStream, StreamLoader
from rlhf_lab.data.table import (BATCH_ROWS, SCHEMA, FeatureSet, Pipeline, SourceTable, Table, cache_root, column, no_lone_tail, read_notes,
                                 record_batch, table_key, tokenised)
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def mix(per_source: list[np.ndarray], weights: list[float], size: int | None, seed: int) -> np.ndarray:
    """Draw ``size`` features from the sources in proportion to their weights (with replacement
    only where a source is asked for more than it has); the result is shuffled."""
    size = size or sum(len(ix) for ix in per_source)
    rng = np.random.default_rng(seed)
    parts = []
    for ix, weight in zip(per_source, weights):
        n = round(size * weight / sum(weights))
        parts.append(rng.choice(ix, n, replace=False) if n <= len(ix) else np.concatenate([ix, rng.choice(ix, n - len(ix))]))
    out = np.concatenate(parts)
    rng.shuffle(out)
    return out


def head_rows(cfg: DataConfig) -> int | None:
    """The rows a stream takes from its head for validation: ``val_rows``, or ``val_fraction`` of
    ``mixture_size``; None when neither sizes it (a stream's length is not known before it ends)."""
    if cfg.val_rows is not None:
        return cfg.val_rows
    if cfg.val_fraction <= 0:
        return 0
    return max(1, round(cfg.val_fraction * cfg.mixture_size)) if cfg.mixture_size else None


def split(table: Table, indices: np.ndarray, offsets: np.ndarray, cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions. Held-out tasks go wholly to validation; otherwise a seeded
    ``val_fraction`` of the rows (or ``val_rows`` rows) does, each with all its features (a
    ranking's pairs stay together)."""
    if cfg.holdout_tasks:
        tasks = column(table, "task").take(pa.array(indices))
        unknown = set(cfg.holdout_tasks) - set(pc.unique(tasks).to_pylist())
        if unknown:
            raise DataError(f"data.holdout_tasks names task(s) not in the data: {sorted(unknown)}.")
        held = pc.is_in(tasks, value_set=pa.array(list(cfg.holdout_tasks))).to_numpy(zero_copy_only=False)
        return indices[~held], indices[held]
    if cfg.val_fraction <= 0 if cfg.val_rows is None else cfg.val_rows == 0:
        return indices, indices[:0]
    source = np.searchsorted(offsets, indices, side="right") - 1
    groups = (source << 40) | column(table, "row").to_numpy()[indices]
    unique, inverse = np.unique(groups, return_inverse=True)
    is_val = np.zeros(len(unique), dtype=bool)
    n_val = cfg.val_rows if cfg.val_rows is not None else max(1, int(len(unique) * cfg.val_fraction))
    is_val[np.random.default_rng(seed).permutation(len(unique))[:n_val]] = True
    return indices[~is_val[inverse]], indices[is_val[inverse]]


class DataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: DataConfig,
        fmt: str,
        encode: Callable[[Encoder, list[dict]], list[dict]],
        encoder: Encoder,
        loaders: dict[str, Callable],
        seed: int,
    ):
        super().__init__()
        started = time.perf_counter()
        self.cfg, self.seed, self.fmt, self.encoder, self.encode, self.loaders = cfg, seed, fmt, encoder, encode, loaders
        self.collate = Collator(encoder.tokenizer.pad_token_id, bool(cfg.padding_free), cfg.pack_width)
        self.train_collate = MicroBatches(self.collate)  # training batches; its ``parts`` are set by the objective (``Objective.setup``)
        sources = dict(cfg.sources) if cfg.sources else {"data": cfg}
        for name, src in sources.items():
            if src.weight < 0:
                raise DataError(f"data.sources.{name}.weight must be >= 0, got {src.weight}.")
        self.stats: dict = {"dropped_invalid": 0, "truncated": 0, "dropped_too_long": 0}
        self.stream: FeatureStream | None = None
        self.train_loader = None
        if cfg.streaming:
            self._stream(sources)
        else:
            self._tables(sources)
        self.stats["prepare_s"] = round(time.perf_counter() - started, 3)
        self.stats["padding_free"] = self.collate.padding_free

    def pack(self, blocker: str | None) -> bool:
        """Padding-free batches unless the models cannot read them (``blocker``, from
        ``Objective.packing_blocker``): then padded ones, or an error when ``data.padding_free=true``
        asked for packing outright. Returns whether they are padding-free."""
        if blocker is not None and self.cfg.padding_free:
            raise ConfigError(f"data.padding_free=true: {blocker} (its tokens would attend across sequences); "
                              "set data.padding_free=false, or leave it unset to pad for this model.")
        if blocker is not None:
            log.warning("padding-free batches off: %s; batches are padded", blocker)
        self.collate.padding_free = self.stats["padding_free"] = blocker is None
        return blocker is None

    # --- tables ------------------------------------------------------------------------------------

    def _table(self, name: str, src: SourceConfig) -> SourceTable:
        source = open_source(name, src, self.fmt, self.loaders, self.cfg.cache_dir)
        pipeline = Pipeline(name, src, source.where, self.fmt, self.encoder, self.encode, self.cfg.invalid_rows == "error")
        key = table_key(source, self.fmt, self.encoder, self.encode)
        return tokenised(source, pipeline, key, cache_root(self.cfg.table_cache_dir), self.cfg.num_proc)

    def _tables(self, sources: dict[str, SourceConfig]) -> None:
        cfg = self.cfg
        tables = [self._table(name, src) for name, src in sources.items()]
        if cfg.val_path:
            tables.append(self._table("val", SourceConfig(path=cfg.val_path)))
        notes = [read_notes(t, self.fmt, cfg.invalid_rows) for t in tables]
        whole = Table.concat([t.dataset for t in tables])
        offsets = np.cumsum([0] + [len(t.dataset) for t in tables])
        per_source = [offsets[i] + n.features for i, n in enumerate(notes)]
        train = per_source[0] if len(sources) == 1 else mix(per_source[: len(sources)], [s.weight for s in sources.values()], cfg.mixture_size, self.seed)
        train, val = split(whole, train, offsets, cfg, self.seed)
        if cfg.val_path:
            val = np.concatenate([val, per_source[-1]])
        key = hashlib.sha256("|".join(t.key for t in tables).encode()).hexdigest()
        self.train_features, self.val_features = FeatureSet(whole, train, key), FeatureSet(whole, val, key)
        dropped = sum(n.dropped for n in notes)
        affected = [row for n in notes for row in n.affected][:5]
        if not len(train):
            if dropped and not any(len(n.features) for n in notes[: len(sources)]):
                raise DataError(
                    f"all {dropped} training rows dropped: their prompts alone fill data.max_length={self.encoder.max_length} "
                    f"tokens (first rows: {affected}); raise data.max_length or shorten the prompts."
                )
            raise DataError("no training rows left after validation, hold-out and truncation.")
        truncated = sum(n.truncated for n in notes)
        if truncated or dropped:
            log.warning("%d sequence(s) truncated to data.max_length=%d and %d row(s) dropped because the prompt alone fills it "
                        "(first rows: %s).", truncated, self.encoder.max_length, dropped, affected)
        self.stats.update(
            dropped_invalid=sum(n.invalid for n in notes),
            train_rows=len(train),
            val_rows=len(val),
            truncated=truncated,
            dropped_too_long=dropped,
            tables_cached=sum(t.hit for t in tables),
        )

    # --- streaming ---------------------------------------------------------------------------------

    def _stream(self, sources: dict[str, SourceConfig]) -> None:
        """A stream for training; validation from its head: each source's first rows (``head_rows``,
        split by weight, read in file order whatever ``data.shuffle``), tokenised in memory, which
        training then skips, as ``take`` / ``skip`` over an HF IterableDataset would. With
        ``holdout_tasks`` the rows of those tasks are left out of training as they stream, and
        validation is the held-out rows among the head (which is not skipped). ``val_path``'s rows
        validate too."""
        cfg = self.cfg
        if cfg.num_workers > 1:
            raise ConfigError(f"data.streaming reads one stream in order: data.num_workers must be 0 or 1, got {cfg.num_workers}.")
        if cfg.group_by_length:
            raise ConfigError("data.group_by_length sorts a table's rows by length before batching, which a stream (data.streaming=true) "
                              "cannot: it batches rows as it reads them; set data.group_by_length=false.")
        opened = [open_source(name, src, self.fmt, self.loaders, cfg.cache_dir) for name, src in sources.items()]
        pipelines = [Pipeline(name, src, s.where, self.fmt, self.encoder, self.encode, cfg.invalid_rows == "error")
                     for (name, src), s in zip(sources.items(), opened)]
        weights = [s.weight for s in sources.values()]
        total = head_rows(cfg)
        if total is None:
            if cfg.holdout_tasks:
                raise ConfigError("data.holdout_tasks with data.streaming=true validates on the held-out rows among the stream's "
                                  "first data.val_rows rows: set data.val_rows=N (0: leave the tasks out of training, no validation).")
            log.info("data.streaming: a stream's length is unknown, so data.val_fraction sizes no validation set; "
                     "data.val_rows=N validates on the first N rows (never trained on).")
            total = 0
        heads = [round(total * w / sum(weights)) for w in weights]
        parts = [self._head(source, pipeline, n) for source, pipeline, n in zip(opened, pipelines, heads) if n]
        from_head = len(parts)
        if cfg.val_path:
            table = self._table("val", SourceConfig(path=cfg.val_path))
            parts.append((table.dataset, read_notes(table, self.fmt, cfg.invalid_rows).features))
        holdout = frozenset(cfg.holdout_tasks)
        self.stream = FeatureStream(opened, pipelines, weights, cfg.mixture_size, cfg.batch_size, self.train_collate, self.seed, cfg.shuffle,
                                    cfg.shuffle_buffer, skip=None if holdout else heads, holdout=holdout)
        self.train_features = None
        self.val_features = []
        if parts:
            whole = Table.concat([table for table, _ in parts])
            offsets = np.cumsum([0] + [len(table) for table, _ in parts])
            val = [offsets[i] + features for i, (_, features) in enumerate(parts)]
            if holdout and from_head:  # the head's rows of held-out tasks (data.val_path's rows all validate, as with tables)
                head = np.concatenate(val[:from_head])
                tasks = column(whole, "task").take(pa.array(head))
                unknown = holdout - set(pc.unique(tasks).to_pylist())
                if unknown:
                    raise DataError(f"data.holdout_tasks names task(s) not in the stream's first {total} rows, where its validation "
                                    f"rows are taken: {sorted(unknown)}; check the names, or raise data.val_rows.")
                held = pc.is_in(tasks, value_set=pa.array(sorted(holdout))).to_numpy(zero_copy_only=False)
                val = [head[held], *val[from_head:]]
            self.val_features = FeatureSet(whole, np.concatenate(val), "stream head")
        self.stats["val_rows"] = len(self.val_features)

    def _head(self, source: Source, pipeline: Pipeline, n: int) -> tuple[Table, np.ndarray]:
        """The source's first ``n`` rows as a tokenised table in memory (not cached: a cache key
        would read the whole source) and the positions of its features."""
        batches = no_lone_tail(source.batches(BATCH_ROWS, head=n))
        table = Table(data=pa.Table.from_batches([record_batch(pipeline(*batch)) for batch in batches], schema=SCHEMA))
        return table, read_notes(SourceTable(source, table, "", False), self.fmt, self.cfg.invalid_rows).features

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The stream's position after the batch training is about to take: what a checkpoint keeps."""
        stream = batch.pop("stream", None) if isinstance(batch, dict) else None
        if stream is not None:
            self.train_loader.taken = stream["position"]
            self.stats.update(stream["counts"])
        return batch

    # --- loaders -----------------------------------------------------------------------------------

    def _loader(self, features: FeatureSet, batch_size: int, train: bool) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = RankSampler(
            features.lengths(),
            batch_size * world,
            shuffle=train and self.cfg.shuffle,
            group_by_length=train and self.cfg.group_by_length,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        loader_cls = ResumableLoader if train else DataLoader
        collate = self.train_collate if train else self.collate
        return loader_cls(features, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers)

    def train_dataloader(self):
        if self.stream is not None:
            self.stream.rank, self.stream.world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
            self.train_loader = StreamLoader(self.stream, self.cfg.num_workers)
        else:
            self.train_loader = self._loader(self.train_features, self.cfg.batch_size, train=True)
        return self.train_loader

    def val_dataloader(self):
        if not len(self.val_features):
            return []
        return self._loader(self.val_features, self.cfg.eval_batch_size or self.cfg.batch_size, train=False)
