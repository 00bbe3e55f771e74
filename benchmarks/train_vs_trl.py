"""rlhf_lab against TRL 1.x on the same training jobs: DPO (DPOTrainer), reward model
(RewardTrainer) and SFT (SFTTrainer, loss_type nll).

    python benchmarks/train_vs_trl.py [--out DIR] [--objectives dpo,rm,sft] [--steps 128] [--repeat 1] [--model-shape lab|gpt2-small|llama-100m]
        [--systems rlhf_lab,trl,trl_no_gc,trl_precompute] [--results benchmarks/RESULTS.md]

1. Builds, deterministically, a local model directory (a Llama with hidden 128, 4 layers, 4 heads,
   vocabulary 8192 untied: small enough for 2 CPU cores, large enough that matmuls and the LM head
   dominate, as in real models) with rlhf_lab's tiny BPE tokenizer (no chat template), and a copy
   with a seeded scalar head for the reward model, so both systems start from identical weights.
2. Writes preference and SFT JSONL files of ``steps * batch_size`` rows (one epoch) with realistic
   length variation (12 to 128 tokens per sequence, none longer than max_length, so no system
   truncates or drops rows), prompts ending on a token boundary so that every system tokenises
   the same ids (checked).
3. Runs each system as its own process (``python -m rlhf_lab ...`` and ``benchmarks/trl_runner.py``):
   batch 16, max_length 128, beta 0.1, constant lr 1e-4, 128 steps, fp32, CPU, rows in file order.
4. Prints one JSON line per system and objective: train samples/s and non-padding tokens/s over
   the training time (fit + any reference precompute; model loading and tokenisation excluded),
   whole-process wall time, peak RSS of the process (``wait4``), step-0 loss, model FLOP/s and its
   share of this machine's measured fp32 matmul peak; then a ratio line per objective.

Needs TRL (``pip install -c constraints/cpu.txt trl``; the ``bench`` extra). Not run by the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

# --model-shape: the model the job trains, and the max_length it runs at. "lab" is the recorded table's
# model (vocabulary 8192, hidden 128: the LM head is most of the compute); the other two are shapes
# where the transformer body dominates, as in real models (issue 18): GPT-2 small (124M, its 50k
# vocabulary, tied) and a Llama of ~100M parameters, both at max_length 512.
SHAPES = {
    "lab": dict(model_type="llama", max_length=128, config=dict(
        vocab_size=8192, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, head_dim=32, max_position_embeddings=512, tie_word_embeddings=False,
        rms_norm_eps=1e-6, attention_dropout=0.0)),
    "gpt2-small": dict(model_type="gpt2", max_length=512, config=dict(
        vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama-100m": dict(model_type="llama", max_length=512, config=dict(
        vocab_size=32000, hidden_size=640, intermediate_size=1728, num_hidden_layers=10, num_attention_heads=10,
        num_key_value_heads=5, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=False,
        rms_norm_eps=1e-6, attention_dropout=0.0)),
}
# rlhf_lab's settings for the job (see RESULTS.md): padding-free packing into rows of at most
# max_length tokens (first fit, longest first), so no compute goes to padding and attention stays
# quadratic in a row of 128 tokens, not in the whole batch.
# (data.pack_width=128 keeps the rows of the recorded runs; the default is now the batch's longest sequence.)
LAB_FAST = {
    "dpo": ["objective.reference=precompute", "data.padding_free=true", "data.pack_width=128", "model.sparse_head=true"],
    "rm": ["data.padding_free=true", "data.pack_width=128"],
    "sft": ["data.padding_free=true", "data.pack_width=128", "model.sparse_head=true"],
}
# system name -> extra rlhf_lab overrides or TRL config fields; "trl" is TRL's defaults plus what the job pins.
SYSTEMS = {
    "rlhf_lab": [],
    "rlhf_lab_defaults": [],  # nothing but the job's settings: what a user gets (no LAB_FAST)
    "rlhf_lab_one_pass": ["optim.micro_batches=1"],  # the defaults, each batch in one forward/backward pass
    "rlhf_lab_grouped": ["data.group_by_length=true"],  # batches of similar lengths: less padding, other first batch
    "rlhf_lab_padded": ["data.padding_free=false"],  # padded to the longest sequence of each batch
    # Memory levers (see RESULTS.md, reward-model memory): the same optimiser steps on the same batches.
    "rlhf_lab_gc": ["model.gradient_checkpointing=true"],  # TRL's default lever: recompute every layer
    "rlhf_lab_micro2": ["data.batch_size={half}", "optim.accumulate_grad_batches=2"],  # each batch in 2 micro-batches
    "rlhf_lab_micro4": ["data.batch_size={quarter}", "optim.accumulate_grad_batches=4"],  # in 4
    "trl": ["gradient_checkpointing=true"],  # TRL's default (TrainingArguments' is False; TRL's _BaseConfig sets True)
    "trl_no_gc": ["gradient_checkpointing=false"],  # the same arithmetic as rlhf_lab: no recomputation
    "trl_precompute": ["gradient_checkpointing=true", "precompute_ref_log_probs=true"],  # DPO only
}
# Systems run for some objectives only: TRL's reference precompute is DPO's; the memory levers are
# measured where the memory target is tight (the reward model; see RESULTS.md).
MEMORY_LEVERS = ("rlhf_lab_gc", "rlhf_lab_micro2", "rlhf_lab_micro4")
ONLY_FOR = {"trl_precompute": {"dpo"}, **{lever: {"rm"} for lever in MEMORY_LEVERS}}
TOPICS = ("the garden", "a river trip", "winter bread", "the old tower", "a quiet robot", "music lessons",
          "the dragon castle", "silver rockets", "a lemon tree", "the candle shop")
SETUP_TEXT = """\
Same job for every system, each in its own process: a local Llama directory (hidden 128, 4 layers,
4 heads, intermediate 384, vocabulary 8192 untied, fp32; rlhf_lab's tiny BPE tokenizer, no chat
template), `steps * 16` rows of JSONL (12 to 126 tokens per sequence, mean 65; 38% of a padded
batch is padding in file order), batch 16, max_length 128 (nothing is truncated or dropped by
either system), beta 0.1, AdamW lr 1e-4 constant without warmup, grad clip 1.0, 128 steps (one
epoch), CPU, rows in file order (the first batches are identical, so the step-0 losses must be
equal, and they are; with equal batches the last losses agree to 1e-6 as well).

