"""Direct Preference Optimisation (``objective=dpo``), https://arxiv.org/abs/2305.18290:

    L = -log sigma(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

log pi(y|x) is summed over completion tokens; chosen and rejected go through one concatenated
forward pass (the collator lays a batch out chosen rows, then rejected rows). ``objective.loss``
picks the variant from ``losses.PREFERENCE_LOSSES`` (sigmoid, ipo, cdpo, hinge, simpo).

The reference pi_ref is the initial policy, frozen. ``objective.reference=precompute`` (default)
scores train and validation data with it once before training and caches the result on disk,
keyed by the model config and the tokenised data, so a re-run or a sweep over ``beta`` loads it;
``live`` scores each batch with it during training (a stream, ``data.streaming=true``, switches to
it: ``app.train``). With LoRA the reference is the policy with its adapters disabled: no second
copy of the model is ever built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch.utils.data import DataLoader

from rlhf_lab.config import ModelConfig
from rlhf_lab.data.table import FeatureSet
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import TINY_DIR, disable_dropout, eval_mode
from rlhf_lab.models.lm import score_labels
from rlhf_lab.models.reference import Reference
from rlhf_lab.objectives.base import Objective
from rlhf_lab.objectives.losses import PREFERENCE_LOSSES, REFERENCE_FREE, PreferenceLogps, pair_metrics
from rlhf_lab.objectives.schemas import DPOConfig
from rlhf_lab.training.faults import fault_point
from rlhf_lab.training.files import remove_stale_tmp, write_atomic

log = logging.getLogger(__name__)


def model_fingerprint(cfg: ModelConfig) -> dict:
    """What identifies the initial policy: its model config, and the files of a local checkpoint."""
    where = TINY_DIR if cfg.source == "tiny" else Path(cfg.name_or_path)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in where.iterdir()) if where.is_dir() else []
    fields = ("source", "name_or_path", "revision", "dtype", "attn_implementation", "init_seed")
    return {**{f: getattr(cfg, f) for f in fields}, "files": files}


def reference_cache_path(cache_dir: str, model_cfg: ModelConfig, features: FeatureSet) -> Path:
    """Keyed by the model and the exact features: the tokenised tables' keys (which cover every
    token) and the features' positions in them, so no token is read to find the cache."""
    key = hashlib.sha256(json.dumps(model_fingerprint(model_cfg), sort_keys=True).encode())
    key.update(features.fingerprint())
    cache_dir = cache_dir or os.path.join(os.environ.get("RLHF_LAB_CACHE", "~/.cache/rlhf_lab"), "ref_logps")
    return Path(cache_dir).expanduser() / f"{key.hexdigest()[:32]}.pt"


