"""A rollout's log-prob pass padded against padding-free (``data.padding_free``): the no-grad policy
pass of ``OnlineRL.evaluate`` (``completion_logps`` with entropies) and the update's pass with
its backward, on a random-init Llama and a rollout of ragged lengths.

    python benchmarks/rollout_packing.py                                   # 64 sequences, Llama 256 wide x 4 layers
    python benchmarks/rollout_packing.py --hidden 512 --layers 8 --max-completion 512

Lengths are drawn once (seed 0): prompts uniform in [--min-prompt, --max-prompt], completions
uniform in [1, --max-completion] (completions that stop at EOS at any point, as a policy's do), the
rollout's layout as ``OnlineRL.draw`` builds it (left-padded prompts, right-padded completions).
Both paths run in one process, alternating, ``--repeats`` times each; the figures are medians of
CPU time (user + sys of this process: other load on the machine inflates wall time, not this much)
and of wall time. ``--paths padded`` or ``--paths padding-free`` runs one, for its peak memory
(``/usr/bin/time -v``).
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from statistics import median

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from rlhf_lab.data.collate import Collator
from rlhf_lab.models.lm import packs_exactly
from rlhf_lab.rollout.experience import Rollout, completion_logps


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> tuple[float, float]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--max-completion", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paths", nargs="+", default=["padded", "padding-free"], choices=["padded", "padding-free"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 32, num_key_value_heads=args.hidden // 32,
                         max_position_embeddings=args.max_prompt + args.max_completion, attn_implementation="sdpa")
    policy = AutoModelForCausalLM.from_config(config).eval()  # eval: no dropout; gradients still flow
    assert packs_exactly(policy)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, args.vocab) for _ in range(rng.randint(args.min_prompt, args.max_prompt))] for _ in range(args.sequences)]
    completions = [[rng.randrange(3, args.vocab) for _ in range(rng.randint(1, args.max_completion))] for _ in range(args.sequences)]
    input_ids, attention_mask, mask = Rollout.layout(prompts, completions, pad_id=0, device="cpu")
    width = mask.shape[1]
    real = int(attention_mask.sum())
    packing = Collator(0, padding_free=True)
    rows = len(packing([{"sequences": [{"input_ids": p + c, "labels": p + c}]} for p, c in zip(prompts, completions)])["input_ids"])
    print(f"Llama {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, "
          f"vocab {args.vocab}, sdpa), torch {torch.__version__}, {args.threads} thread(s)")
    print(f"rollout: {args.sequences} sequences, prompts {args.min_prompt}-{args.max_prompt}, completions 1-{args.max_completion} tokens; "
          f"padded layout {tuple(input_ids.shape)} = {input_ids.numel()} positions, {real} real tokens "
          f"({100 * real / input_ids.numel():.0f}%); packed: {rows} rows")

    def no_grad(packing):
        with torch.no_grad():
            completion_logps(policy, input_ids, attention_mask, width, 1.0, packing, with_entropy=True)

    def with_grad(packing):
        policy.zero_grad()
        logps, _ = completion_logps(policy, input_ids, attention_mask, width, 1.0, packing)
        (logps * mask).sum().backward()

    header = f"{'pass':<22} {'path':<13} {'CPU s':>7} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    for name, fn in (("evaluate (no grad)", no_grad), ("update (fwd + bwd)", with_grad)):
        times = {path: [] for path in args.paths}
        for _ in range(args.repeats):
            for path in args.paths:
                times[path].append(timed(lambda: fn(packing if path == "padding-free" else None)))
        for path, pairs in times.items():
            print(f"{name:<22} {path:<13} {median(c for c, _ in pairs):>7.2f} {median(w for _, w in pairs):>7.2f}", flush=True)
        if len(times) == 2:
            cpu = {path: median(c for c, _ in pairs) for path, pairs in times.items()}
            print(f"{name:<22} {'speed-up':<13} {cpu['padded'] / cpu['padding-free']:>6.2f}x (CPU time)", flush=True)


if __name__ == "__main__":
    main()
