"""Data at scale: rlhf_lab against TRL 1.x on 20k to 1M generated rows, one training step each.

    python benchmarks/data_scale.py [--sizes 20000,200000,1000000] [--kinds sft,preference]
        [--systems rlhf_lab,trl] [--out DIR] [--results benchmarks/RESULTS.md]

1. Builds the model directory of ``train_vs_trl.py`` (a Llama with hidden 128, 4 layers, vocabulary
   8192; rlhf_lab's tiny BPE tokenizer without a chat template), so both systems tokenise with the
   same tokenizer.
2. Writes, row by row, JSONL files of generated rows: a prompt of 10-60 words and completions of
   20-200 words (SFT: prompt + completion; preference: prompt, chosen, rejected).
3. Runs each system twice as its own process: SFT with ``objective=sft`` / ``SFTTrainer``, preference
   rows with ``objective=dpo`` / ``DPOTrainer``; max_length 256, batch 8, one training step, no
   validation, nothing saved. DPO's reference is live in both (TRL's default; rlhf_lab's default
   ``precompute`` scores every pair before the first step, which is not what this measures). The
   first run starts from empty caches (rlhf_lab's table cache, datasets' cache for TRL); the second
   run reuses them.
4. Records per run: wall time of the process (start to exit, one step included), its peak RSS
   (``wait4``: that process; a worker process it started counts with its own peak, not summed),
   and the data preparation time (rlhf_lab: the DataModule, ``data/prepare_s``; TRL: reading the
   JSONL with ``load_dataset`` and building the trainer, whose constructor tokenises).

Needs TRL (the ``bench`` extra). Not run by the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_vs_trl import REPO, build_model, merge_results, run_process, versions  # noqa: E402

OBJECTIVE = {"sft": "sft", "preference": "dpo"}
SYSTEMS = {
    "rlhf_lab": [],
    "rlhf_lab_np2": ["data.num_proc=2"],  # two tokenising worker processes
}
MARKER_START, MARKER_END = "<!-- data_scale:start -->", "<!-- data_scale:end -->"


def write_rows(path: Path, kind: str, n: int, seed: int = 0) -> None:
    """``n`` rows, written one at a time (the generator holds none of them)."""
    from rlhf_lab.data.synthetic import WORDS

    rng = random.Random(seed)
    words = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    with path.open("w") as out:
        for _ in range(n):
            prompt = words(10, 60).capitalize() + "?\n"
            if kind == "sft":
                row = {"prompt": prompt, "completion": words(20, 200)}
            else:
                row = {"prompt": prompt, "chosen": words(20, 200), "rejected": words(20, 200)}
            out.write(json.dumps(row) + "\n")


def lab_command(kind: str, model: Path, data: Path, work: Path, a, extra: list[str]) -> list[str]:
    overrides = [
        f"objective={OBJECTIVE[kind]}", "model=hf", f"model.name_or_path={model}", "data=jsonl", f"data.path={data}",
        f"data.batch_size={a.batch_size}", f"data.max_length={a.max_length}", "data.val_fraction=0", "data.chat_template=never",
        f"data.table_cache_dir={work / 'tables'}", "trainer.max_steps=1", "trainer.accelerator=cpu", "logger=none",
        "trainer.save_checkpoint=false", "export=false",
    ]
    if kind == "preference":
        overrides.append("objective.reference=live")
    return [sys.executable, "-m", "rlhf_lab", *overrides, *extra]


def trl_command(kind: str, model: Path, data: Path, work: Path, a) -> list[str]:
    return [
        sys.executable, str(HERE / "trl_runner.py"), "--objective", OBJECTIVE[kind], "--model", str(model), "--data", str(data),
        "--out", str(work / "clock.json"), "--workdir", str(work / "trl_out"), "--steps", "1", "--batch-size", str(a.batch_size),
        "--max-length", str(a.max_length),
    ]


def run_twice(system: str, kind: str, size: int, model: Path, data: Path, work: Path, a, env: dict) -> list[dict]:
    """The first run (empty caches) and the second (caches kept)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**env, "HF_DATASETS_CACHE": str(work / "hf_datasets")}  # TRL's tokenised datasets: empty for the first run
    runs = []
    for attempt in ("first", "second"):
        run_dir = work / f"run_{attempt}"
        if system.startswith("rlhf_lab"):
            command = [*lab_command(kind, model, data, work, a, SYSTEMS[system]), f"hydra.run.dir={run_dir}"]
        else:
            command = trl_command(kind, model, data, work, a)
        process = run_process(command, work / f"log_{attempt}.txt", env)
        if system.startswith("rlhf_lab"):
            summary = json.loads((run_dir / "summary.json").read_text())
            prepare, steps = summary["data/prepare_s"], summary["global_step"]
        else:
            clock = json.loads((work / "clock.json").read_text())
            prepare, steps = clock["setup_s"], clock["steps"]
        runs.append({"system": system, "kind": kind, "rows": size, "run": attempt, "steps": steps, "wall_s": round(process["wall_s"], 1),
                     "cpu_s": round(process["cpu_s"], 1), "peak_rss_mb": round(process["peak_rss_mb"]), "data_prep_s": round(prepare, 2),
                     "command": shlex.join(command)})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "command"}), flush=True)
    return runs


