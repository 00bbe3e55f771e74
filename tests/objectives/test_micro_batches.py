"""Micro-batches (``optim.micro_batches``): a batch's rows split among forward/backward passes within
one optimiser step give the update of one pass over the whole batch, with the real Trainer."""

from __future__ import annotations

import csv
import ctypes
import os
import platform
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.data.collate import Collator, MicroBatches
from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives import base
from rlhf_lab.objectives.base import activation_bytes_per_token, auto_micro_batches, map_large_blocks, min_pass_tokens
from tests.inprocess import QUICK, run_in_process


def test_auto_micro_batches_hold_a_pass_to_the_weights_size_in_passes_of_enough_tokens():
    assert (min_pass_tokens(128), min_pass_tokens(768), min_pass_tokens(4096)) == (1024, 256, 256)  # 2^24 / d^2, at least 256
    mb = 2**20
    # GPT-2 small's reward model: 7,400 tokens a batch, 1.6 MB of activations a token, 475 MB of weights:
    # passes of at most 475 / 1.6 = 297 tokens -> ceil(7400 / 297) = 25.
    assert auto_micro_batches(7400, 1.6 * mb, 475 * mb, min_tokens=256) == 25
    # The lab's Llama: 2,056 tokens, 60 KB a token, 11.3 MB of weights: 193-token passes would be needed, but
    # no pass goes under 1024 tokens: floor(2056 / 1024) = 2 passes; 4,000 tokens: 3.
    assert auto_micro_batches(2056, 60 * 1024, 11.3 * mb, min_tokens=1024) == 2
    assert auto_micro_batches(4000, 60 * 1024, 11.3 * mb, min_tokens=1024) == 3
    assert auto_micro_batches(1000, 1.6 * mb, 475 * mb, min_tokens=256) == 3  # 4 would make 250-token passes
    assert auto_micro_batches(100, 1.0, 1e9, min_tokens=256) == 1  # small activations: one pass


def test_activations_are_measured_from_the_models_own_backward_graph(tiny_tokenizer):
    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import ModelFactory

    policy = ModelFactory(ModelConfig(), tiny_tokenizer).policy()
    text = policy.config.get_text_config()
    per_layer = activation_bytes_per_token(policy, 64, packed=False) / text.num_hidden_layers / (text.hidden_size * 4)
    assert 10 < per_layer < 60  # hidden-sized fp32 values a token and layer (a Llama: 20-23; GPT-2: 30)
    assert activation_bytes_per_token(policy, 64, packed=True) >= activation_bytes_per_token(policy, 64, packed=False)
    policy.gradient_checkpointing_enable()
    checkpointed = activation_bytes_per_token(policy, 64, packed=False) / text.num_hidden_layers / (text.hidden_size * 4)
    assert checkpointed < per_layer / 2  # each layer keeps its input only


def test_measuring_the_activations_frees_them(tiny_tokenizer):
    """The probe holds what the graph would, then lets all of it go: a hook that hands the saved
    tensor back makes every node that saves its own output (a Llama's rsqrt, GPT-2's tanh) a
    reference cycle, which kept the probe's whole forward allocated for the rest of the run
    (0.65 GB on GPT-2 small)."""
    import gc
    import weakref

    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import ModelFactory

    policy = ModelFactory(ModelConfig(), tiny_tokenizer).policy()
    outputs: list[weakref.ref] = []
    layer = next(m for m in policy.modules() if isinstance(m, torch.nn.ModuleList))[0]
    handle = layer.register_forward_hook(lambda module, args, out: outputs.append(weakref.ref(out[0] if isinstance(out, tuple) else out)))
    first = activation_bytes_per_token(policy, 64, packed=False)
    handle.remove()
    gc.collect()
    assert len(outputs) == 1 and outputs[0]() is None  # the first layer's output, saved by the second layer's norm
    assert activation_bytes_per_token(policy, 64, packed=False) == first  # every saved storage counted once, each time


MAPPING_CHECK = """
import ctypes, torch
from rlhf_lab.objectives.base import map_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
mib = 2**20
torch.empty(20 * mib, dtype=torch.uint8)  # freed at once: glibc's own threshold rises to 20 MB
assert map_large_blocks()
before = libc.mallinfo2().hblkhd  # bytes in mapped blocks
large = torch.empty(5 * mib, dtype=torch.uint8)
assert libc.mallinfo2().hblkhd - before >= 5 * mib, "a 5 MB tensor came from the heap"
small = torch.empty(mib, dtype=torch.uint8)
assert libc.mallinfo2().hblkhd - before < 6 * mib, "a 1 MB tensor was mapped"
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33's malloc")
def test_large_blocks_get_their_own_mapping_whatever_was_freed_before():
    """In a fresh interpreter: in this one, earlier tests leave free heap chunks that a 5 MB tensor
    may fill whatever the threshold (glibc maps only what its free lists cannot serve)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", MAPPING_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_users_malloc_setting_holds(monkeypatch):
    monkeypatch.setattr(base, "_large_blocks_mapped", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not map_large_blocks()
    monkeypatch.setattr(base, "_large_blocks_mapped", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert not map_large_blocks()


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
def test_a_batch_in_three_passes_trains_like_one_pass(tmp_path, objective, monkeypatch):
    """Same losses at every step and the same weights after three steps: each pass's loss is its
    share of the whole batch's mean, and the gradients of every pass reach the optimiser step
    (Lightning zeroes gradients after the training step: a wrong order would keep only the last pass's)."""
    one, weights_one, _ = train(tmp_path / "one", f"objective={objective}", "optim.micro_batches=1")
    monkeypatch.setattr(base, "_large_blocks_mapped", None)
    three, weights_three, _ = train(tmp_path / "three", f"objective={objective}", "optim.micro_batches=3")
    assert_same_training(three, weights_three, one, weights_one)
    assert base._large_blocks_mapped or platform.libc_ver()[0] != "glibc"  # a split batch on CPU: large blocks mapped


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
