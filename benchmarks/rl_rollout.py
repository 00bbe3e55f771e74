"""Where an online-RL step spends its time: generation, reward scoring, the no-grad forward passes
(reference, critic, and the policy where the generator's log-probs are not its own) and the update,
per rollout, for PPO and GRPO on a random-init Llama, with either generation backend.

    python benchmarks/rl_rollout.py                              # the embedded tiny model
    python benchmarks/rl_rollout.py --hidden 256 --layers 4      # a wider random model (saved to a temp dir)
    .venv-vllm/bin/python benchmarks/rl_rollout.py --hidden 128 --layers 2 --generators hf vllm   # hf against vLLM

Each objective runs ``--steps`` rollouts with the real Lightning Trainer; the first ``--warmup``
are left out of the means. ``--forward-batch-size 1`` shows what unbatched reference / critic
forwards would cost; ``--padding-free off on`` runs the forward passes over each rollout padded
and padding-free (``data.padding_free``, decided as a run decides it). A wider model has head_dim 32 (vLLM's CPU attention rejects the tiny model's
16). Timings are wall-clock on whatever else the machine is running: compare rows of one
invocation, not runs on different days.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from statistics import mean

import lightning as L
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from rlhf_lab.config import DataConfig, ModelConfig, OptimConfig
from rlhf_lab.data.builtin import load_synthetic
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.models import TINY_DIR, ModelFactory, load_tokenizer
from rlhf_lab.objectives.grpo import GRPO
from rlhf_lab.objectives.ppo import PPO
from rlhf_lab.objectives.schemas import GRPOConfig, PPOConfig
from rlhf_lab.rewards import Reward

OBJECTIVES = {"ppo": (PPO, PPOConfig), "grpo": (GRPO, GRPOConfig)}
PHASES = ("generate", "score", "forward", "update")


def share_of_a(prompts, completions):
    return [c.count("a") / max(len(c), 1) for c in completions]


class StepTimes(L.Callback):
    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        row = {phase: float(metrics[f"time/{phase}_s"]) for phase in PHASES}
        row.update(step=time.perf_counter() - self.started, tokens_per_s=float(metrics["train/rollout_tokens_per_s"]),
                   response_length=float(metrics["train/response_length"]))
        self.rows.append(row)


def model_config(args) -> ModelConfig:
    if args.hidden is None:
        return ModelConfig()
    config = AutoConfig.from_pretrained(TINY_DIR, hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                                        head_dim=32, num_attention_heads=args.hidden // 32, num_key_value_heads=args.hidden // 32)
    where = tempfile.mkdtemp(prefix="rl_rollout_model_")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(where)
    load_tokenizer(ModelConfig()).save_pretrained(where)
    return ModelConfig(source="hf", name_or_path=where)


def run(name: str, args, model_cfg: ModelConfig, forward_batch_size: int, generator: str, padding_free: bool) -> dict[str, float]:
    system_cls, cfg_cls = OBJECTIVES[name]
    L.seed_everything(0, verbose=False)
    tokenizer = load_tokenizer(model_cfg)
    models = ModelFactory(model_cfg, tokenizer, lambda: Reward("share_of_a", share_of_a))
    cfg = cfg_cls(name=name, max_new_tokens=args.max_new_tokens, forward_batch_size=forward_batch_size, generator=generator,
                  vllm_kv_cache_gb=0.5, vllm_max_model_len=256)
    optim = OmegaConf.structured(OptimConfig(lr=1e-4, scheduler="constant"))
    system = system_cls(OmegaConf.structured(cfg), models=models, tokenizer=tokenizer, optim=optim)
    data_cfg = DataConfig(loader="synthetic", num_rows=4 * args.batch_size * args.steps, batch_size=args.batch_size, val_fraction=0, max_length=64,
                          padding_free=padding_free)
    data = DataModule(OmegaConf.structured(data_cfg), "prompt", system_cls.encode, Encoder(tokenizer, 64), {"synthetic": load_synthetic}, seed=0)
    if padding_free and data.pack(system.packing_blocker()):  # as rlhf_lab.app decides it
        system.packing = data.collate
    times = StepTimes()
    trainer = L.Trainer(max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[times])
    trainer.fit(system, datamodule=data)
    rows = times.rows[args.warmup :]
    return {key: mean(row[key] for row in rows) for key in rows[0]} | {"sequences": args.batch_size * system.samples_per_prompt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["ppo", "grpo"], choices=sorted(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per rollout (GRPO samples 4 completions each)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--forward-batch-size", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--generators", nargs="+", default=["hf"], choices=["hf", "vllm"])
    parser.add_argument("--padding-free", nargs="+", default=["off"], choices=["off", "on"], help="the rollout's forward passes padded / padding-free")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size of a wider random Llama (default: the tiny model, 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_cfg = model_config(args)
    params = sum(p.numel() for p in ModelFactory(model_cfg, load_tokenizer(model_cfg)).policy().parameters())
    print(f"policy: {params / 1e6:.2f}M parameters, {args.batch_size} prompts x {args.max_new_tokens} new tokens, "
          f"torch {torch.__version__}, {args.threads} thread(s), mean of steps {args.warmup + 1}..{args.steps}")
    header = f"{'objective':<9} {'gen':<5} {'fwd bs':>6} {'packed':>6} {'seqs':>5} {'step s':>7} " + " ".join(f"{p + ' s':>10}" for p in PHASES) + f" {'gen %':>6} {'rollout tok/s':>13} {'resp len':>8}"
    print(header)
    print("-" * len(header))
    for name in args.objectives:
        for generator in args.generators:
            for forward_batch_size, packed in itertools.product(args.forward_batch_size, args.padding_free):
                r = run(name, args, model_cfg, forward_batch_size, generator, packed == "on")
                phases = " ".join(f"{r[p]:>10.3f}" for p in PHASES)
                print(f"{name:<9} {generator:<5} {forward_batch_size:>6} {packed:>6} {r['sequences']:>5} {r['step']:>7.3f} {phases} "
                      f"{100 * r['generate'] / r['step']:>6.1f} {r['tokens_per_s']:>13.0f} {r['response_length']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