- **rlhf_lab**: `data.padding_free=true` (each batch packed into rows of at most 128 tokens, first
  fit longest first, position ids restarting per sequence: no compute on padding, attention
  quadratic in a 128-token row only), `model.sparse_head=true` (LM head only on completion
  positions), DPO `objective.reference=precompute` (a fresh cache directory: no cache hit).
  **rlhf_lab_padded**: the same with `data.padding_free=false` (padded to the longest sequence of
  each batch). Both see the same batches in the same order, so both are parity rows.
  Memory levers, reward model only (the same optimiser steps on the same batches, so the step-0
  loss is still equal): **rlhf_lab_gc** `model.gradient_checkpointing=true` (TRL's default lever);
  **rlhf_lab_micro2** / **rlhf_lab_micro4** each batch of 16 in 2 / 4 micro-batches
  (`data.batch_size=8 optim.accumulate_grad_batches=2`, `4` and `4`), gradients accumulated.
- **trl**: TRL 1.16 defaults except what the job pins (`bf16=False`, `use_cpu=True`, no eval or
  saving, `logging_steps=1`, `report_to=none`, a sequential sampler): so `gradient_checkpointing=True`
  (TRL's default), `padding_free=False` (ignored by DPO anyway), `precompute_ref_log_probs=False`
  (a live reference model), TRL's fused LM head (log-probs only on completion tokens, in tiles),
  `loss_type=sigmoid` / `nll`, `optim=adamw_torch_fused`. **trl_no_gc**: the same with
  `gradient_checkpointing=False` (no recomputation: the same arithmetic as rlhf_lab).
  **trl_precompute** (DPO): TRL's own reference precompute, timed inside train time. (TRL's
  gradient checkpointing changed nothing measurable for DPO here; for the reward model it costs
  20% of throughput and saves 100 MB.)
- samples/s and tokens/s (non-padding tokens, counted from the batches each system trained on) are
  over the training time: fit start to last step, including any reference precompute, excluding
  model loading and tokenisation; wall is the whole process; peak RSS from `wait4` of that process.
- Model FLOPs, the same count for every system (the job's work, not an implementation's): per token
  6 x non-embedding layer parameters + causal attention 6 x layers x d x position, the LM head
  (6 x d x V) only on scored (completion) tokens, DPO + 1/3 for the reference forward. MFU = model
  FLOP/s / measured fp32 matmul peak.
- Why rows and not one packed row: on CPU transformers' sdpa attends over a packed row with a dense
  block-diagonal mask, quadratic in the row; a whole DPO batch in one row (about 2,100 tokens) took
  2.0x as long as padded (1 thread, 16 pairs: 2.52 s vs 1.24 s).
"""
TARGETS = {"dpo": 2.0, "rm": 1.5, "sft": 1.5}  # the issue: rlhf_lab's throughput over TRL's, at equal or lower peak RSS
MARKER_START, MARKER_END = "<!-- train_vs_trl:start -->", "<!-- train_vs_trl:end -->"


# --- model and data ---------------------------------------------------------------------------

def build_model(out: Path, shape: str) -> tuple[Path, Path, dict]:
    """(causal-LM directory, reward-model directory, dims for the FLOP count): the same seeded
    weights, the second with a seeded one-label score head (a fresh head would be initialised
    differently by each system)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, CONFIG_MAPPING

    from rlhf_lab.models import TINY_DIR

    spec = SHAPES[shape]
    lm_dir, rm_dir = out / "model", out / "model_rm"
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    tokenizer.chat_template = None  # plain-text rows: both systems tokenise prompt + completion the same way
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config_cls = CONFIG_MAPPING[spec["model_type"]]
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config_cls(**spec["config"], **ids))
    lm.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_config(config_cls(**spec["config"], **ids, num_labels=1))
    getattr(rm, rm.base_model_prefix).load_state_dict(getattr(lm, lm.base_model_prefix).state_dict())
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    text = lm.config.get_text_config()
    body = getattr(lm, lm.base_model_prefix)
    layers = next(m for m in body.modules() if isinstance(m, torch.nn.ModuleList))
    dims = dict(d=text.hidden_size, layers=len(layers), vocab=text.vocab_size,
                layer_params=sum(p.numel() for p in layers[0].parameters()),
                params=sum(p.numel() for p in lm.parameters()))
    return lm_dir, rm_dir, dims


