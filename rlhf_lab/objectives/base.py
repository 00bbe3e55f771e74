"""The base of every objective: a LightningModule *system* over models handed in from outside.

A subclass declares the rows it reads (``data_format``), how a batch of rows becomes token
sequences (``encode``), and one method, ``compute_loss(batch) -> (loss, metrics)``; training and
validation steps, logging, optimisers and export are shared here.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import platform
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lab.config import ObjectiveConfig, OptimConfig
from rlhf_lab.data.collate import Collator
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, TrainingError
from rlhf_lab.models import ModelFactory, export_pretrained, unwrap
from rlhf_lab.models.lm import packs_exactly
from rlhf_lab.training import newest_checkpoint

log = logging.getLogger(__name__)


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of ``lr`` at a step: linear warmup, then cosine / linear decay to ``min_lr_ratio``, or constant."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return factor


def min_pass_tokens(hidden_size: int) -> int:
    """The fewest tokens an automatic micro-batch holds: below about 2^24 / d^2 a CPU's matmuls run
    under full speed (hidden 128: 1024 tokens, where 520-token passes lost a quarter of the
    throughput: rlhf_lab_micro4 in benchmarks/RESULTS.md), and never under 256."""
    return max(256, 2**24 // hidden_size**2)


def activation_bytes_per_token(model: torch.nn.Module, width: int, packed: bool) -> float:
    """Bytes that autograd keeps for the backward pass per token of a training forward pass over
    one row of ``width`` tokens, measured (``saved_tensors_hooks``; parameters and buffers are not
    counted): two sequences packed in the row when ``packed``, as padding-free batches run (attention
    then keeps its scores on CPU), else one sequence. The model's own arithmetic decides it: GPT-2's
    tanh GELU keeps 30 hidden-sized values per token and layer, a Llama 20-23."""
    model = unwrap(model)
    held = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    saved: dict[int, int] = {}
    alive: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        # Held here until the forward ends, as the graph would hold it (a freed storage's address
        # would be reused and counted once), but not returned: a node that saved its own output
        # through a hook returning it holds itself in a reference cycle that nothing frees (the
        # whole probe stayed allocated, 0.65 GB on GPT-2 small). Nothing runs backward through this graph.
        alive.append(tensor)

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("activation_bytes_per_token's graph has no saved tensors to run backward through")

    device = next(model.parameters()).device
    ids = torch.full((1, width), int(model.config.get_text_config().bos_token_id or 0), device=device)
    if packed:  # as padding-free batches: position ids restarting at the second sequence, no mask
        half = width // 2
        inputs = dict(position_ids=torch.cat([torch.arange(half), torch.arange(width - half)])[None].to(device))
    else:
        inputs = dict(attention_mask=torch.ones_like(ids))
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), torch.enable_grad():
        model(input_ids=ids, **inputs, use_cache=False)
    alive.clear()
    return sum(saved.values()) / width


def auto_micro_batches(batch_tokens: float, activation_bytes: float, weight_bytes: float, min_tokens: int) -> int:
    """Passes per batch (``optim.micro_batches=null`` on CPU): as many as hold each pass's activations
    to the size of the weights (which training holds once more as gradients and twice as AdamW's
    moments), but no more than keep every pass at ``min_tokens`` tokens or more."""
    within_budget = math.ceil(batch_tokens * activation_bytes / weight_bytes - 1e-9)
    return max(1, min(within_budget, int(batch_tokens // min_tokens)))


LARGE_BLOCK = 4 * 2**20  # bytes: the smallest block that glibc's malloc maps on its own once a split batch runs on CPU
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
_large_blocks_mapped: bool | None = None  # None: not tried in this process yet


def map_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Have glibc's malloc give every block of ``threshold`` bytes or more its own mapping, returned
    to the OS when freed; True when this process's malloc works so now.

    A split batch (micro-batches) on CPU is run to bound memory, and glibc's default defeats it:
    each time it frees a mapped block it raises its threshold to that block's size (up to 32 MB),
    so a pass's activations come from the heap afterwards and the heap keeps what they leave,
    fragmented. GPT-2 small's reward model (16 passes) peaked at 4.0-4.3 GB this way, 0.96-1.03x
    TRL's; with 4 MB blocks mapped, 3.6 GB, at 8% more time (the kernel zeroes the pages of each
    such tensor; benchmarks/RESULTS.md). Called at the first split batch, so that no-grad passes
    before training (DPO's reference) keep the faster default. Where the C library is not glibc, or
    the user set the threshold (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``), nothing changes."""
    global _large_blocks_mapped
    if _large_blocks_mapped is not None:
        return _large_blocks_mapped
    users = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
    _large_blocks_mapped = platform.libc_ver()[0] == "glibc" and not users and ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    if _large_blocks_mapped:
        log.info("micro-batches on CPU: tensors of %d MB and more get their own memory mapping, returned to the OS when freed "
                 "(glibc's heap would keep the activations' space fragmented)", threshold // 2**20)
    return _large_blocks_mapped


def fusable(param: torch.Tensor) -> bool:
    """Whether AdamW's fused kernel takes this parameter. Without it, torch's default on CPU is a
    Python loop over the tensors (TRL's default optimiser is the fused one: adamw_torch_fused)."""
    return param.device.type in ("cpu", "cuda", "xpu", "mps") and param.is_floating_point() and not isinstance(param, DTensor)


class Objective(L.LightningModule):
    data_format: ClassVar[str] = "sft"  # rows read: sft | preference | prompt | unpaired
    # The run's padding-free collator when it decided that its models read packed rows (``data.padding_free``,
    # ``packing_blocker``), else None: the DataModule collates the batches with it, and a system that
    # batches sequences itself (online RL's rollouts) packs them with it.
    packing: Collator | None = None

    def __init__(self, cfg: ObjectiveConfig, *, models: ModelFactory, tokenizer: PreTrainedTokenizerBase, optim: OptimConfig):
        super().__init__()
        self.cfg = cfg
        self.optim_cfg = optim
        self.tokenizer = tokenizer
        self.models = models

    @classmethod
    def encode(cls, encoder: Encoder, rows: list[dict]) -> list[dict]:
        """Rows of ``data_format`` to features (``{"sequences": [...]}``): called on batches of rows,
        possibly in worker processes; the result is cached with the tokenised table (``data/table.py``)."""
        return encoder.sft(rows)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def loss_count(self, batch: dict) -> int | None:
        """The number of terms that ``compute_loss`` averages over in ``batch`` (the ``count`` it gives
        ``global_token_mean``: pairs, scored tokens), computed from the batch alone; None (the
        default) when its loss is not such a mean (a batch-level term, as KTO's KL estimate): then
        its batches are never split into micro-batches (``optim.micro_batches``)."""
        return None

    def packing_blocker(self) -> str | None:
        """Why its models cannot read padding-free rows (``data.padding_free``): the first model this system
        holds that does not read packed rows as it reads each sequence alone (``packs_exactly``);
        None when every one does."""
        for name, model in self.named_children():
            if isinstance(unwrap(model), PreTrainedModel) and not packs_exactly(model):
                base = unwrap(model)
                return f"the {name} ({type(base).__name__}, attention {base.config._attn_implementation}) mixes packed sequences"
        return None

    @property
    def trained_model(self) -> torch.nn.Module:
        """The model that ``export`` saves (the policy for most objectives)."""
        return self.policy

    def global_token_mean(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """``total / count`` over the global batch, so that N processes train exactly like one.

        DDP and FSDP average gradients over ranks; a rank-local token mean would weight each
        rank equally whatever its number of tokens. Scaling by world size / global count fixes it.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        if self._step_count is not None:  # a micro-batch: its share of the whole batch's mean
            self._counted += count
            return total * world / self._step_count
        if world == 1:
            return total / count
        global_count = self.trainer.strategy.reduce(torch.tensor(float(count), device=total.device), reduce_op="sum")
        return total * world / global_count

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        """Stop the run (on every rank) before a non-finite ``value`` reaches the weights; the
        checkpoints written so far are all from before it."""
        bad = not bool(torch.isfinite(value).all())
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            ckpt_dir = self.trainer.checkpoint_callback.dirpath if self.trainer.checkpoint_callback else None
            last = newest_checkpoint(Path(ckpt_dir)) if ckpt_dir else None
            raise TrainingError(
                f"non-finite {name} ({value.detach().float().mean().item()}) at step {self.global_step}; "
                f"stopped before updating the weights. Last good checkpoint: {last or 'none'}."
            )

    # --- shared steps -----------------------------------------------------------------------

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
        self._record(stage, loss, metrics, batch["num_samples"])
        return loss

    def _record(self, stage: str, loss: torch.Tensor, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
        """Stop on a non-finite training loss, then log the loss and metrics of a batch."""
        on_step = stage == "train"
        if on_step:
            self.check_finite("loss", loss)
        # sync_dist: logged values are means over all ranks, as one process would see them.
        for name, value in {"loss": loss, **metrics}.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "micro_batches" in batch:
            return self._micro_step(batch, batch_idx)
        return self._step(batch, "train")

    # --- micro-batches (optim.micro_batches) ---------------------------------------------------

    _step_count: float | None = None  # the whole batch's loss_count over every rank, while its parts run
    _counted: int = 0
    _zeroed_early = False

    def setup(self, stage: str) -> None:
        """Decide the passes per training batch (``optim.micro_batches``) before the loaders start."""
        data = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or data is None or not hasattr(data, "train_collate"):
            return
        parts = self.optim_cfg.micro_batches
        splittable = self.automatic_optimization and type(self).loss_count is not Objective.loss_count
        if parts is not None and parts > 1 and not splittable:
            raise ConfigError(f"optim.micro_batches={parts}: objective={self.cfg.name} cannot split a batch (its loss is not "
                              "a mean of independent terms: Objective.loss_count); set optim.micro_batches=1.")
        if parts is None:
            parts = 1
            if splittable and isinstance(self.trainer.accelerator, CPUAccelerator) and data.train_features is not None:
                parts = self.auto_micro_batches(data)
        data.train_collate.parts = parts

    def auto_micro_batches(self, data) -> int:
        """``auto_micro_batches`` for this run's trained model and training data; the activations are
        measured only where the batch could make two passes of ``min_pass_tokens``."""
        model = self.trained_model
        lengths = data.train_features.lengths()
        batch_tokens = float(lengths.mean()) * data.cfg.batch_size
        min_tokens = min_pass_tokens(unwrap(model).config.get_text_config().hidden_size)
        if batch_tokens < 2 * min_tokens:
            return 1
        width = int(min(data.encoder.max_length, lengths.max()))
        try:
            per_token = activation_bytes_per_token(model, width, packed=data.collate.padding_free)
        except Exception as exc:  # a memory heuristic never stops a run: one pass, as without it
            log.warning("micro-batches: could not measure the activations of %s (%s: %s); one pass per batch",
                        type(unwrap(model)).__name__, type(exc).__name__, exc)
            return 1
        weights = sum(p.numel() * p.element_size() for p in unwrap(model).parameters())
        parts = min(auto_micro_batches(batch_tokens, per_token, weights, min_tokens), data.cfg.batch_size)
        if parts > 1:
            log.info("micro-batches: each batch of %d rows (about %d tokens, %.0f KB of activations a token) in %d forward/backward "
                     "passes, each holding at most the weights' %d MB of activations (optim.micro_batches=1: one pass)",
                     data.cfg.batch_size, batch_tokens, per_token / 1024, parts, weights / 2**20)
        return parts

    def _micro_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One training batch in parts: each part's loss is its share of the whole batch's mean
        (``global_token_mean`` divides by the whole batch's count), backpropagated before the next
        part runs; Lightning backpropagates the last one's. The gradients, loss and metrics equal
        one pass over the whole batch."""
        parts = batch["micro_batches"]
        if isinstance(self.trainer.accelerator, CPUAccelerator):  # from the first split batch on: not DPO's no-grad reference pass
            map_large_blocks()
        counts = [self.loss_count(part) for part in parts]
        local = sum(counts)
        total = torch.tensor(float(local), device=self.device)
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        if batch_idx % self.trainer.accumulate_grad_batches == 0:  # Lightning would zero them after this step, before its backward
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad()
            self._zeroed_early = True
        self._step_count, self._counted = float(total), 0
        metrics: dict[str, torch.Tensor] = {}
        loss_sum = 0.0
        try:
            for i, (part, count) in enumerate(zip(parts, counts)):
                loss, part_metrics = self.compute_loss(part)
                loss_sum = loss_sum + loss.detach()
                for name, value in part_metrics.items():  # each a mean over its part: weighted by the part's share
                    metrics[name] = metrics.get(name, 0.0) + value.detach() * (count / local)
                if i < len(parts) - 1:
                    self.trainer.strategy.backward(loss / self.trainer.accumulate_grad_batches, None)
        finally:
            self._step_count = None
        if self._counted != local:
            raise TrainingError(f"objective={self.cfg.name}: loss_count gives {local} for a batch whose loss is a mean over "
                                f"{self._counted} terms (global_token_mean's count); they must agree for micro-batches.")
        self._record("train", loss_sum, metrics, batch["num_samples"])
        return loss + (loss_sum - loss.detach())  # the whole batch's loss (callbacks' outputs["loss"]), the last part's gradient

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if self._zeroed_early:  # a split batch zeroed them before its first pass: they hold its gradients now
            self._zeroed_early = False
            return
        optimizer.zero_grad()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.automatic_optimization:  # online RL logs its own, once per rollout
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip (``optim.grad_clip``) and log ``train/grad_norm``, the norm before clipping (TRL's ``grad_norm``)."""
        norm = self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> torch.Tensor:
        """Clip the gradients of ``optimizer``'s parameters to a total norm of ``gradient_clip_val``
        (None: the Trainer's; neither: no clipping), or each value to it with
        ``gradient_clip_algorithm="value"``; returns their total norm before clipping.

        Lightning's own clipping goes through the precision plugin, whose bf16-mixed one refuses any
        optimiser that unscales gradients inside its step (fused AdamW), although bf16 scales
        nothing. Here it is the same ``clip_grad_norm_`` for every precision: under 16-mixed's
        GradScaler the fused kernel is never chosen (``configure_optimizers``), so automatic
        optimisation clips gradients that Lightning has already unscaled.
        """
        max_norm = gradient_clip_val if gradient_clip_val is not None else self.trainer.gradient_clip_val
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        by_value = gradient_clip_algorithm == "value"
        norm = torch.nn.utils.clip_grad_norm_(params, math.inf if by_value or not max_norm else max_norm)
        if by_value and max_norm:
            torch.nn.utils.clip_grad_value_(params, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm  # FSDP2: the norm over every shard

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        # 16-mixed's GradScaler unscales before clipping; a fused step would unscale only inside itself.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None if self._trainer is not None else False
        if cfg.fused and scaled and cfg.grad_clip:
            raise ConfigError("optim.fused=true with trainer.precision=16-mixed cannot clip gradients (the fused step unscales "
                              "them itself, after clipping): set optim.fused=false, optim.grad_clip=null or trainer.precision=bf16-mixed.")
        fused = cfg.fused if cfg.fused is not None else not scaled and all(fusable(p) for p in params)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                                      **({"fused": True} if fused else {}))
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        """FSDP2 (``trainer=fsdp``, Lightning's ModelParallelStrategy): shard every transformer
        block of every model this system holds (policy, reference, reward, value), then the rest of
        each model. Frozen models are sharded the same way and hold no optimiser state."""
        mesh = self.device_mesh
        if mesh is None:
            return
        for name, model in self.named_children():
            if isinstance(unwrap(model), PreTrainedModel):
                blocks = shard_fsdp2(model, mesh["data_parallel"])
                log.info("FSDP2: %s sharded as %d blocks + root over %d ranks", name, blocks, mesh["data_parallel"].size())

    def export(self, out_dir: Path) -> Path:
        """Save ``trained_model`` on rank 0; call it on every rank (FSDP gathers the full weights)."""
        model = self.trained_model
        state_dict = None
        if isinstance(model, FSDPModule):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.trainer.is_global_zero:
            export_pretrained(model, self.tokenizer, out_dir, state_dict=state_dict)
        return out_dir


def shard_fsdp2(model: torch.nn.Module, mesh) -> int:
    """``fully_shard`` each block named in the model's ``_no_split_modules``, then the whole model."""
    block_types = set(getattr(unwrap(model), "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_types]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(blocks)
