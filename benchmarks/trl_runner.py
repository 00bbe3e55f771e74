"""One TRL training job, run by ``train_vs_trl.py`` as its own process.

    python benchmarks/trl_runner.py --objective dpo|rm|sft --model DIR --data FILE --out FILE.json
        [--steps 128] [--batch-size 16] [--max-length 128] [--set KEY=VALUE ...]

TRL's defaults apply except for what the job pins: batch size, max_length, steps, constant lr
1e-4 without warmup, fp32 (``bf16=False``; TRL otherwise turns bf16 on), CPU, no evaluation, no
saving, no reporting, a log line every step (the first is the step-0 loss), no dataloader workers,
seed 42 and rows in file order (a sequential sampler, as rlhf_lab's ``data.shuffle=false``).
``--set`` overrides any config field: ``gradient_checkpointing=false`` (TRL's default is True;
rlhf_lab does not checkpoint, so this is the same arithmetic), ``precompute_ref_log_probs=true``.

Writes the training time (``trainer.train()`` plus, with ``precompute_ref_log_probs``, the
reference pass TRL makes in its constructor), the setup time (reading the data and building the
trainer, which tokenises it: ``setup_s``), samples, non-padding tokens (attention-mask sum of
every training batch), the first and last logged loss and the effective config.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import load_dataset
from torch.utils.data import SequentialSampler
from transformers import AutoTokenizer, TrainerCallback

# objective -> (trainer class name, config class name, rows per training sample in a batch)
TRAINERS = {"dpo": ("DPOTrainer", "DPOConfig", 2), "rm": ("RewardTrainer", "RewardConfig", 2), "sft": ("SFTTrainer", "SFTConfig", 1)}


class LossLog(TrainerCallback):
    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def measured(base, rows_per_sample: int):
    class Measured(base):
        bench_tokens = 0
        bench_samples = 0

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def training_step(self, model, inputs, *args, **kwargs):
            self.bench_tokens += int(inputs["attention_mask"].sum())
            self.bench_samples += inputs["input_ids"].shape[0] // rows_per_sample
            return super().training_step(model, inputs, *args, **kwargs)

    return Measured


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--objective", choices=sorted(TRAINERS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", default=None)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    import trl

    trainer_name, config_name, rows_per_sample = TRAINERS[args.objective]
    trainer_cls = measured(getattr(trl, trainer_name), rows_per_sample)
    config_cls = getattr(trl, config_name)
    fields = dict(
        output_dir=args.workdir or str(Path(args.out).with_suffix("")) + "_trl",
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        dataloader_num_workers=0,
        seed=args.seed,
        disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"},
    )
    if args.objective == "dpo":
        fields["beta"] = args.beta
    if args.objective == "sft":
        fields["loss_type"] = "nll"
    fields.update({k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    config = config_cls(**fields)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    setup_started = time.perf_counter()
    dataset = load_dataset("json", data_files=args.data, split="train")

    precompute_s = 0.0
    if args.objective == "dpo" and config.precompute_ref_log_probs:
        original = trainer_cls._precompute_ref_logps

        def timed(self, *a, **k):
            nonlocal precompute_s
            started = time.perf_counter()
            try:
                return original(self, *a, **k)
            finally:
                precompute_s += time.perf_counter() - started

        trainer_cls._precompute_ref_logps = timed

    losses = LossLog()
    trainer = trainer_cls(model=args.model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[losses])
    setup_s = time.perf_counter() - setup_started  # reading the data and building the trainer (which tokenises it)
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started

    Path(args.out).write_text(
        json.dumps(
            {
                "train_time_s": train_s + precompute_s,
                "setup_in_train_s": precompute_s,
                "setup_s": setup_s,
                "steps": trainer.state.global_step,
                "samples": trainer.bench_samples,
                "tokens": trainer.bench_tokens,
                "loss_step0": losses.losses[0] if losses.losses else None,
                "loss_last": losses.losses[-1] if losses.losses else None,
                "options": {
                    k: getattr(config, k)
                    for k in (
                        "gradient_checkpointing", "bf16", "padding_free", "precompute_ref_log_probs", "loss_type",
                        "max_length", "truncation_mode", "completion_only_loss", "packing", "disable_dropout",
                        "optim", "max_grad_norm", "weight_decay", "center_rewards_coefficient", "use_liger_kernel",
                    )
                    if hasattr(config, k)
                },
                "torch_threads": torch.get_num_threads(),
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