def _words(rng: random.Random, n: int) -> str:
    from rlhf_lab.data.synthetic import WORDS

    return " ".join(rng.choice(WORDS) for _ in range(n))


def build_data(out: Path, rows: int, tokenizer, max_length: int, seed: int = 0) -> tuple[Path, Path, dict]:
    """Preference and SFT JSONL files; every sequence fits in max_length (lengths scale with it:
    12 to 128 tokens at 128). Returns the token lengths."""
    rng = random.Random(seed)
    scale = max_length / 128
    eos = tokenizer.eos_token
    pref, sft, lengths = [], [], {"prompt": [], "chosen": [], "rejected": [], "completion": []}

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    while len(pref) < rows:
        prompt = f"Write about {rng.choice(TOPICS)}: {_words(rng, int(rng.triangular(3, 60 * scale, 12 * scale)))}.\n"
        chosen = _words(rng, int(rng.triangular(1, 64 * scale, 10 * scale))).capitalize() + "."
        rejected = _words(rng, int(rng.triangular(1, 64 * scale, 10 * scale))).capitalize() + "."
        p, c, r = n_tokens(prompt), n_tokens(chosen) + 1, n_tokens(rejected) + 1  # + EOS
        if p + max(c, r) > max_length:
            continue
        for completion in (chosen, rejected):  # same ids whether tokenised apart (rlhf_lab) or joined (TRL)
            joined = tokenizer(prompt + completion + eos, add_special_tokens=False)["input_ids"]
            apart = tokenizer(prompt)["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            assert joined == apart, (prompt, completion)
        pref.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        sft.append({"prompt": prompt, "completion": chosen})
        for key, value in (("prompt", p), ("chosen", c), ("rejected", r), ("completion", c)):
            lengths[key].append(value)
    pref_path, sft_path = out / "preference.jsonl", out / "sft.jsonl"
    pref_path.write_text("".join(json.dumps(r) + "\n" for r in pref))
    sft_path.write_text("".join(json.dumps(r) + "\n" for r in sft))
    return pref_path, sft_path, lengths


# --- FLOPs --------------------------------------------------------------------------------------

def job_flops(objective: str, lengths: dict, reference: bool, dims: dict) -> float:
    """Model FLOPs of one epoch of the job, the same number for both systems (it counts the work the
    job needs, not what an implementation does): 6 * N_layers per token, 6 * d * ctx per token and
    layer for causal attention (QK^T and AV), and the LM head (6 * d * V) only where a next token is
    scored (completions); the reward model's head is one dot product. DPO adds the reference forward
    (a third of the training figure) for every token."""
    d, layers, vocab, per_layer = dims["d"], dims["layers"], dims["vocab"], dims["layer_params"]
    seqs = (
        [(p, lengths["completion"][i]) for i, p in enumerate(lengths["prompt"])]
        if objective == "sft"
        else [(p, lengths[k][i]) for k in ("chosen", "rejected") for i, p in enumerate(lengths["prompt"])]
    )
    total = 0.0
    for prompt, completion in seqs:
        n = prompt + completion
        body = 6 * layers * per_layer * n + 6 * layers * d * n * (n + 1) / 2
        head = 6 * d * vocab * completion if objective != "rm" else 6 * d * n
        total += body + head
    return total * (4 / 3 if objective == "dpo" and reference else 1.0)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 FLOP/s of an n x n matmul on this machine, all threads torch uses."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - started) / 3)
    return 2 * n**3 / best


# --- running the systems ---------------------------------------------------------------------------

def run_process(args: list[str], log: Path, env: dict) -> dict:
    """Run a command to the end; its wall time and peak RSS (``wait4``: this child alone)."""
    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{shlex.join(args)} failed ({proc.returncode}); end of {log}:\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def lab_command(objective: str, model_dir: Path, data: Path, work: Path, a, extra: list[str]) -> list[str]:
    overrides = [
        f"objective={objective}", "model=hf", f"model.name_or_path={model_dir}", "data=jsonl", f"data.path={data}",
        f"data.batch_size={a.batch_size}", f"data.max_length={a.max_length}", "data.shuffle=false", "data.val_fraction=0",
        "data.chat_template=never", f"optim.lr={a.lr}", "optim.scheduler=constant", "optim.warmup_steps=0",
        f"trainer.max_steps={a.steps}", "trainer.accelerator=cpu", "trainer.precision=32-true", "logger=none",
        "trainer.save_checkpoint=false", "export=false", f"seed={a.seed}", f"hydra.run.dir={work / 'run'}",
        "+callbacks.clock._target_=bench_clock.FitClock", f"+callbacks.clock.out={work / 'clock.json'}",
    ]
    if objective == "dpo":
        overrides += [f"objective.beta={a.beta}", f"objective.ref_cache_dir={work / 'ref_cache'}"]  # a fresh cache: no hit
    fast = [] if {"rlhf_lab_defaults", "rlhf_lab_one_pass"} & set(work.parts) else LAB_FAST[objective]
    return [sys.executable, "-m", "rlhf_lab", *overrides, *fast, *extra]


def trl_command(objective: str, model_dir: Path, data: Path, work: Path, a, extra: list[str]) -> list[str]:
    return [
        sys.executable, str(HERE / "trl_runner.py"), "--objective", objective, "--model", str(model_dir), "--data", str(data),
        "--out", str(work / "clock.json"), "--workdir", str(work / "trl_out"), "--steps", str(a.steps),
        "--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--lr", str(a.lr), "--beta", str(a.beta),
        "--seed", str(a.seed), *(f"--set={kv}" for kv in extra),
    ]


def run_system(system: str, objective: str, command: list[str], work: Path, env: dict, flops: float, peak: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)  # rlhf_lab never overwrites a run dir; a re-run starts clean
    work.mkdir(parents=True)
    process = run_process(command, work / "log.txt", env)
    clock = json.loads((work / "clock.json").read_text())
    t = clock["train_time_s"]
    return {
        "objective": objective,
        "system": system,
        "train_samples_per_s": round(clock["samples"] / t, 2),
        "train_tokens_per_s": round(clock["tokens"] / t, 1),
        "train_time_s": round(t, 2),
        "of_which_reference_precompute_s": round(clock["setup_in_train_s"], 2),
        "wall_s": round(process["wall_s"], 2),
        "cpu_s": round(process["cpu_s"], 1),  # user + system CPU time of the process: less sensitive to a busy machine
        "peak_rss_mb": round(process["peak_rss_mb"], 1),
        "loss_step0": clock["loss_step0"],
        "loss_last": clock["loss_last"],
        "steps": clock["steps"],
        "samples": clock["samples"],
        "tokens": clock["tokens"],
        "model_tflop_per_s": round(flops / t / 1e12, 4),
        "mfu": round(flops / t / peak, 4),
        **({"trl_options": clock["options"]} if "options" in clock else {}),
        "command": shlex.join(command),
    }


MEDIAN_OF = ("train_samples_per_s", "train_tokens_per_s", "train_time_s", "of_which_reference_precompute_s", "wall_s", "cpu_s",
             "peak_rss_mb", "model_tflop_per_s", "mfu")


def median_run(runs: list[dict]) -> dict:
    """One system's ``--repeat`` runs as one line: the median of each measured figure (each on its
    own), the losses of the first run (every run computes the same ones), and every run's samples/s
    and peak RSS, in the order they ran."""
    if len(runs) == 1:
        return runs[0]
    return {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in MEDIAN_OF},
            "runs_samples_per_s": [r["train_samples_per_s"] for r in runs], "runs_peak_rss_mb": [r["peak_rss_mb"] for r in runs]}


