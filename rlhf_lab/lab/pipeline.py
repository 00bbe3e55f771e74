"""Pipelines (``pipeline=rlhf``, ``dpo``, ``kto``, ``compare``): stages that each run
``python -m rlhf_lab`` in a subprocess, in ``<pipeline dir>/<stage>/``, so DDP, failures and
``resume=auto`` work as in any run.

``pipeline.jobs`` stages run at a time: a stage starts once the stages it reads (its ``init`` and
every ``{stage}`` in its overrides) are done, in the order listed; with more than one job, each
stage's torch gets ``cpu_count // jobs`` threads (``OMP_NUM_THREADS``, unless already set), so
concurrent stages share the cores instead of oversubscribing them. Their output interleaves on the
terminal; each stage's own log is ``<stage>/rlhf_lab.log``.

Each stage's interpreter imports the training stack (~5-10 s of CPU) before it can start, so the
next stages to run (one per job) are started ahead of their turn ("on standby",
``RLHF_LAB_STANDBY``): each imports the modules a training run needs while the stages before it
run, on the cores they leave idle (see ``wait_for_turn``), then waits for a line on its stdin,
"go" to start or end-of-file to exit without running. It is otherwise the same process, with the
same command line, as a stage started when its turn comes.

SIGTERM to the pipeline (a scheduler's preemption, a container's stop, ``kill``) reaches its
running stages, which save a checkpoint and exit, and the pipeline exits 143 once they have. A
pipeline that dies at once (SIGKILL) takes its stages with it: each stage asks the kernel for
SIGTERM when the pipeline's process ends (Linux, ``follow_pipeline``), so none is left behind
training and holding its run directory while the job is requeued.

A stage with a ``summary.json`` is done and skipped: a re-run of the pipeline (``resume=auto
hydra.run.dir=<pipeline dir>``) continues from the first unfinished stage, which itself continues
from its newest checkpoint. A failed stage stops the pipeline. A stage's command line is

    its overrides from conf/pipeline/<name>.yaml ("{rm}" = the rm stage's directory)
    + the pipeline's own command-line overrides (``objective.*`` go to the last stage only)
    + model=hf model.name_or_path=<init stage>/model   when the stage starts from an earlier one
    + seed=<the pipeline's seed + seed_offset>          when the stage sets a seed_offset
    + experiment=<one W&B group for the whole pipeline> resume=auto hydra.run.dir=<stage dir>
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from string import Formatter
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf_lab.errors import Preempted, RlhfLabError

log = logging.getLogger(__name__)


STANDBY_ENV = "RLHF_LAB_STANDBY"
PIPELINE_ENV = "RLHF_LAB_PIPELINE_PID"  # in a stage's environment: the pipeline's process id
PR_SET_PDEATHSIG = 1  # prctl(2)


class StageFailed(RlhfLabError):
    """A stage of a pipeline exited with an error; the stages after it did not run."""


def stage_command(cfg: DictConfig, run_dir: Path, name: str, group: str, cli_overrides: list[str]) -> list[str]:
    stages = cfg.pipeline.stages
    dirs = {stage: str(run_dir / stage) for stage in stages}
    last = list(stages)[-1]
    own = [o.format(**dirs) for o in stages[name].overrides]
    passed = [o for o in cli_overrides if name == last or not o.lstrip("+~").startswith("objective")]
    init = stages[name].init
    start = ["model=hf", f"model.name_or_path={run_dir / init / 'model'}"] if init else []
    seed = [f"seed={cfg.seed + stages[name].seed_offset}"] if stages[name].seed_offset else []
    return [sys.executable, "-m", "rlhf_lab", *own, *passed, *start, *seed, f"experiment={group}", "resume=auto", f"hydra.run.dir={dirs[name]}"]


def reads(cfg: DictConfig, name: str) -> set[str]:
    """The stages whose outputs stage ``name`` reads: its ``init`` and every "{stage}" in its overrides."""
    stage = cfg.pipeline.stages[name]
    fields = {field for o in stage.overrides for _, field, _, _ in Formatter().parse(o) if field}
    return fields | ({stage.init} if stage.init else set())


def stage_env(jobs: int) -> dict | None:
    """One job per core share: ``jobs`` concurrent stages, each with cpu_count // jobs torch threads."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def follow_pipeline() -> None:
    """In a pipeline's stage: have the kernel send this process SIGTERM when the pipeline's process
    ends (Linux's parent-death signal), the signal a preempted job gets, so that a stage training
    saves a checkpoint and exits instead of training on alone, holding its run directory, after
    its pipeline was killed. Elsewhere, a no-op."""
    pipeline = os.environ.pop(PIPELINE_ENV, None)
    if pipeline is None or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: the stage outlives its pipeline as any process would
        return
    if os.getppid() != int(pipeline):  # the pipeline ended before the request: it would never come
        os.kill(os.getpid(), signal.SIGTERM)


