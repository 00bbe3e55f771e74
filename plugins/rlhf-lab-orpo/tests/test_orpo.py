"""ORPO: the loss on worked numbers, then training through the real CLI (fixtures from rlhf_lab.testing)."""

import math
import re

import pytest
import torch

from rlhf_lab_orpo.objective import log_odds, orpo_loss


def test_log_odds_of_a_half_is_zero():
    assert log_odds(torch.tensor(math.log(0.5))).item() == pytest.approx(0.0, abs=1e-7)


def test_orpo_loss_worked_example():
    # P(y_w) = 0.5 -> odds 1; P(y_l) = 0.2 -> odds 0.25; log odds ratio = log 4
    # L_OR = -log σ(log 4) = -log(4/5) = log 1.25; L = 2.0 + 0.1 · log 1.25
    loss, ratio = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]), torch.tensor(2.0), lam=0.1)
    assert ratio.item() == pytest.approx(math.log(4))
    assert loss.item() == pytest.approx(2.0 + 0.1 * math.log(1.25))


@pytest.mark.slow
def test_trains_through_the_cli(rlhf_lab_run):
    result = rlhf_lab_run("objective=orpo", "objective.lam=0.5", steps=3)
    summary = result.summary
    assert summary["objective"] == "orpo"
    assert summary["global_step"] == 3
    # L = L_SFT + λ · mean(-log σ(r)) and -log σ is convex, so L_OR >= -log σ(mean r): with λ = 0.5
    # the loss exceeds the NLL by at least half of that (λ dropped or left at 0.1 would not)
    l_or = (summary["train/loss"] - summary["train/nll_chosen"]) / 0.5
    assert l_or >= math.log1p(math.exp(-summary["train/log_odds_ratio"])) - 1e-5, summary
    assert (8 * summary["train/accuracy"]).is_integer()  # the share of the step's 8 pairs with r > 0
    assert (result.run_dir / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_is_an_option_of_the_cli(rlhf_lab_cli):
    help_ = rlhf_lab_cli("--help")
    assert re.search(r"^objective: .*\borpo\b", help_.stdout, re.M), help_.output
    listing = rlhf_lab_cli(module="rlhf_lab.plugins")
    assert "rlhf-lab-orpo 0.1.0" in listing.stdout and "objective=orpo" in listing.stdout, listing.output


@pytest.mark.slow
def test_unknown_option_fails_at_composition(rlhf_lab_cli):
    result = rlhf_lab_cli("objective=orpo", "objective.lamda=1")
    assert result.returncode != 0
    assert "Key 'lamda' not in 'ORPOConfig'" in result.output