def ratios(objective: str, lab: dict, trl: dict, against: str, system: str = "rlhf_lab") -> dict:
    paired = [x / y for x, y in zip(lab.get("runs_samples_per_s", []), trl.get("runs_samples_per_s", []))]
    return {
        "objective": objective,
        "ratio": f"{system} / {against}",
        "train_samples_per_s": round(lab["train_samples_per_s"] / trl["train_samples_per_s"], 3),
        # --repeat: each round's ratio (the two runs closest in time), which this VM's drift moves less than the medians
        **({"train_samples_per_s_by_round": [round(r, 3) for r in paired]} if paired else {}),
        "train_tokens_per_s": round(lab["train_tokens_per_s"] / trl["train_tokens_per_s"], 3),
        "wall_s": round(lab["wall_s"] / trl["wall_s"], 3),
        "peak_rss_mb": round(lab["peak_rss_mb"] / trl["peak_rss_mb"], 3),
        "loss_step0_abs_diff": abs(lab["loss_step0"] - trl["loss_step0"]),
    }


def all_ratios(results: list[dict]) -> list[dict]:
    """Every rlhf_lab variant against every TRL variant, per objective."""
    lines = []
    for lab in [r for r in results if r["system"].startswith("rlhf_lab")]:
        for trl in [r for r in results if r["objective"] == lab["objective"] and not r["system"].startswith("rlhf_lab")]:
            lines.append(ratios(lab["objective"], lab, trl, trl["system"], lab["system"]))
    return lines


