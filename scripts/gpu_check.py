"""The GPU check (``bash scripts/gpu_check.sh``): SFT and DPO in bf16-mixed on a ~0.5B-parameter
random-init Llama-shaped model, on one GPU, then SFT with DDP and with FSDP2 (NCCL) over every GPU
of the machine; prints tokens/s and MFU against the GPU's dense bf16 peak. Each run is the real
CLI (``python -m rlhf_lab``) in a directory of its own under ``--out``.

``--dry-run`` is the same path on the CPU at tiny shapes (a few steps; DDP and FSDP2 over 2 gloo
processes), for the tests and for checking the script where no GPU is.

MFU = tokens/s x 6N / (GPUs x peak), N the parameters that multiply (all but the input
embedding table), tokens the non-padding tokens trained on (chosen and rejected for DPO, whose
reference is computed before training and not timed); attention's sequence-length term is not
counted, so MFU is a slight underestimate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peaks (TFLOPS) from NVIDIA's data sheets, matched in order against the
# device name; None: not known (MFU shows n/a).
BF16_PEAK_TFLOPS = (
    ("GB200", 2500), ("B200", 2250), ("H200", 989), ("GH200", 989), ("H100 PCIe", 756), ("H100", 989), ("H800", 989),
    ("A100", 312), ("A800", 312), ("L40S", 362), ("L4", 121), ("A10G", None), ("A10", 125),
)
SHAPES = {  # Llama-shaped: ~0.47B parameters for the GPU, ~0.1M for the dry run
    "gpu": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                vocab_size=32000, max_position_embeddings=2048),
    "dry": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                vocab_size=512, max_position_embeddings=512),
}
WORDS = ("the quick brown fox jumps over a lazy dog while seven wise owls count silver stars above quiet green hills and "
         "rivers carry old stories from distant mountains toward warm cities where people share bread music and light").split()


def bf16_peak_tflops(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(tokens_per_s: float, n_params: int, gpus: int, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: 6N FLOPs (forward and backward) per token, over the GPUs' peak."""
    return tokens_per_s * 6 * n_params / (gpus * peak_tflops * 1e12) if peak_tflops else None


def build_model(out: Path, shape: dict) -> int:
    """A random-init Llama of ``shape`` with the embedded tokenizer, saved like a user's checkpoint;
    returns N, its parameters without the input embedding table."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig())
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def write_data(out: Path, prompt_words: int, answer_words: int, rows: int) -> tuple[Path, Path]:
    """SFT rows and preference pairs of random words (their length is what matters here)."""
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    sft, pairs = out / "sft.jsonl", out / "pairs.jsonl"
    sft.write_text("".join(json.dumps({"prompt": text(prompt_words), "completion": text(answer_words)}) + "\n" for _ in range(rows)))
    pairs.write_text("".join(
        json.dumps({"prompt": text(prompt_words), "chosen": text(answer_words // 2), "rejected": text(answer_words // 2)}) + "\n"
        for _ in range(rows)
    ))
    return sft, pairs


def run(name: str, out: Path, overrides: list[str]) -> dict:
    """``python -m rlhf_lab *overrides`` in ``out/name``; its summary.json, or exit with its log."""
    run_dir = out / name.replace(" ", "_")
    offline = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CI": "1"}
    env = {**os.environ, **offline}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlhf_lab", *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    (out / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"gpu_check: {name} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_s"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU at tiny shapes (gloo, 2 processes)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default 60 on a GPU, 3 dry)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows (DPO: pairs) per step and process (default 8, 4 dry)")
    parser.add_argument("--out", type=Path, default=None, help="where runs go (default outputs/gpu_check/<time>)")
    args = parser.parse_args()

    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU visible to torch (torch.cuda.is_available() is False); --dry-run runs the CPU path.")
    steps = args.steps or (3 if dry else 60)
    batch = args.batch_size or (4 if dry else 8)
    out = args.out or REPO / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=False)
    gpus = 0 if dry else torch.cuda.device_count()
    device = "cpu (dry run)" if dry else torch.cuda.get_device_name(0)
    peak = None if dry else bf16_peak_tflops(device)

    started = time.perf_counter()
    n_params = build_model(out / "model", SHAPES["dry" if dry else "gpu"])
    # ~1k-token SFT rows on a GPU (about 2.5 tokens per word with the embedded tokenizer)
    sft, pairs = write_data(out, *((6, 20, 64) if dry else (50, 360, 512)))
    max_length = 256 if dry else 1024
    common = [
        "model=hf", f"model.name_or_path={out / 'model'}", "data=jsonl", "data.val_fraction=0", f"data.max_length={max_length}",
        f"data.batch_size={batch}", f"trainer.max_steps={steps}", "trainer.precision=bf16-mixed", "logger=csv", "export=false",
        "trainer.save_checkpoint=false", "trainer.log_every_n_steps=1", "optim.warmup_steps=0",
    ]
    one = ["trainer=cpu"] if dry else ["trainer=gpu"]
    many = ["trainer.accelerator=cpu", "trainer.devices=2"] if dry else ["trainer.accelerator=gpu", f"trainer.devices={gpus}"]
    runs = [
        ("sft", 1, [*one, "objective=sft", f"data.path={sft}"]),
        ("dpo", 1, [*one, "objective=dpo", f"data.path={pairs}"]),
        ("sft ddp", 2 if dry else gpus, ["trainer=ddp", *many, "objective=sft", f"data.path={sft}"]),
        ("sft fsdp2", 2 if dry else gpus, ["trainer=fsdp", *many, "objective=sft", f"data.path={sft}"]),
    ]
    print(f"gpu_check: {device} x{max(gpus, 1)}, bf16 peak {f'{peak:g} TFLOPS' if peak else 'n/a'}; Llama-shaped model, "
          f"{n_params / 1e6:.1f}M parameters without the input embedding; {steps} steps of {batch} rows per process", flush=True)
    print(f"{'run':<10} {'procs':>5} {'tokens/s':>10} {'MFU':>7} {'peak GPU MB':>12} {'last loss':>10} {'wall s':>7}", flush=True)
    results = {}
    for name, procs, overrides in runs:
        s = run(name, out, common + overrides)
        tokens_per_s = s["train_tokens_per_s"]
        utilisation = mfu(tokens_per_s, n_params, procs, peak)
        memory = s.get("peak_gpu_mem_mb")
        results[name] = {"procs": procs, "tokens_per_s": tokens_per_s, "mfu": utilisation, "peak_gpu_mem_mb": memory,
                         "loss": s["train/loss"], "wall_s": s["wall_s"]}
        print(f"{name:<10} {procs:>5} {tokens_per_s:>10.0f} {f'{100 * utilisation:.1f}%' if utilisation is not None else 'n/a':>7} "
              f"{f'{memory:.0f}' if memory else 'n/a':>12} {s['train/loss']:>10.4f} {s['wall_s']:>7.1f}", flush=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "gpus": gpus, "bf16_peak_tflops": peak, "params": n_params,
                                                    "steps": steps, "batch_size": batch, "runs": results}, indent=2) + "\n")
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s; runs and logs in {out}", flush=True)


if __name__ == "__main__":
    main()
