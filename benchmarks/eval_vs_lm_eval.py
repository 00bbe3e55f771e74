"""rlhf_lab's evaluator against lm-evaluation-harness 0.4.x (``hf`` model) on the same model and files.

    python benchmarks/eval_vs_lm_eval.py [--out DIR] [--model DIR | --train-steps 600] [--docs 200] [--k 3]

1. Writes a GSM8K-shaped and an MMLU-shaped JSONL task (questions from rlhf_lab's synthetic
   addition task) plus exemplar files, a held-out text task for perplexity (documents of 1 to 60
   solved sums, the longest beyond the model's 512-token context, so rolling windows are used),
   read through conf/eval/wikitext_style.yaml (a `page` column), and an SFT file in the GSM8K
   prompt format.
2. Trains the embedded tiny model on that SFT file with ``python -m rlhf_lab`` (so greedy exact
   match is not trivially 0) and evaluates the exported ``<run dir>/model``.
3. Runs both harnesses zero-shot and k-shot: generation (greedy, exact match after the strict and
   flexible GSM8K filters) and multiple choice (acc, acc_norm); and zero-shot rolling
   log-likelihood (word_perplexity, byte_perplexity, bits_per_byte, equal to ``--rel-tol``: float
   sums in another order). lm-evaluation-harness reads the same files through task YAMLs
   (``dataset_path: json``, ``--include_path``) whose prompts equal conf/eval/gsm8k_style.yaml and
   mmlu_style.yaml.
4. Prints a markdown table of the metrics side by side, with each harness's samples/s over the
   whole job (task loading, prompt building, scoring; the model is loaded and lm-eval's task index
   built beforehand), the fastest of ``--runs`` runs.

Needs ``pip install -c constraints/cpu.txt lm-eval`` (the ``bench`` extra); the core never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GSM8K_YAML = """task: bench_gsm8k
dataset_path: json
dataset_kwargs: {{data_files: {{test: {test}, train: {train}}}}}
test_split: test
fewshot_split: train
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "#### {{{{answer.split('####')[-1].strip()}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
generation_kwargs: {{until: ["Question:", "\\n\\n"], do_sample: false, max_gen_toks: {max_new_tokens}}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true, ignore_punctuation: false,
     regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]}}
