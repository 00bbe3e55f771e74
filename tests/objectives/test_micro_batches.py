"""Micro-batches (``optim.micro_batches``): a batch's rows split among forward/backward passes within
one optimiser step give the update of one pass over the whole batch, with the real Trainer."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.data.collate import Collator, MicroBatches
from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives.base import auto_micro_batches
from tests.inprocess import QUICK, run_in_process


def test_auto_micro_batches_hold_the_activations_of_checkpointing_in_passes_of_at_least_1024_tokens():
    # By memory: ceil(17 L / (L + 17)) passes: L=4: 68/21 = 3.2 -> 4; L=12: 204/29 = 7.03 -> 8; L=32: 544/49 = 11.1 -> 12.
    assert auto_micro_batches(100_000, layers=4) == 4
    assert auto_micro_batches(100_000, layers=12) == 8
    assert auto_micro_batches(100_000, layers=32) == 12
    # By size: no pass under 1024 tokens: 2080 tokens -> 2; 8320 -> 8 (L=12 allows 8); a small batch -> 1.
    assert auto_micro_batches(2080, layers=4) == 2
    assert auto_micro_batches(8320, layers=12) == 8
    assert auto_micro_batches(1040, layers=4) == 1
    assert auto_micro_batches(300, layers=2) == 1


def test_micro_batches_hold_every_row_once_with_similar_token_counts():
    lengths = [30, 5, 17, 12, 9, 22, 3, 8]
    features = [{"sequences": [{"input_ids": list(range(n)), "labels": list(range(n))}]} for n in lengths]
    batch = MicroBatches(Collator(pad_id=0, padding_free=False), parts=3)(features)
    parts = batch["micro_batches"]
    assert len(parts) == 3
    assert (batch["num_samples"], batch["num_sequences"], batch["num_tokens"]) == (8, 8, sum(lengths))
    rows = sorted(n for part in parts for n in part["attention_mask"].sum(1).tolist())
    assert rows == sorted(lengths)  # every row in exactly one part
    tokens = sorted(part["num_tokens"] for part in parts)
    # longest first to the lightest part: 30 | 22 | 17, 12 -> 17, 9 -> 22, 8 -> 29, 5 -> 30, 3 -> 31
    assert tokens == [34, 35, 37]
    assert MicroBatches(Collator(pad_id=0, padding_free=False), parts=3)(features[:1])["num_samples"] == 1  # too few rows: one batch


def train(run_dir, *overrides):
    summary = run_in_process(run_dir, *QUICK, "data.num_rows=48", "data.batch_size=8", "trainer.max_steps=3", "data.shuffle=false",
                             "optim.warmup_steps=0", "optim.lr=3e-3", *overrides)
    with open(run_dir / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    curves = {key: [float(r[key]) for r in rows] for key in ("train/loss", "train/grad_norm")}
    return curves, load_file(summary["model_dir"] + "/model.safetensors"), summary


def assert_same_training(curves, weights, curves_one, weights_one):
    assert len(curves["train/loss"]) == 3 and curves_one["train/loss"][-1] != pytest.approx(curves_one["train/loss"][0], rel=1e-3)
    assert curves["train/loss"] == pytest.approx(curves_one["train/loss"], rel=1e-4)
    assert curves["train/grad_norm"] == pytest.approx(curves_one["train/grad_norm"], rel=1e-4)  # the whole batch's gradient
    # AdamW's first steps move each weight by about lr (3e-3) whatever its gradient's size, so a
    # gradient near zero whose float rounding differs moves a weight differently: a few elements of
    # 12k differ by up to 1e-4 in three steps.
    for name, value in weights_one.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=5e-4, msg=name)


@pytest.mark.parametrize("objective", ["sft", "rm", "dpo"])
def test_a_batch_in_three_passes_trains_like_one_pass(tmp_path, objective):
    """Same losses at every step and the same weights after three steps: each pass's loss is its
    share of the whole batch's mean, and the gradients of every pass reach the optimiser step
    (Lightning zeroes gradients after the training step: a wrong order would keep only the last pass's)."""
    one, weights_one, _ = train(tmp_path / "one", f"objective={objective}", "optim.micro_batches=1")
    three, weights_three, _ = train(tmp_path / "three", f"objective={objective}", "optim.micro_batches=3")
    assert_same_training(three, weights_three, one, weights_one)


def test_micro_batches_add_up_across_accumulated_batches(tmp_path):
    """optim.accumulate_grad_batches=2 with 2 passes each: the gradients of 4 passes in one step."""
    one, weights_one, _ = train(tmp_path / "one", "objective=rm", "data.batch_size=4", "optim.accumulate_grad_batches=2",
                                "optim.micro_batches=1")
    split, weights_split, _ = train(tmp_path / "split", "objective=rm", "data.batch_size=4", "optim.accumulate_grad_batches=2",
                                    "optim.micro_batches=2")
    assert_same_training(split, weights_split, one, weights_one)


def test_an_objective_whose_loss_is_not_a_mean_of_rows_refuses_micro_batches(tmp_path):
    # KTO's reference point z0 is estimated from the whole batch: a part would estimate its own.
    with pytest.raises(ConfigError, match="optim.micro_batches=2: objective=kto cannot split a batch"):
        train(tmp_path / "kto", "objective=kto", "optim.micro_batches=2")
