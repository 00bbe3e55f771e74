"""bf16-mixed with the fused AdamW for every objective, gradient clipping done by the objective
itself, and ``train/lr`` / ``train/grad_norm`` in every logger."""

from __future__ import annotations

import csv
import math
import struct
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins import MixedPrecision
import pytest
import torch
import yaml

from rlhf_lab.config import ModelConfig, OptimConfig
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import ModelFactory
from rlhf_lab.objectives.sft import SFT, SFTConfig
from rlhf_lab.tracking import read_wandb_run
from tests.inprocess import QUICK, run_in_process

ONLINE = ("reward=python", "reward.fn=tests.rewards.functions:length", "objective.max_new_tokens=4", "objective.forward_batch_size=8")
FUSED = "+callbacks.fused._target_=tests.helpers.RequireFusedAdamW"


@pytest.mark.parametrize("objective", ["sft", "rm", "dpo", "ppo", "grpo", "rloo"])
def test_every_objective_trains_in_bf16_mixed_with_the_fused_adamw(tmp_path, objective):
    """Lightning's bf16-mixed plugin refused to clip for a fused optimiser ('does not allow for
    gradient clipping because it performs unscaling of gradients internally')."""
    group = ("objective.num_generations=2",) if objective in ("grpo", "rloo") else ("objective.epochs=1",)
    extra = (*ONLINE, *group) if objective in ("ppo", "grpo", "rloo") else ()
    summary = run_in_process(tmp_path, *QUICK, f"objective={objective}", "trainer.precision=bf16-mixed", "optim.grad_clip=0.5",
                             "trainer.max_steps=2", "data.num_rows=16", "data.batch_size=4", "export=false", FUSED, *extra)
    assert summary["global_step"] == 2 and math.isfinite(summary["train/loss"])
    if objective in ("sft", "rm", "dpo"):
        assert summary["train/grad_norm"] > 0 and summary["train/lr"] > 0


def attach_trainer(system, precision: str) -> None:
    """A Trainer in ``precision``; 16-mixed with its GradScaler, which Lightning's CPU default drops (it runs bf16-mixed)."""
    plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))] if precision == "16-mixed" else []
    system.trainer = L.Trainer(accelerator="cpu", precision=None if plugins else precision, plugins=plugins, max_steps=10,
                               logger=False, enable_checkpointing=False)


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", True), ("16-mixed", False)])
def test_fused_kernel_wherever_clipping_can_come_before_the_step(tiny_tokenizer, precision, fused):
    """16-mixed's GradScaler unscales before clipping, which a fused step would only do inside itself."""
    sft = SFT(SFTConfig(name="sft"), models=ModelFactory(ModelConfig(), tiny_tokenizer), tokenizer=tiny_tokenizer, optim=OptimConfig())
    attach_trainer(sft, precision)
    assert bool(sft.configure_optimizers()["optimizer"].defaults["fused"]) is fused


def test_a_fused_step_under_16_mixed_cannot_clip(tiny_tokenizer):
    sft = SFT(SFTConfig(name="sft"), models=ModelFactory(ModelConfig(), tiny_tokenizer), tokenizer=tiny_tokenizer, optim=OptimConfig(fused=True))
    attach_trainer(sft, "16-mixed")
    with pytest.raises(ConfigError, match="optim.fused=true with trainer.precision=16-mixed cannot clip gradients"):
        sft.configure_optimizers()


def test_clip_gradients_clips_and_returns_the_norm_before(tiny_tokenizer):
    sft = SFT(SFTConfig(name="sft"), models=ModelFactory(ModelConfig(), tiny_tokenizer), tokenizer=tiny_tokenizer, optim=OptimConfig())
    params = list(sft.parameters())
    optimizer = torch.optim.AdamW(params)
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.ones_like(p)  # total norm sqrt(n)
    assert sft.clip_gradients(optimizer, 0.5).item() == pytest.approx(math.sqrt(n), rel=1e-6)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]).double()).item() == pytest.approx(0.5, rel=1e-5)
    for p in params:
        p.grad = torch.full_like(p, 2.0)
    assert sft.clip_gradients(optimizer, 0.25, "value").item() == pytest.approx(2 * math.sqrt(n), rel=1e-6)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in params)
    assert sft.clip_gradients(optimizer, 0).item() == pytest.approx(0.25 * math.sqrt(n), rel=1e-6)  # 0: measured, not clipped


# --- train/lr and train/grad_norm in every logger -----------------------------------------------------

LOGGED = (*QUICK, "objective=sft", "trainer.max_steps=2", "data.num_rows=16", "data.batch_size=4", "export=false",
          "optim.lr=0.01", "optim.warmup_steps=4", "optim.grad_clip=0.5")
LR = [0.01 * 1 / 4, 0.01 * 2 / 4]  # linear warmup over 4 steps: (step + 1) / 4


def tensorboard_events(run_dir: Path) -> tuple[dict[str, list[float]], dict]:
    """Scalars (tag -> values) and the hparams of a TensorBoard run, read from its event files
    (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    scalars: dict[str, list[float]] = {}
    hparams: dict = {}
    for path in sorted(run_dir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugin = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, v in plugin.session_start_info.hparams.items():
                        hparams[key] = getattr(v, v.WhichOneof("kind"))
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars, hparams


def test_lr_and_grad_norm_reach_csv_with_the_resolved_config(tmp_path):
    run_in_process(tmp_path, *LOGGED)
    with open(tmp_path / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/lr")]
    assert [float(r["train/lr"]) for r in rows] == pytest.approx(LR)
    assert all(float(r["train/grad_norm"]) > 0.5 for r in rows)  # the norm before clipping to 0.5
    hparams = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert hparams["optim"]["lr"] == 0.01 and hparams["objective"]["name"] == "sft" and hparams["data"]["num_rows"] == 16


def test_lr_and_grad_norm_reach_tensorboard_with_its_hparams(tmp_path):
    pytest.importorskip("tensorboardX")
    run_in_process(tmp_path, *LOGGED, "logger=tensorboard")
    scalars, hparams = tensorboard_events(tmp_path / "tensorboard")
    assert scalars["train/lr"] == pytest.approx(LR) and len(scalars["train/grad_norm"]) == 2
    assert hparams["optim/lr"] == pytest.approx(0.01) and hparams["objective/name"] == "sft" and hparams["trainer/max_steps"] == 2


def test_lr_and_grad_norm_reach_wandb(tmp_path):
    run_in_process(tmp_path, *LOGGED, "logger=wandb", "logger.mode=offline")
    path = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    deadline = time.monotonic() + 60  # W&B's service process may still be writing the file after finish() in this process
    while len(history := [row for row in read_wandb_run(path)["history"] if "train/lr" in row]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [row["train/lr"] for row in history] == pytest.approx(LR)
    assert all(row["train/grad_norm"] > 0.5 for row in history)


def test_a_plugin_objective_logs_them_too(tmp_path):
    pytest.importorskip("rlhf_lab_orpo")
    summary = run_in_process(tmp_path, *LOGGED[:-4], "objective=orpo", "trainer.precision=bf16-mixed", FUSED)
    assert summary["train/grad_norm"] > 0 and summary["train/lr"] > 0