# --- report --------------------------------------------------------------------------------------

def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "trl", "lightning", "rlhf_lab")}


def spread(values: list[float] | None, digits: int = 1, unit: str = "") -> str:
    """`` (min-max of N)`` after the median of ``--repeat`` runs; nothing after a single run."""
    return f" ({min(values):.{digits}f}-{max(values):.{digits}f}{unit}, {len(values)} runs)" if values else ""


def markdown(results: list[dict], ratio_lines: list[dict], meta: dict) -> str:
    head = ("| objective | system | samples/s | tokens/s | train s (ref precompute) | wall s | peak RSS MB "
            "| loss step 0 | model TFLOP/s | MFU |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = "".join(
        f"| {r['objective']} | {r['system']} | {r['train_samples_per_s']:.1f}{spread(r.get('runs_samples_per_s'))} | {r['train_tokens_per_s']:.0f} "
        f"| {r['train_time_s']:.1f} ({r['of_which_reference_precompute_s']:.1f}) | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f}{spread(r.get('runs_peak_rss_mb'), 0)} "
        f"| {r['loss_step0']:.4f} | {r['model_tflop_per_s']:.3f} | {r['mfu']:.1%} |\n"
        for r in results
    )
    ratio_head = "\n| objective | ratio | samples/s | tokens/s | wall | peak RSS | step-0 loss diff |\n|---|---|---:|---:|---:|---:|---:|\n"
    ratio_rows = "".join(
        f"| {r['objective']} | {r['ratio']} | {r['train_samples_per_s']:.2f}x{spread(r.get('train_samples_per_s_by_round'), 2, 'x by round')} "
        f"| {r['train_tokens_per_s']:.2f}x "
        f"| {r['wall_s']:.2f}x | {r['peak_rss_mb']:.2f}x | {r['loss_step0_abs_diff']:.1e} |\n"
        for r in ratio_lines
    )
    ratio_rows += "\nTargets (rlhf_lab, parity settings, against TRL's defaults):\n\n" 
    v = meta["versions"]
    targets = "".join(
        f"- {r['objective']}, {r['ratio']}: throughput {r['train_samples_per_s']:.2f}x "
        f"(target {TARGETS[r['objective']]}x: {'met' if r['train_samples_per_s'] >= TARGETS[r['objective']] else 'NOT met'}), "
        f"peak RSS {r['peak_rss_mb']:.2f}x ({'met' if r['peak_rss_mb'] <= 1 else 'NOT met'})\n"
        for r in ratio_lines
        if r["ratio"].endswith("/ trl") and r["ratio"].split(" / ")[0] in ("rlhf_lab", *MEMORY_LEVERS)
    )
    shape = meta.get("shape", "lab")
    if shape == "lab":
        title, setup = "## Training: rlhf_lab vs TRL (DPO, reward model, SFT) — `benchmarks/train_vs_trl.py`\n\n", SETUP_TEXT
    else:
        m = meta["model"]
        title = f"### Training vs TRL on the `{shape}` shape — `benchmarks/train_vs_trl.py --model-shape {shape}`\n\n"
        setup = (f"The job above on another model: {m['model_type']}, {m['layers']} layers, width {m['d']}, vocabulary "
                 f"{m['vocab']}, {m['params'] / 1e6:.0f}M parameters, fp32, max_length {m['max_length']} (sequences "
                 f"{m['mean_tokens']} tokens on average, the rows' lengths scaled to it).\n\n")
    return (
        title
        + setup
        + f"Measured {meta['date']} on {meta['machine']}; fp32 matmul peak {meta['peak_gflops']:.1f} GFLOP/s "
        f"(best of 5, 2048x2048). torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
        f"lightning {v['lightning']}, rlhf_lab {v['rlhf_lab']}.\n\n"
        f"```\n{meta['command']}\n```\n\n" + head + rows + ratio_head + ratio_rows + targets
    )


