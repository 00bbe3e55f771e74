"""Kill a real run at random moments, requeue it the way SLURM would, and check that it ends as one
uninterrupted run: the same weights, metrics.csv row for row, and summary (timings aside).

    python scripts/requeue_fuzz.py --chains 100 [--kills 2] [--out DIR] [overrides...]

One reference run of the job, then ``--chains`` times: ``--kills`` launches with ``resume=auto``,
each SIGKILLed at a random moment after it claims its run directory, and a last launch that
finishes. Each chain that ends differently is kept under ``--out`` with what was on disk at each
kill; the exit status is 1 if any did. The default job is the one tests/cli/test_faults.py kills
(SFT, 20 steps, a checkpoint every 6, validation every 4); add ``objective=dpo`` for DPO,
``objective=grpo`` for online RL (its ``time/*`` and ``*_per_s`` columns are not compared). In ~110
chains it found the three resume bugs fixed on 2026-12-02, each now a named-point test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = ["trainer.max_steps=20", "data.num_rows=200", "logger=csv", "trainer.checkpoint_every_n_steps=6",
       "trainer.val_check_interval=4", "trainer.log_every_n_steps=1"]  # fmt: skip
TIMINGS = {"wall_s", "cpu_s", "peak_rss_mb", "train_samples_per_s", "train_tokens_per_s", "train_time_s", "model_dir",
           "data/prepare_s", "data/tables_cached"}  # fmt: skip


def timing(key: str) -> bool:
    """Whether a summary key or metrics column measures the run (time, speed, memory) rather than its result."""
    return key in TIMINGS or key.startswith("time/") or key.endswith("_per_s")


def without_timings(path: Path) -> list[dict]:
    import csv

    with open(path) as fh:
        return [{k: v for k, v in row.items() if not timing(k)} for row in csv.DictReader(fh)]


def launch(run_dir: Path, overrides: list[str], env: dict, kill_after: float | None) -> subprocess.CompletedProcess | list[str]:
    """The job in ``run_dir``; with ``kill_after``, SIGKILLed that many seconds after it claims the
    directory, returning what was on disk then."""
    cmd = [sys.executable, "-m", "rlhf_lab", *overrides, "resume=auto", f"hydra.run.dir={run_dir}"]
    if kill_after is None:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = run_dir / ".rlhf_lab.lock"
    while not (lock.exists() and lock.read_text().startswith(f"pid {proc.pid} ")):
        if proc.poll() is not None:
            return ["(exited before the kill)"]
        time.sleep(0.01)
    time.sleep(kill_after)
    proc.kill()
    proc.wait()
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".hydra" not in p.parts)


def differences(run_dir: Path, reference: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file

    found = []
    a, b = load_file(run_dir / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in b):
        found.append("weights")
    if without_timings(run_dir / "metrics.csv") != without_timings(reference / "metrics.csv"):
        found.append("metrics.csv")
    mine, full = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    if {k: v for k, v in mine.items() if not timing(k)} != {k: v for k, v in full.items() if not timing(k)}:
        found.append("summary.json")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--kills", type=int, default=2, help="killed launches per chain before the one that finishes")
    parser.add_argument("--window", type=float, nargs=2, default=(0.0, 2.4), help="seconds after start-up to kill within")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where to keep failed chains (default: a temporary directory)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to the job's")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="requeue_fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    overrides = JOB + args.overrides
    env = {**os.environ, "RLHF_LAB_CACHE": str(out / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    reference = out / "reference"
    done = launch(reference, overrides, env, None)
    if done.returncode:
        print(done.stdout + done.stderr, file=sys.stderr)
        return 1
    rng, failed = random.Random(args.seed), 0
    for chain in range(args.chains):
        run_dir = out / f"chain{chain:04d}"
        kills = []
        for _ in range(args.kills):
            if (run_dir / "summary.json").exists():
                break
            delay = rng.uniform(*args.window)
            kills.append({"kill_after_s": round(delay, 3), "on_disk": launch(run_dir, overrides, env, delay)})
        final = launch(run_dir, overrides, env, None)
        found = [f"exit {final.returncode}"] if final.returncode else differences(run_dir, reference)
        print(f"chain {chain}: {'differs: ' + ', '.join(found) if found else 'same as uninterrupted'}", flush=True)
        if found:
            failed += 1
            (run_dir / "fuzz.json").write_text(json.dumps({"differs": found, "kills": kills}, indent=1))
            (run_dir / "final.log").write_text(final.stdout + final.stderr)
        else:
            shutil.rmtree(run_dir)
    print(f"{failed} of {args.chains} chains differ from the uninterrupted run; kept under {out}" if failed else
          f"all {args.chains} chains ended as the uninterrupted run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