def markdown(results: list[dict], meta: dict) -> str:
    head = ("| rows | kind | system | first run: wall s | CPU s | data prep s | peak RSS MB | second run: wall s | CPU s | data prep s "
            "| peak RSS MB | second prep / first |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = ""
    keys = sorted({(r["rows"], r["kind"], r["system"]) for r in results}, key=lambda k: (k[0], k[1], k[2] != "rlhf_lab", k[2]))
    for rows, kind, system in keys:
        first, second = (next(r for r in results if (r["rows"], r["kind"], r["system"], r["run"]) == (rows, kind, system, run))
                         for run in ("first", "second"))
        lines += (f"| {rows:,} | {kind} | {system} | {first['wall_s']:.0f} | {first['cpu_s']:.0f} | {first['data_prep_s']:.1f} "
                  f"| {first['peak_rss_mb']:,} | {second['wall_s']:.0f} | {second['cpu_s']:.0f} | {second['data_prep_s']:.2f} | {second['peak_rss_mb']:,} "
                  f"| {second['data_prep_s'] / first['data_prep_s']:.1%} |\n")
    v = meta["versions"]
    names = [f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}" for n in sorted({r["rows"] for r in results})]
    sizes = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return (
        f"## Data at scale: rlhf_lab vs TRL, {sizes} rows — `benchmarks/data_scale.py`\n\n"
        f"Measured {meta['date']} on {meta['machine']}; torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
        f"rlhf_lab {v['rlhf_lab']}.\n\n```\n{meta['command']}\n```\n\n" + head + lines + (f"\n{meta['notes']}\n" if meta.get("notes") else "")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--sizes", default="20000,200000,1000000")
    p.add_argument("--kinds", default="sft,preference")
    p.add_argument("--systems", default="rlhf_lab,trl", help=f"in this order: {', '.join([*SYSTEMS, 'trl'])}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--results", type=Path, default=None, help="merge the table into this RESULTS.md")
    p.add_argument("--report-only", type=Path, default=None, metavar="RESULTS_JSON", help="no runs: the table of an earlier run")
    a = p.parse_args()
    if a.report_only:
        saved = json.loads(a.report_only.read_text())
        merge_results(a.results or HERE / "RESULTS.md", markdown(saved["results"], saved["meta"]), MARKER_START, MARKER_END)
        return

    out = a.out or Path(tempfile.mkdtemp(prefix="data_scale_"))
    out.mkdir(parents=True, exist_ok=True)
    model, _, _ = build_model(out, "lab")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "CI": "1",
           "RLHF_LAB_CACHE": str(out / "rlhf_lab_cache")}
    results = []
    previous = out / "results.json"
    if previous.exists():  # sizes run before into the same --out (the big ones at the end, one at a time)
        results = [r for r in json.loads(previous.read_text())["results"]]
    for size in map(int, a.sizes.split(",")):
        for kind in a.kinds.split(","):
            data = out / f"{kind}_{size}.jsonl"
            if not data.exists():
                write_rows(data, kind, size)
            for system in a.systems.split(","):
                results = [r for r in results if (r["rows"], r["kind"], r["system"]) != (size, kind, system)]
                results += run_twice(system, kind, size, model, data, out / f"{kind}_{size}" / system, a, env)
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} cores shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end)",
        "versions": versions(),
        "command": "python " + shlex.join([os.path.relpath(__file__, REPO), *sys.argv[1:]]),
    }
    previous.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if a.results:
        merge_results(a.results, markdown(results, meta), MARKER_START, MARKER_END)


if __name__ == "__main__":
    main()