def shape_markers(shape: str) -> tuple[str, str]:
    """The RESULTS.md markers of a shape's section (the lab shape keeps the original ones)."""
    return (MARKER_START, MARKER_END) if shape == "lab" else (f"<!-- train_vs_trl:{shape}:start -->", f"<!-- train_vs_trl:{shape}:end -->")


def merge_results(path: Path, section: str, start: str = MARKER_START, end: str = MARKER_END) -> None:
    """Replace the section between the markers (or append it); keep every other section."""
    block = f"{start}\n{section}{end}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--objectives", default="dpo,rm,sft")
    p.add_argument("--systems", default="rlhf_lab,trl,trl_no_gc,trl_precompute", help=f"which to run, in this order: {', '.join(SYSTEMS)}")
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--repeat", type=int, default=1, help="runs of each system, interleaved; the tables give the medians")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model-shape", choices=sorted(SHAPES), default="lab", help="the model trained (see SHAPES)")
    p.add_argument("--max-length", type=int, default=None, help="default: the shape's (128 for lab, 512 for the others)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lab-set", action="append", default=[], metavar="OVERRIDE", help="extra rlhf_lab Hydra override")
    p.add_argument("--trl-set", action="append", default=[], metavar="KEY=VALUE", help="extra TRL config field")
    p.add_argument("--results", type=Path, default=None, help="merge the table into this RESULTS.md")
    p.add_argument("--report-only", type=Path, default=None, metavar="RESULTS_JSON",
                   help="no runs: merge the table of an earlier run's <out>/results.json into --results")
    a = p.parse_args()
    a.max_length = a.max_length or SHAPES[a.model_shape]["max_length"]
    if a.report_only:
        saved = json.loads(a.report_only.read_text())
        meta = saved["meta"]
        merge_results(a.results or HERE / "RESULTS.md", markdown(saved["results"], all_ratios(saved["results"]), meta), *shape_markers(meta.get("shape", "lab")))
        return

    from transformers import AutoTokenizer

    out = a.out or Path(tempfile.mkdtemp(prefix="train_vs_trl_"))
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak()
    lm_dir, rm_dir, dims = build_model(out, a.model_shape)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    pref, sft, lengths = build_data(out, a.steps * a.batch_size, tokenizer, a.max_length)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "CI": "1"}

    results, ratio_lines = [], []
    for objective in a.objectives.split(","):
        model_dir = rm_dir if objective == "rm" else lm_dir
        data = sft if objective == "sft" else pref
        flops = job_flops(objective, lengths, reference=True, dims=dims)
        plan = [s for s in a.systems.split(",") if objective in ONLY_FOR.get(s, {objective})]
        rounds: dict[str, list[dict]] = {s: [] for s in plan}
        for round_ in range(a.repeat):  # interleaved, every other round in reverse: drift hits every system alike
            for system in plan if round_ % 2 == 0 else plan[::-1]:
                work = out / objective / system / (f"run{round_}" if a.repeat > 1 else "")
                if system.startswith("rlhf_lab"):
                    own = [o.format(half=a.batch_size // 2, quarter=a.batch_size // 4) for o in SYSTEMS[system]]
                    command = lab_command(objective, model_dir, data, work, a, [*own, *a.lab_set])
                else:
                    command = trl_command(objective, model_dir, data, work, a, [*SYSTEMS[system], *a.trl_set])
                rounds[system].append(run_system(system, objective, command, work, env, flops, peak))
                print(json.dumps({k: v for k, v in rounds[system][-1].items() if k != "command"}), flush=True)
        runs = {system: median_run(done) for system, done in rounds.items()}
        for line in all_ratios(list(runs.values())):
            ratio_lines.append(line)
            print(json.dumps(line), flush=True)
        results += runs.values()

    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}",
        "peak_gflops": peak / 1e9,
        "shape": a.model_shape,
        "model": {**dims, "model_type": SHAPES[a.model_shape]["model_type"], "max_length": a.max_length,
                  "mean_tokens": round(sum(lengths["prompt"]) / len(lengths["prompt"]) + sum(lengths["completion"]) / len(lengths["completion"]), 1)},
        "versions": versions(),
        "command": "python " + shlex.join([os.path.relpath(__file__, REPO), *sys.argv[1:]]),
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratio_lines}, indent=1))
    print(json.dumps({"meta": meta, "work_dir": str(out)}))
    if a.results:
        merge_results(a.results, markdown(results, ratio_lines, meta), *shape_markers(meta.get("shape", "lab")))


if __name__ == "__main__":
    main()