class DPO(Objective):
    data_format = "preference"

    def __init__(self, cfg: DPOConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.uses_reference = self.configure_loss(cfg)
        self.ref = Reference(self.models)
        self.policy = self.models.policy()
        if cfg.disable_dropout:
            disable_dropout(self.policy)
        self.reference = self.ref.copy() if self.uses_reference and cfg.reference == "live" else None

    def configure_loss(self, cfg: DPOConfig) -> bool:
        """Choose the loss from the config; returns whether it reads pi_ref (a subclass's own loss: KTO)."""
        self.loss_fn = PREFERENCE_LOSSES[cfg.loss]
        self.loss_kwargs = dict(beta=cfg.beta, label_smoothing=cfg.label_smoothing, gamma=cfg.gamma)
        return cfg.loss not in REFERENCE_FREE

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        return encoder.preference(rows)

    # --- log-probabilities ------------------------------------------------------------------------

    def sequence_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(y|x) summed over completion tokens, completion length), each (num_sequences,)."""
        scored = score_labels(model, batch, self.models.cfg.sparse_head)
        n = batch["num_sequences"]
        return scored.per_sequence(scored.logps(), n), scored.counts(n)

    @torch.no_grad()
    def score_reference(self, batch: dict, reference=None) -> torch.Tensor:
        """(num_sequences,) log pi_ref(y|x): the policy with LoRA adapters disabled, or ``reference``
        (by default the copy held for ``reference=live``)."""
        with self.ref.model(self.policy, reference if reference is not None else self.reference) as model:
            return self.sequence_logps(model, batch)[0]

    def precompute_reference(self, features: FeatureSet, collate, batch_size: int) -> torch.Tensor:
        """(num_features, 2) reference log-probs of each feature's two sequences (chosen and
        rejected; KTO: matched and mismatched), from the on-disk cache when this model has scored
        these exact tokens before. With several processes each scores every world_size-th pair
        and the results are gathered."""
        path = reference_cache_path(self.cfg.ref_cache_dir, self.models.cfg, features)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        remove_stale_tmp(path.parent, only_dead_writers=True)  # left by a run killed while writing the cache
        hit = path.exists()
        if world > 1:  # one decision for all ranks: a sweep may be writing the file right now
            hits = [None] * world
            torch.distributed.all_gather_object(hits, hit)
            hit = all(hits)
        if hit:
            try:
                ref_logps = torch.load(path, weights_only=True)
                log.info("reference log-probs: loaded %d pairs from cache %s", len(features), path)
                return ref_logps
            except Exception as exc:  # writes are atomic: only a damaged disk or a hand-made file gets here
                log.warning("reference log-probs: cache %s is unreadable (%s); computing them again", path, type(exc).__name__)
        # Every rank runs the same number of batches (FSDP's collectives need it): the shares are
        # padded to equal length with a repeat of the first pair, dropped afterwards.
        mine_at = np.arange(rank, len(features), world)
        share = features.subset(np.concatenate([mine_at, np.zeros(-(-len(features) // world) - len(mine_at), dtype=np.int64)]))
        # A fresh frozen copy, not the policy: on a resumed run the policy is no longer the initial one.
        reference = self.ref.copy()
        reference = reference.to(self.device) if reference is not None else None
        mine = []
        with eval_mode(self.policy):
            for batch in DataLoader(share, batch_size=batch_size, collate_fn=collate):
                batch = move_data_to_device(batch, self.device)
                mine.append(self.score_reference(batch, reference).view(2, -1).T.cpu())  # (b, 2)
                fault_point("reference_precompute")  # test hook (rlhf_lab.training.faults)
        mine = torch.cat(mine)  # (len(share), 2)
        parts = [mine]
        if world > 1:
            parts = [None] * world
            torch.distributed.all_gather_object(parts, mine)
        ref_logps = torch.empty(len(features), 2)
        for r, part in enumerate(parts):
            ref_logps[r::world] = part[: len(range(r, len(features), world))]
        if rank == 0:
            write_atomic(path, lambda f: torch.save(ref_logps, f))
            log.info("reference log-probs: computed %d pairs over %d process(es), cached at %s", len(features), world, path)
        return ref_logps

    def on_fit_start(self) -> None:
        if not (self.uses_reference and self.cfg.reference == "precompute"):
            return
        data = self.trainer.datamodule
        if data.train_features is None:
            raise ConfigError("objective.reference=precompute scores every pair before training, which a stream (data.streaming=true) "
                              "cannot: set objective.reference=live.")
        train, val = data.train_features, data.val_features
        with self.trainer.precision_plugin.forward_context():  # the precision the policy trains in
            ref_logps = self.precompute_reference(train + val, data.collate, data.cfg.eval_batch_size or data.cfg.batch_size).numpy()
        train.attach("ref_logp", ref_logps[: len(train)])  # each sequence reads its value: the collator batches them as batch["ref_logps"]
        val.attach("ref_logp", ref_logps[len(train) :])

    # --- loss ------------------------------------------------------------------------------------

    def loss_count(self, batch: dict) -> int | None:
        return batch["num_samples"]  # pairs

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, lengths = self.sequence_logps(self.policy, batch)  # (2B,), (2B,)
        ref_logps = None
        if self.uses_reference:
            ref_logps = batch["ref_logps"] if self.cfg.reference == "precompute" else self.score_reference(batch)  # (2B,)
        logp_chosen, logp_rejected = logps.chunk(2)  # (B,), (B,)
        ref_chosen, ref_rejected = ref_logps.chunk(2) if ref_logps is not None else (None, None)
        len_chosen, len_rejected = lengths.chunk(2)
        lp = PreferenceLogps(logp_chosen, logp_rejected, ref_chosen, ref_rejected, len_chosen, len_rejected)
        losses, r_chosen, r_rejected = self.loss_fn(lp, **self.loss_kwargs)  # (B,) each
        if self.cfg.nll_coef:  # keeps the chosen answers likely: DPO alone can lower both (and fluency with them)
            losses = losses - self.cfg.nll_coef * logp_chosen / len_chosen.clamp(min=1)
        return self.global_token_mean(losses.sum(), len(losses)), {  # the mean over the global batch
            "rewards/chosen": r_chosen.mean(),
            "rewards/rejected": r_rejected.mean(),
            **{f"rewards/{k}": v for k, v in pair_metrics(r_chosen, r_rejected).items()},
            "logps/chosen": logp_chosen.detach().mean(),
            "logps/rejected": logp_rejected.detach().mean(),
        }