filter_list:
  - name: strict-match
    filter: [{{function: regex, regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"}}, {{function: take_first}}]
  - name: flexible-extract
    filter: [{{function: regex, group_select: -1, regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"}}, {{function: take_first}}]
"""

MMLU_YAML = """task: bench_mmlu
dataset_path: json
dataset_kwargs: {{data_files: {{test: {test}, train: {train}}}}}
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
"""

PPL_YAML = """task: bench_ppl
dataset_path: json
dataset_kwargs: {{data_files: {{test: {test}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list: [{{metric: word_perplexity}}, {{metric: byte_perplexity}}, {{metric: bits_per_byte}}]
"""


def addition_rows(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """GSM8K-shaped and MMLU-shaped rows asking sums of numbers below 20 (few enough for the tiny
    model to learn many of them)."""
    rng = random.Random(seed)
    gsm8k, mmlu = [], []
    for _ in range(n):
        a, b = rng.randint(0, 19), rng.randint(0, 19)
        question = f"What is {a} + {b}?"
        gsm8k.append({"question": question, "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
        wrong = rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3)], 3)
        choices = [str(c) for c in wrong]
        label = rng.randrange(4)
        choices.insert(label, str(a + b))
        mmlu.append({"question": question, "choices": choices, "answer": label})
    return gsm8k, mmlu


def text_rows(n: int, seed: int) -> list[dict]:
    """Held-out documents of 1 to 60 solved sums, one per line."""
    rng = random.Random(seed)
    gsm8k, _ = addition_rows(60 * n, seed)
    return [{"page": "\n".join(f"{r['question']} {r['answer'].split('####')[-1].strip()}" for r in rng.sample(gsm8k, rng.randint(1, 60)))} for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_model(out: Path, steps: int) -> Path:
    gsm8k, _ = addition_rows(4000, seed=1)
    sft = [{"prompt": f"Question: {r['question']}\nAnswer:", "completion": " " + r["answer"]} for r in gsm8k]
    path = write_jsonl(out / "sft.jsonl", sft)
    run_dir = out / "train"
    cmd = [sys.executable, "-m", "rlhf_lab", "data=jsonl", f"data.path={path}", "data.chat_template=never", "data.max_length=64",
           f"trainer.max_steps={steps}", "logger=none", "trainer.save_checkpoint=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "CI": "1"})
    return run_dir / "model"


def ours(model, tokenizer, preset: str, path: Path, fewshot: Path, k: int, max_new_tokens: int, batch_size: int) -> tuple[dict, float]:
    from rlhf_lab.config import EvalConfig
    from rlhf_lab.prompting import strategies as S
    from rlhf_lab.prompting.evaluator import Evaluator
    from rlhf_lab.prompting.tasks import load_task

    started = time.perf_counter()
    files = {"path": str(path)} if fewshot is None else {"path": str(path), "fewshot_path": str(fewshot), "max_new_tokens": max_new_tokens}
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(REPO / "conf" / "eval" / f"{preset}.yaml"), {**files, "batch_size": batch_size})
    strategy = S.FewShot(OmegaConf.structured(S.FewShotConfig(name="few_shot", k=k))) if k else S.ZeroShot(OmegaConf.structured(S.ZeroShotConfig(name="zero_shot")))
    result = Evaluator(load_task(cfg, {}), strategy, "x", tokenizer).run(model)
    return result.metrics, time.perf_counter() - started


def lm_eval(lm, tasks, task: str, k: int) -> tuple[dict, float]:
    from lm_eval import simple_evaluate

    started = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], num_fewshot=k, task_manager=tasks, fewshot_random_seed=1234)
    return out["results"][task], time.perf_counter() - started


def best_of(runs: int, job) -> tuple[dict, float]:
    """The metrics of the last run and the fastest time: the first run of a job warms caches."""
    results = [job() for _ in range(runs)]
    return results[-1][0], min(seconds for _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--model", type=Path, default=None, help="evaluate this model directory instead of training one")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--docs", type=int, default=200, help="documents per task")
    parser.add_argument("--k", type=int, default=3, help="exemplars for the k-shot runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each job (the fastest counts)")
    parser.add_argument("--rel-tol", type=float, default=1e-5, help="relative tolerance of the perplexities (float sums in another order)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="eval_vs_lm_eval-"))
    out.mkdir(parents=True, exist_ok=True)

    model_dir = args.model or train_model(out, args.train_steps)
    gsm8k, mmlu = addition_rows(args.docs + 20, seed=2)
    files = {
        "gsm8k_style": (write_jsonl(out / "gsm8k_test.jsonl", gsm8k[: args.docs]), write_jsonl(out / "gsm8k_fewshot.jsonl", gsm8k[args.docs :])),
        "mmlu_style": (write_jsonl(out / "mmlu_test.jsonl", mmlu[: args.docs]), write_jsonl(out / "mmlu_fewshot.jsonl", mmlu[args.docs :])),
        "wikitext_style": (write_jsonl(out / "text_test.jsonl", text_rows(args.docs, seed=3)), None),
    }
    include = out / "lm_eval_tasks"
    include.mkdir(exist_ok=True)
    (include / "bench_gsm8k.yaml").write_text(GSM8K_YAML.format(test=files["gsm8k_style"][0], train=files["gsm8k_style"][1], max_new_tokens=args.max_new_tokens))
    (include / "bench_mmlu.yaml").write_text(MMLU_YAML.format(test=files["mmlu_style"][0], train=files["mmlu_style"][1]))
    (include / "bench_ppl.yaml").write_text(PPL_YAML.format(test=files["wikitext_style"][0]))

    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    lm = HFLM(pretrained=str(model_dir), batch_size=args.batch_size, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tasks = TaskManager(include_path=str(include))  # indexes lm-eval's own task library once, outside the timings

    metric_pairs = {
        "gsm8k_style": [("exact_match_strict", "exact_match,strict-match"), ("exact_match_flexible", "exact_match,flexible-extract")],
        "mmlu_style": [("acc", "acc,none"), ("acc_norm", "acc_norm,none")],
        "wikitext_style": [("word_perplexity", "word_perplexity,none"), ("byte_perplexity", "byte_perplexity,none"), ("bits_per_byte", "bits_per_byte,none")],
    }
    lm_eval_task = {"gsm8k_style": "bench_gsm8k", "mmlu_style": "bench_mmlu", "wikitext_style": "bench_ppl"}
    lines = ["| task | shots | metric | rlhf_lab | lm-eval | equal |", "|---|---|---|---|---|---|"]
    speed = ["| task | shots | rlhf_lab samples/s | lm-eval samples/s | ratio |", "|---|---|---|---|---|"]
    all_equal = True
    for preset, pairs in metric_pairs.items():
        for k in (0,) if preset == "wikitext_style" else (0, args.k):
            theirs, their_s = best_of(args.runs, lambda: lm_eval(lm, tasks, lm_eval_task[preset], k))
            mine, my_s = best_of(args.runs, lambda: ours(model, tokenizer, preset, *files[preset], k, args.max_new_tokens, args.batch_size))
            for our_key, their_key in pairs:
                tolerance = args.rel_tol * abs(theirs[their_key]) if preset == "wikitext_style" else 1e-12
                equal = abs(mine[our_key] - theirs[their_key]) <= tolerance
                all_equal &= equal
                lines.append(f"| {preset} | {k} | {our_key} | {mine[our_key]:.4f} | {theirs[their_key]:.4f} | {'yes' if equal else 'NO'} |")
            speed.append(f"| {preset} | {k} | {args.docs / my_s:.1f} | {args.docs / their_s:.1f} | {their_s / my_s:.2f}x |")
    trained = "" if args.model else f" ({args.train_steps} SFT steps)"
    print(f"\nmodel: {model_dir}{trained}, {args.docs} documents per task, batch size {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}\n")  # fmt: skip
    print("\n".join(lines) + "\n\n" + "\n".join(speed))
    sys.exit(0 if all_equal else 1)


if __name__ == "__main__":
    main()
