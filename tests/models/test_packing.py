"""Padding-free batches by default: on for models that read packed rows exactly, off (or an error when
asked for outright) for those that mix the sequences of a row."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, OPTConfig

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.lm import packs_exactly
from tests.archs import FAMILIES, config, tokenizer
from tests.inprocess import QUICK, run_in_process


def opt_dir(path):
    """OPT reads its learned positions off the attention mask, not the position ids: packed rows
    would give every sequence after the first the wrong positions."""
    tok = tokenizer("gpt2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                                       word_embed_proj_dim=64, max_position_embeddings=128, vocab_size=len(tok),
                                                       pad_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("auto_cls", [AutoModelForCausalLM, AutoModelForSequenceClassification])
def test_the_families_read_packed_rows_exactly(family, auto_cls):
    torch.manual_seed(0)
    assert packs_exactly(auto_cls.from_config(config(family, tokenizer(family))))


def test_a_model_whose_positions_come_from_the_mask_does_not(tmp_path):
    assert not packs_exactly(AutoModelForCausalLM.from_pretrained(opt_dir(tmp_path)))


RUN = (*QUICK, "trainer.max_steps=3", "data.num_rows=32", "data.batch_size=8", "optim.lr=1e-3")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "rm", "dpo"])
def test_default_runs_pack_and_train_as_the_padded_path(tmp_path, objective):
    """The default (packed) and padded runs take the same three optimiser steps: equal losses. (The
    generated rows are 13-17 tokens long: at the default width, the longest sequence's, no two
    share a row and the batches stay padded; one row per batch packs them.)"""
    task = () if objective == "sft" else ("data.task=polite",)
    default = run_in_process(tmp_path / "default", f"objective={objective}", *task, *RUN, "data.pack_width=0")
    padded = run_in_process(tmp_path / "padded", f"objective={objective}", *task, *RUN, "data.padding_free=false")
    assert default["data/padding_free"] is True and padded["data/padding_free"] is False
    assert default["train/loss"] == pytest.approx(padded["train/loss"], rel=1e-4)


# A reward that varies (the share of the letter 'a'), and the whole rollout in one row: it packs.
ONLINE = (*QUICK, "objective=ppo", "trainer.max_steps=1", "data.num_rows=16", "data.batch_size=8", "objective.max_new_tokens=6",
          "reward=python", "reward.fn=tests.rewards.functions:share_of_a", "data.pack_width=0")


@pytest.mark.slow
def test_online_rl_packs_its_rollouts_by_default_and_takes_the_padded_paths_first_step(tmp_path):
    """PPO's first rollout: four optimiser steps on log pi and V(s_t) from the policy and critic
    passes, the rollout's (padding-free by default) and the update's. Equal losses, KL and value
    loss: the packed passes put every token's log-prob and value where the padded ones do."""
    default = run_in_process(tmp_path / "default", *ONLINE)
    padded = run_in_process(tmp_path / "padded", *ONLINE, "data.padding_free=false")
    assert default["data/padding_free"] is True and padded["data/padding_free"] is False
    for key in ("train/loss", "train/value_loss", "train/approx_kl", "train/grad_norm"):
        assert default[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("job", [RUN, ONLINE], ids=["batches", "online_rollouts"])
def test_an_unpackable_model_pads_by_default_and_refuses_padding_free_true(tmp_path, job):
    model = ("model=hf", f"model.name_or_path={opt_dir(tmp_path / 'opt')}")
    assert run_in_process(tmp_path / "auto", *job, *model)["data/padding_free"] is False
    with pytest.raises(ConfigError, match=r"data.padding_free=true: the policy \(OPTForCausalLM, attention \w+\) mixes packed sequences"):
        run_in_process(tmp_path / "forced", *job, *model, "data.padding_free=true")


def test_transformers_no_mask_warning_is_not_shown_for_packed_rows(arch_dir):
    """A padding-free row has no attention mask, and a GPT-2's pad is its EOS, which ends every
    completion: transformers' "passing in an `attention_mask`" warning would be a false alarm on
    every packed GPT-2 run. It is dropped; the logger's other records still pass."""
    import logging

    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import load_scalar_head_model

    path = arch_dir("gpt2")
    eos = AutoTokenizer.from_pretrained(path).eos_token_id
    model = load_scalar_head_model(ModelConfig(source="hf", name_or_path=str(path)), pad_token_id=eos)  # a reward model, as trained
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        logging.Logger.warning_once.cache_clear()  # transformers' once-per-process cache
        ids = torch.tensor([[5, 6, eos, 7, 8, eos]])  # two sequences side by side, each ended by EOS
        model(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]), use_cache=False)
        logger.warning("another warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning"]