def wait_for_turn() -> None:
    """In a stage started on standby: import the training stack, then wait for the pipeline to say
    "go"; exit quietly if it closes the pipe instead (an earlier stage failed, or it was stopped).

    The imports run in a thread of the lowest priority (``SCHED_IDLE``, Linux): they take a core
    only while the stage before this one leaves it idle. At the same priority they took one of its
    two cores from a stage training with two threads, which then waited at each parallel region
    (the reward model's 200 steps: 6.9 s -> 12.4 s)."""
    from rlhf_lab.app import preload

    def load() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # pid 0: this thread only
        except (AttributeError, OSError):  # not Linux, or not allowed: imported at the usual priority
            pass
        preload()

    loader = threading.Thread(target=load, name="rlhf_lab-standby", daemon=True)
    loader.start()
    try:
        turn = sys.stdin.readline()
    except KeyboardInterrupt:
        turn = ""
    if turn.strip() != "go":
        sys.exit(0)
    sys.stdin = open(os.devnull)
    loader.join()  # its turn: the core of the stage it follows is free for the rest of the imports


def start(command: list[str], env: dict | None, standby: bool = False) -> subprocess.Popen:
    """A stage's process, told the pipeline's process id (``follow_pipeline``); on standby, it waits
    for "go" on its stdin (``wait_for_turn``)."""
    env = {**(env or os.environ), PIPELINE_ENV: str(os.getpid()), **({STANDBY_ENV: "1"} if standby else {})}
    return subprocess.Popen(command, env=env, stdin=subprocess.PIPE if standby else None, text=True)


