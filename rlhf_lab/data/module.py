"""The DataModule: rows loaded and validated once, split, tokenised once, batched."""

from __future__ import annotations

import logging
import random
from typing import Callable

import lightning as L
from torch.utils.data import DataLoader

from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.data.collate import Collator
from rlhf_lab.data.sampling import RankSampler, ResumableLoader
from rlhf_lab.data.sources import load_rows, load_source, validate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def split_rows(rows: list[dict], cfg: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out tasks go wholly to validation; otherwise a seeded ``val_fraction`` of rows does."""
    if cfg.holdout_tasks:
        held = set(cfg.holdout_tasks)
        unknown = held - {r["task"] for r in rows}
        if unknown:
            raise DataError(f"data.holdout_tasks names task(s) not in the data: {sorted(unknown)}.")
        return [r for r in rows if r["task"] not in held], [r for r in rows if r["task"] in held]
    if cfg.val_fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(rows) * cfg.val_fraction))
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val_idx], [rows[i] for i in sorted(val_idx)]


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
        self.cfg = cfg
        self.seed = seed
        rows, self.stats = load_rows(cfg, fmt, loaders, seed, chat=encoder.use_chat)
        train_rows, val_rows = split_rows(rows, cfg, seed)
        if cfg.val_path:
            extra, _ = load_source("val", SourceConfig(path=cfg.val_path), fmt, loaders, cfg.cache_dir, chat=encoder.use_chat)
            val_rows += validate(extra, fmt, cfg.val_path, cfg.invalid_rows)[0]
        self.train_rows, self.val_rows = train_rows, val_rows
        self.train_features = encode(encoder, train_rows)
        self.val_features = encode(encoder, val_rows) if val_rows else []
        if not self.train_features:
            if train_rows and encoder.truncation.dropped >= len(train_rows):
                raise DataError(
                    f"all {len(train_rows)} training rows dropped: their prompts alone fill data.max_length={encoder.max_length} "
                    f"tokens (first rows: {encoder.truncation.rows}); raise data.max_length or shorten the prompts."
                )
            raise DataError("no training rows left after validation, hold-out and truncation.")
        if note := encoder.report():
            log.warning(note)
        self.stats.update(
            train_rows=len(self.train_features),
            val_rows=len(self.val_features),
            truncated=encoder.truncation.truncated,
            dropped_too_long=encoder.truncation.dropped,
        )
        self.collate = Collator(encoder.tokenizer.pad_token_id, bool(cfg.padding_free), cfg.pack_width)
        self.stats["padding_free"] = self.collate.padding_free

    def pack(self, blocker: str | None) -> None:
        """Padding-free batches unless the models cannot read them (``blocker``, from
        ``Objective.packing_blocker``): then padded ones, or an error when ``data.padding_free=true``
        asked for packing outright."""
        if blocker is not None and self.cfg.padding_free:
            raise ConfigError(f"data.padding_free=true: {blocker} (its tokens would attend across sequences); "
                              "set data.padding_free=false, or leave it unset to pad for this model.")
        if blocker is not None:
            log.warning("padding-free batches off: %s; batches are padded", blocker)
        self.collate.padding_free = self.stats["padding_free"] = blocker is None

    def _loader(self, features: list[dict], batch_size: int, train: bool) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = RankSampler(
            [sum(len(s["input_ids"]) for s in f["sequences"]) for f in features],
            batch_size * world,
            shuffle=train and self.cfg.shuffle,
            group_by_length=train and self.cfg.group_by_length,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        loader_cls = ResumableLoader if train else DataLoader
        return loader_cls(features, batch_size=batch_size, sampler=sampler, collate_fn=self.collate, num_workers=self.cfg.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_features, self.cfg.batch_size, train=True)

    def val_dataloader(self):
        if not self.val_features:
            return []
        return self._loader(self.val_features, self.cfg.eval_batch_size or self.cfg.batch_size, train=False)
