"""rlhf_lab's GRPO and RLOO against TRL 1.x's GRPOTrainer and RLOOTrainer on the same online-RL job.

    python benchmarks/rl_vs_trl.py [--objectives grpo,rloo] [--systems rlhf_lab,trl,trl_no_gc]
        [--steps 20] [--seeds 0,1,2] [--out DIR] [--results benchmarks/RESULTS.md]

The job (issue 14): a tiny GPT-2 (random init, seed 0, no dropout) with rlhf_lab's embedded BPE
tokenizer (no chat template), 8 prompts x 4 completions per step, 24 new tokens at temperature 1
(no top-k / top-p), a dense Python reward (``reward`` below: the share of the letter 'a' in a
completion), AdamW lr 1e-4 constant without warmup, grad clip 1.0, KL coefficient ``--beta``
(GRPO: the k3 term in the loss; RLOO: the k1 sum in the reward), 20 steps, fp32, CPU. Each system
runs as its own process: ``python -m rlhf_lab ...`` and this script with ``--child trl``. The
whole-process wall time comes from ``os.wait4`` on that process (imports, model loading, training,
everything); the reward of every step from each system's own log.

Needs TRL (``pip install -c constraints/cpu.txt -e '.[bench]'``). Not run by the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

MODEL = dict(n_positions=128, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
JOB = dict(prompts=8, generations=4, new_tokens=24, lr=1e-4)
TOPICS = ("the garden", "a river trip", "winter bread", "the old tower", "a quiet robot", "music lessons",
          "the dragon castle", "silver rockets", "a lemon tree", "the candle shop")
# system -> rlhf_lab overrides or TRL config fields added to the job
SYSTEMS = {
    "rlhf_lab": [],
    "trl": [],  # TRL's defaults: gradient_checkpointing=True
    "trl_no_gc": ["gradient_checkpointing=false"],  # no recomputation: the same arithmetic as rlhf_lab
}
BETAS = {"grpo": 0.04, "rloo": 0.05}  # rlhf_lab's defaults (TRL's RLOO default too; TRL's GRPO default is 0.0)
MARKER_START, MARKER_END = "<!-- rl_vs_trl:start -->", "<!-- rl_vs_trl:end -->"


def reward(prompts, completions, **_):
    """The share of the letter 'a' among a completion's characters: dense, ~0.05 for a random policy."""
    return [c.count("a") / max(len(c), 1) for c in completions]


# --- the job ---------------------------------------------------------------------------------------

def build_job(out: Path, steps: int) -> tuple[Path, Path]:
    """(model directory, prompts JSONL): seeded, the same for every system."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(REPO))
    from rlhf_lab.models import TINY_DIR

    model_dir, data = out / "model", out / "prompts.jsonl"
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    tokenizer.chat_template = None  # plain-text prompts: both systems tokenise them the same way
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, **MODEL)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": f"Write a few words about {TOPICS[i % len(TOPICS)]} (note {i}):"} for i in range(steps * JOB["prompts"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def lab_command(objective: str, model_dir: Path, data: Path, run_dir: Path, steps: int, seed: int, extra: list[str],
                python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "rlhf_lab", f"objective={objective}", "model=hf", f"model.name_or_path={model_dir}",
        "data=jsonl", f"data.path={data}", "data.chat_template=never", f"data.batch_size={JOB['prompts']}", "data.val_fraction=0",
        f"objective.num_generations={JOB['generations']}", f"objective.max_new_tokens={JOB['new_tokens']}",
        f"objective.beta={BETAS[objective]}", f"optim.lr={JOB['lr']}", "optim.scheduler=constant", "optim.warmup_steps=0",
        f"trainer.max_steps={steps}", "reward=python", "reward.fn=rl_vs_trl:reward", "logger=csv", "trainer.log_every_n_steps=1",
        "export=false", "trainer.save_checkpoint=false", f"seed={seed}", f"hydra.run.dir={run_dir}", *extra,
    ]


def trl_command(objective: str, model_dir: Path, data: Path, run_dir: Path, steps: int, seed: int, extra: list[str],
                python: str = sys.executable) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--child", objective, "--model", str(model_dir), "--data", str(data),
            "--out", str(run_dir), "--steps", str(steps), "--seeds", str(seed), *(a for kv in extra for a in ("--set", kv))]


def run_child(cmd: list[str], log: Path, threads: int) -> tuple[int, float, float, int]:
    """(exit status, wall seconds, CPU seconds (user + system), peak RSS in MB) of one child process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CI": "1"}
    started = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def lab_rewards(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "metrics.csv") as fh:
        return [float(r["train/reward"]) for r in csv.DictReader(fh) if r.get("train/reward")]


# --- TRL, in its own process --------------------------------------------------------------------

def trl_child(args) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import trl
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback

    objective = args.child
    trainer_cls = {"grpo": trl.GRPOTrainer, "rloo": trl.RLOOTrainer}[objective]
    config_cls = {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[objective]
    fields = dict(
        output_dir=str(Path(args.out) / "trl"), per_device_train_batch_size=JOB["prompts"] * JOB["generations"],
        num_generations=JOB["generations"], max_completion_length=JOB["new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        beta=BETAS[objective], learning_rate=JOB["lr"], lr_scheduler_type="constant", warmup_steps=0, max_steps=args.steps,
        bf16=False, fp16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", seed=int(args.seeds),
        disable_tqdm=True, dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"},
    )
    for kv in args.set:
        key, value = kv.split("=", 1)
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value

    class RewardLog(TrainerCallback):
        rewards: list[float] = []

        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))

    log = RewardLog()
    trainer = trainer_cls(model=args.model, reward_funcs=reward, args=config_cls(**fields), callbacks=[log],
                          train_dataset=load_dataset("json", data_files=args.data, split="train"),
                          processing_class=AutoTokenizer.from_pretrained(args.model))
    trainer.train()
    (Path(args.out) / "rewards.json").write_text(json.dumps(log.rewards))


