"""Instruction data written by a model (Self-Instruct, Wang et al. 2022, https://arxiv.org/abs/2212.10560;
Alpaca): ``python -m rlhf_lab mode=self_instruct model=hf model.name_or_path=... self_instruct.num_instructions=500``.

Each round shows the model ``k`` seed tasks and asks for a new instruction; malformed instructions
and near-duplicates (ROUGE-L F1 >= ``max_similarity`` against a seed or an earlier instruction) are
dropped; the model then writes the output of each survivor, and empty outputs are dropped. Kept
pairs are written as JSONL rows ``{"prompt", "completion", "task"}``, which
``objective=sft data=jsonl data.path=<run dir>/instructions.jsonl`` reads as is. The counts of each
drop are logged and written to summary.json.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlhf_lab.config import SelfInstructConfig
from rlhf_lab.data.sources import load_source, validate
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.prompting.engine import generate

log = logging.getLogger(__name__)
HEADER = "Come up with a new task. Each task is an instruction and its output.\n\n"


def show(examples: list[tuple[str, str]]) -> str:
    return "".join(f"Instruction: {instruction}\nOutput: {output}\n\n" for instruction, output in examples)


def instruction_problem(text: str, cfg: SelfInstructConfig) -> str | None:
    """Why a generated instruction is malformed, or None."""
    words = text.split()
    if not words:
        return "empty"
    if len(words) < cfg.min_words or len(words) > cfg.max_words:
        return f"{len(words)} words, outside [{cfg.min_words}, {cfg.max_words}]"
    if not text[0].isalnum():
        return "starts with a symbol"
    if "\ufffd" in text or not text.isprintable():
        return "unprintable characters"
    return None


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists: from the length of their longest common subsequence."""
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def near_duplicate(text: str, seen: list[list[str]], threshold: float) -> bool:
    tokens = words(text)
    return any(rouge_l(tokens, other) >= threshold for other in seen)


def filter_round(instructions: list[str], seen: list[list[str]], cfg: SelfInstructConfig, counts: dict[str, int]) -> list[int]:
    """Indices of the instructions that are well formed and new; ``seen`` and ``counts`` are updated."""
    kept = []
    for i, text in enumerate(instructions):
        counts["generated"] += 1
        if instruction_problem(text, cfg):
            counts["malformed"] += 1
        elif near_duplicate(text, seen, cfg.max_similarity):
            counts["near_duplicate"] += 1
        else:
            seen.append(words(text))
            kept.append(i)
    return kept


def seed_tasks(cfg: DictConfig, host) -> list[tuple[str, str]]:
    loaders = {name: e.create for name, e in host.registry.entries["dataset"].items()}
    rows, where = load_source("seeds", cfg.self_instruct.seeds, "sft", loaders)
    rows, _ = validate(rows, "sft", where, "error")
    pairs = [(r["messages"][-2]["content"], r["messages"][-1]["content"]) if r.get("messages") else (r["prompt"], r["completion"]) for r in rows]
    if len(pairs) < cfg.self_instruct.k:
        raise ConfigError(f"self_instruct.k={cfg.self_instruct.k} seed tasks per prompt, but {where} has {len(pairs)}.")
    return [(str(p), str(c)) for p, c in pairs]


def generate_instructions(cfg: DictConfig, host, run_dir: Path) -> dict:
    """``mode=self_instruct``: writes ``self_instruct.output`` in the run dir; returns the summary."""
    sc = cfg.self_instruct
    seeds = seed_tasks(cfg, host)
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, lora=False).to("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    model.eval()
    rng = random.Random(cfg.seed)
    sampling = dict(max_new_tokens=sc.max_new_tokens, batch_size=sc.batch_size, temperature=sc.temperature, top_p=sc.top_p)
    seen = [words(instruction) for instruction, _ in seeds]
    counts = {"generated": 0, "malformed": 0, "near_duplicate": 0}
    pairs: list[tuple[str, str]] = []
    for _ in range(sc.max_rounds):
        if len(pairs) >= sc.num_instructions:
            break
        prefixes = [HEADER + show(rng.sample(seeds, sc.k)) + "Instruction:" for _ in range(sc.batch_size)]
        ids = tokenizer(prefixes, add_special_tokens=True)["input_ids"]
        instructions = [out[0].strip() for out in generate(model, tokenizer, ids, stop=["\n"], **sampling)]
        new = filter_round(instructions, seen, sc, counts)
        if not new:
            continue
        ids = tokenizer([f"{prefixes[i]} {instructions[i]}\nOutput:" for i in new], add_special_tokens=True)["input_ids"]
        outputs = [out[0].strip() for out in generate(model, tokenizer, ids, stop=["\nInstruction:", "\n\n"], **sampling)]
        for i, output in zip(new, outputs):
            if output and "\ufffd" not in output:
                pairs.append((instructions[i], output))
            else:
                counts["malformed"] += 1
    pairs = pairs[: sc.num_instructions]
    summary = {f"self_instruct/{k}": v for k, v in counts.items()} | {"self_instruct/kept": len(pairs), "mode": "self_instruct"}
    log.info("self-instruct: %s", summary)
    if not pairs:
        raise DataError(f"self-instruct kept no pairs ({counts}); use a stronger model or loosen self_instruct.min_words / max_similarity.")
    out = run_dir / sc.output
    out.write_text("".join(json.dumps({"prompt": p, "completion": c, "task": "self_instruct"}) + "\n" for p, c in pairs))
    return summary | {"instructions_path": str(out)}