def go(process: subprocess.Popen) -> None:
    """Tell a stage on standby that its turn has come."""
    try:
        process.stdin.write("go\n")
        process.stdin.close()
    except BrokenPipeError:  # it died while waiting: its exit code says so
        pass


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the stages not yet done, ``pipeline.jobs`` at a time, each once the stages it reads are
    done; returns the pipeline's summary."""
    hydra_cfg = HydraConfig.get()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task]
    # Every stage is resumed by the pipeline; an allowed change (resume_allow_changes) reaches them all.
    cli_overrides = [o for o, key in zip(hydra_cfg.overrides.task, keys) if not (key.startswith("pipeline") or key == "resume")]
    group = f"{cfg.experiment}:{run_dir.as_posix().strip('/').replace('/', '_')}"
    summary: dict = {"pipeline": cfg.pipeline.name, "stages": list(cfg.pipeline.stages), "wandb_group": group}
    done = {name for name in cfg.pipeline.stages if (run_dir / name / "summary.json").exists()}
    for name in done:
        log.info("pipeline %s: stage %s already done, skipped", cfg.pipeline.name, name)
    pending = [name for name in cfg.pipeline.stages if name not in done]
    jobs, env = cfg.pipeline.jobs, stage_env(cfg.pipeline.jobs)
    running: dict[str, subprocess.Popen] = {}
    standby: dict[str, subprocess.Popen] = {}  # the next `jobs` stages, started ahead of their turn
    failed: list[str] = []
    terminated: list[int] = []  # a SIGTERM came: passed on to the running stages, and no stage starts after it
    stopped: list[str] = []  # the stages it was passed on to

    def pass_on() -> None:
        for name, process in list(running.items()) if terminated else ():
            if name not in stopped:
                process.send_signal(signal.SIGTERM)
                stopped.append(name)

    def on_sigterm(signum, frame) -> None:
        terminated.append(signum)
        pass_on()

    on_main_thread = threading.current_thread() is threading.main_thread()  # the only one that can take a signal handler
    previous = signal.signal(signal.SIGTERM, on_sigterm) if on_main_thread else None
    try:
        while pending or running:
            ready = [name for name in pending if reads(cfg, name) <= done] if not (failed or terminated) else []
            for name in ready[: jobs - len(running)]:
                init = cfg.pipeline.stages[name].init
                if init and not (run_dir / init / "model").is_dir():
                    raise StageFailed(f"stage '{name}' starts from stage '{init}', which exported no model in {run_dir / init}.")
                command = stage_command(cfg, run_dir, name, group, cli_overrides)
                log.info("pipeline %s: stage %s: %s", cfg.pipeline.name, name, " ".join(command[1:]))
                if name in standby:
                    running[name] = standby.pop(name)
                    go(running[name])
                else:
                    running[name] = start(command, env)
                pending.remove(name)
            if not running:
                if failed or terminated:
                    break
                raise StageFailed(f"pipeline {cfg.pipeline.name}: stages {pending} read stages that never run: {sorted(set().union(*(reads(cfg, n) for n in pending)) - done)}.")
            pass_on()  # to a stage started as the signal came
            for name in [n for n in pending if n not in standby][: jobs - len(standby)] if not (failed or terminated) else []:
                standby[name] = start(stage_command(cfg, run_dir, name, group, cli_overrides), env, standby=True)
            finished = [name for name, process in running.items() if process.poll() is not None]
            for name in finished:
                (done.add if running.pop(name).returncode == 0 else failed.append)(name)
            if not finished:
                time.sleep(0.2)
    finally:
        for process in standby.values():  # end-of-file: they exit without running
            process.stdin.close()
        for process in standby.values():
            process.wait()
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if terminated and (pending or failed):  # (a SIGTERM after the last stage ended stops nothing)
        raise Preempted(
            f"pipeline {cfg.pipeline.name}: SIGTERM: stopped stage(s) {stopped} (a stage that had begun training saved a checkpoint). "
            f"Continue with: python -m rlhf_lab <same overrides> resume=auto hydra.run.dir={run_dir}"
        )
    if failed:
        raise StageFailed(
            f"pipeline {cfg.pipeline.name}: stage '{failed[0]}' failed (output above; its run dir: {run_dir / failed[0]}). "
            f"Continue from it with: python -m rlhf_lab <same overrides> resume=auto hydra.run.dir={run_dir}"
        )
    for name in cfg.pipeline.stages:
        stage_summary = json.loads((run_dir / name / "summary.json").read_text())
        summary.update({f"{name}/{k}": v for k, v in stage_summary.items() if k.startswith("world")})
    print(describe(summary))
    return summary


def describe(summary: dict) -> str:
    """What the pipeline did to the gold reward, stage by stage, as a small table."""
    lines = [f"pipeline {summary['pipeline']}: gold reward on held-out prompts (KL: k1 to the stage's initial model, per completion)"]
    width = max(8, *(len(stage) + 1 for stage in summary["stages"]))
    lines.append(f"  {'stage':<{width}}{'gold before':>12}{'gold after':>12}{'KL':>8}{'win rate':>10}{'proxy':>8}{'RM acc':>8}{'Bayes':>8}")
    for stage in summary["stages"]:
        def fig(key: str, prefix: str = "world") -> str:
            value = summary.get(f"{stage}/{prefix}/{key}")
            return f"{value:.3f}" if value is not None else "-"

        lines.append(f"  {stage:<{width}}{fig('gold_reward', 'world_initial'):>12}{fig('gold_reward'):>12}{fig('kl'):>8}"
                     f"{fig('win_rate'):>10}{fig('proxy_reward'):>8}{fig('rm_accuracy'):>8}{fig('bayes_accuracy'):>8}")  # fmt: skip
    last = summary["stages"][-1]
    before, after = summary.get(f"{last}/world_initial/gold_reward"), summary.get(f"{last}/world/gold_reward")
    if before is not None and after is not None:
        lines.append(f"{last}: gold reward {before:.3f} -> {after:.3f}; wins {summary[f'{last}/world/win_rate']:.1%} of held-out "
                     f"prompts against its initial model ({summary['stages'][0]}) at KL {summary[f'{last}/world/kl']:.2f}")
    return "\n".join(lines)