# --- report ----------------------------------------------------------------------------------------

def table(results: list[dict]) -> str:
    """One row per objective and system: means over seeds; speeds against the faster TRL variant."""
    lines = ["| objective | system | seeds | wall s | CPU s | speed vs TRL (wall) | speed vs TRL (CPU) | reward, steps 1-5 | reward, last 5 steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for objective in dict.fromkeys(r["objective"] for r in results):
        rows = [r for r in results if r["objective"] == objective]
        by_system = {s: [r for r in rows if r["system"] == s] for s in dict.fromkeys(r["system"] for r in rows)}
        wall = {s: mean(r["wall_s"] for r in rs) for s, rs in by_system.items()}
        cpu = {s: mean(r["cpu_s"] for r in rs) for s, rs in by_system.items()}
        trl = [s for s in by_system if s.startswith("trl")]
        best_wall, best_cpu = min((wall[s] for s in trl), default=None), min((cpu[s] for s in trl), default=None)
        for system, rs in by_system.items():
            speeds = f"{best_wall / wall[system]:.2f}x | {best_cpu / cpu[system]:.2f}x" if trl else "- | -"
            first = mean(mean(r["rewards"][:5]) for r in rs)
            last = mean(mean(r["rewards"][-5:]) for r in rs)
            lines.append(f"| {objective} | {system} | {len(rs)} | {wall[system]:.1f} | {cpu[system]:.1f} | {speeds} | {first:.4f} | {last:.4f} |")
    return "\n".join(lines)


def write_results(path: Path, results: list[dict], command: str) -> None:
    section = "\n".join([
        MARKER_START,
        f"Measured {dt.date.today()} on {platform.processor() or platform.machine()}, {os.cpu_count()} cores; command:",
        "", f"    {command}", "",
        "Speed is the faster TRL variant's mean whole-process time over this system's (higher is faster), wall",
        "clock and CPU time (user + system of the process: steadier on a shared machine); rewards are means over",
        "the seeds of the per-step mean reward.", "",
        table(results), "", "Per-run figures:", "", "```",
        *(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "rewards"}
                     | {"rewards": [round(x, 4) for x in r["rewards"]]}) for r in results),
        "```", MARKER_END,
    ])
    text = path.read_text() if path.exists() else ""
    if MARKER_START in text:
        head, rest = text.split(MARKER_START, 1)
        text = head + section + rest.split(MARKER_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Online RL against TRL: `rl_vs_trl.py`\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objectives", default="grpo,rloo")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every child (1: steady timings on a shared machine)")
    p.add_argument("--results", default=None, help="write the table into this markdown file (between markers)")
    p.add_argument("--report-only", default=None, metavar="RESULTS_JSON", help="rewrite the table from an earlier run's results.json")
    p.add_argument("--lab-set", action="append", default=[], metavar="OVERRIDE", help="an extra rlhf_lab override")
    # Each system in the environment its users install (pip install rlhf_lab / pip install trl): a shared one
    # imports what is installed for the other system too (torchmetrics imports scipy and matplotlib when present).
    p.add_argument("--lab-python", default=sys.executable, help="the interpreter that runs rlhf_lab (default: this one)")
    p.add_argument("--trl-python", default=sys.executable, help="the interpreter that runs TRL (default: this one)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return trl_child(args)
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
        print(table(results))
        if args.results:
            write_results(Path(args.results), results, "python " + " ".join(shlex.quote(a) for a in sys.argv))
        return

    out = Path(args.out or tempfile.mkdtemp(prefix="rl_vs_trl_"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir, data = build_job(out, args.steps)
    results = []
    for objective in args.objectives.split(","):
        for seed in map(int, args.seeds.split(",")):
            for system in args.systems.split(","):
                run_dir = out / objective / system / f"seed{seed}"
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                if system.startswith("rlhf_lab"):
                    cmd = lab_command(objective, model_dir, data, run_dir, args.steps, seed, [*SYSTEMS[system], *args.lab_set], args.lab_python)
                else:
                    cmd = trl_command(objective, model_dir, data, run_dir, args.steps, seed, SYSTEMS[system], args.trl_python)
                log = run_dir.with_suffix(".log")
                rc, wall, cpu, rss = run_child(cmd, log, args.threads)
                if rc != 0:
                    sys.exit(f"{system} {objective} seed {seed} failed ({rc}); see {log}")
                rewards = lab_rewards(run_dir) if system.startswith("rlhf_lab") else json.loads((run_dir / "rewards.json").read_text())
                result = dict(objective=objective, system=system, seed=seed, wall_s=wall, cpu_s=cpu, peak_rss_mb=rss, steps=len(rewards),
                              last5=mean(rewards[-5:]), rewards=rewards)
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "rewards"}), flush=True)
    (out / "results.json").write_text(json.dumps(results))
    print(table(results))
    if args.results:
        write_results(Path(args.results), results, "python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
