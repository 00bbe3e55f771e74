"""One task under one strategy on one model: prompts built once, then scored on demand, standalone
(``mode=eval``) or inside training (``EvalCallback``: before training, every N steps, at the end).

Metrics, under ``eval/<task>/<strategy>/``: generation tasks report ``exact_match_strict``,
``exact_match_flexible`` and ``accuracy`` (the one ``eval.accuracy_from`` picks; ``maj@n`` too
when a strategy samples n answers); multiple-choice tasks ``acc``, ``acc_norm`` (log-likelihood
divided by the choice's length in characters) and ``accuracy`` (= acc). All report ``scored``,
``skipped`` (prompts longer than the model's context) and ``samples_per_s``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from rlhf_lab.config import EvalConfig
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.models import eval_mode, load_causal_lm, load_tokenizer
from rlhf_lab.prompting.engine import context_length, encode_pair, generate, loglikelihoods
from rlhf_lab.prompting.extract import extract, normalise
from rlhf_lab.prompting.strategies import Strategy, ZeroShotConfig
from rlhf_lab.prompting.tasks import Task, load_task

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    prefix: str  # eval/<task>/<strategy>
    metrics: dict[str, float]
    records: list[dict]  # one per scored document: prompt, output, answer, gold, correct

    def flat(self, top: str = "eval") -> dict[str, float]:
        prefix = self.prefix.replace("eval/", f"{top}/", 1)
        return {f"{prefix}/{k}": v for k, v in self.metrics.items()}


class Evaluator:
    def __init__(self, task: Task, strategy: Strategy, strategy_name: str, tokenizer: PreTrainedTokenizerBase):
        cfg = task.cfg
        for key, allowed in (("chat_template", ("auto", "never")), ("on_overflow", ("skip", "error")), ("accuracy_from", ("strict", "flexible"))):
            if cfg[key] not in allowed:
                raise ConfigError(f"eval.{key} must be one of {allowed}, got '{cfg[key]}'.")
        if strategy.generates and task.kind != "generation":
            raise ConfigError(f"prompting={strategy_name} writes its answers: it needs a generation task, and '{task.name}' is {task.kind}.")
        self.task, self.strategy, self.tokenizer = task, strategy, tokenizer
        self.prefix = f"eval/{task.name}/{strategy_name}"
        encoder = Encoder(tokenizer, tokenizer.model_max_length, cfg.chat_template)
        rng = random.Random(strategy.cfg.seed)
        prompts = [strategy.prompt(doc, task, rng) for doc in task.docs]
        if any(isinstance(p, list) for p in prompts) and not encoder.use_chat:
            raise ConfigError(f"prompting={strategy_name} builds chat turns, but the tokenizer has no chat template or eval.chat_template=never.")
        self.texts = encoder.prompt_texts(prompts)
        special = not encoder.use_chat  # a chat template writes its own special tokens
        if task.kind == "generation":
            self.prompt_ids = tokenizer(self.texts, add_special_tokens=special)["input_ids"]
        else:
            delimiter = "" if encoder.use_chat else cfg.target_delimiter  # the assistant turn starts the answer
            self.requests = [
                [encode_pair(tokenizer, text, delimiter + c, special) for c in task.continuations(doc)]
                for text, doc in zip(self.texts, task.docs)
            ]

    def run(self, model) -> EvalResult:
        """Score every document on ``model``; deterministic given the strategy's seed."""
        limit = context_length(model, self.tokenizer, self.task.cfg.max_length)
        device = next(model.parameters()).device
        started = time.perf_counter()
        with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.strategy.cfg.seed)
            if self.task.kind == "generation":
                metrics, records = self._generation(model, limit)
            else:
                metrics, records = self._multiple_choice(model, limit)
        metrics["samples_per_s"] = metrics["scored"] / (time.perf_counter() - started)
        return EvalResult(self.prefix, metrics, records)

    def _fitting(self, lengths: list[int], limit: int) -> list[int]:
        """Indices of the documents whose longest input fits the context; the rest are skipped
        (counted and logged) or, with eval.on_overflow=error, stop the run."""
        over = [i for i, n in enumerate(lengths) if n > limit]
        if over and self.task.cfg.on_overflow == "error":
            i = over[0]
            raise DataError(f"task '{self.task.name}' document {i + 1}: {lengths[i]} tokens exceed the model's context of {limit} (eval.on_overflow=skip skips such documents).")
        if len(over) == len(lengths):
            raise DataError(f"task '{self.task.name}': every prompt exceeds the model's context of {limit} tokens.")
        if over:
            log.warning("%s: skipped %d of %d documents longer than the model's context of %d tokens (documents %s...).", self.prefix, len(over), len(lengths), limit, [i + 1 for i in over[:5]])
        return [i for i in range(len(lengths)) if lengths[i] <= limit]

    def _generation(self, model, limit: int) -> tuple[dict, list[dict]]:
        cfg, strategy = self.task.cfg, self.strategy
        kept = self._fitting([len(ids) + cfg.max_new_tokens for ids in self.prompt_ids], limit)
        outputs = generate(
            model, self.tokenizer, [self.prompt_ids[i] for i in kept], max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop),
            batch_size=cfg.batch_size, samples=strategy.samples, temperature=strategy.temperature, top_p=strategy.top_p,
        )  # fmt: skip

        def answer(texts: list[str], pattern: str, last: bool) -> str | None:
            found = [extract(t, pattern, last) for t in texts]
            return strategy.vote([None if a is None else normalise(a, cfg.ignore_patterns, cfg.ignore_case) for a in found])

        hits = {"strict": 0, "flexible": 0}
        records = []
        for i, texts in zip(kept, outputs):
            gold = normalise(self.task.docs[i].answer, cfg.ignore_patterns, cfg.ignore_case)
            answers = {"strict": answer(texts, cfg.strict_pattern, False), "flexible": answer(texts, cfg.flexible_pattern, True)}
            for name, a in answers.items():
                hits[name] += a == gold
            records.append({"prompt": self.texts[i], "output": "\n---\n".join(texts), **answers, "gold": gold, "correct": answers[cfg.accuracy_from] == gold})
        n = len(kept)
        metrics = {"exact_match_strict": hits["strict"] / n, "exact_match_flexible": hits["flexible"] / n, "accuracy": hits[cfg.accuracy_from] / n}
        if strategy.samples > 1:
            metrics[f"maj@{strategy.samples}"] = metrics["accuracy"]
        return {**metrics, "scored": n, "skipped": len(self.prompt_ids) - n}, records

    def _multiple_choice(self, model, limit: int) -> tuple[dict, list[dict]]:
        kept = self._fitting([max(len(c) + len(x) for c, x in reqs) for reqs in self.requests], limit)
        flat = [r for i in kept for r in self.requests[i]]
        lls = iter(loglikelihoods(model, flat, self.task.cfg.batch_size, self.tokenizer.pad_token_id))
        acc = acc_norm = 0
        records = []
        for i in kept:
            doc = self.task.docs[i]
            choices = self.task.continuations(doc)
            scores = [next(lls) for _ in choices]
            pred = max(range(len(scores)), key=scores.__getitem__)
            pred_norm = max(range(len(scores)), key=lambda j: scores[j] / len(choices[j]))
            acc += pred == doc.label
            acc_norm += pred_norm == doc.label
            records.append({"prompt": self.texts[i], "output": choices[pred], "loglikelihoods": scores, "gold": doc.answer, "correct": pred == doc.label})
        n = len(kept)
        return {"acc": acc / n, "acc_norm": acc_norm / n, "accuracy": acc / n, "scored": n, "skipped": len(self.requests) - n}, records


def build_evaluator(cfg: DictConfig, registry, tokenizer: PreTrainedTokenizerBase) -> Evaluator:
    """The run's task (``eval``; the synthetic task if none) under its strategy (``prompting``; zero_shot if none)."""
    eval_cfg = cfg.eval if cfg.eval is not None else OmegaConf.structured(EvalConfig)
    prompting = cfg.prompting if cfg.prompting is not None else OmegaConf.structured(ZeroShotConfig(name="zero_shot"))
    entry = registry.get("prompting", prompting.name)
    strategy = entry.create(prompting)
    loaders = {name: e.create for name, e in registry.entries["dataset"].items()}
    return Evaluator(load_task(eval_cfg, loaders, prompting.get("split")), strategy, prompting.name, tokenizer)


def log_result(result: EvalResult, loggers: list, step: int, limit: int) -> None:
    """Metrics to every logger; the first ``limit`` records as a table to W&B."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        logger.log_metrics(result.flat(), step=step)
        if isinstance(logger, WandbLogger) and result.records and limit > 0:
            columns = list(result.records[0])
            rows = [[r[c] if isinstance(r[c], (str, int, float, bool)) or r[c] is None else str(r[c]) for c in columns] for r in result.records[:limit]]
            logger.log_table(key=f"{result.prefix}/samples", columns=columns, data=rows, step=step)


class EvalCallback(Callback):
    """Evaluates the model being trained before training, every ``every_n_steps`` and at the end.

    Results go to the loggers and to ``trainer.callback_metrics`` (so into summary.json): the last
    evaluation under ``eval/``, the one before training under ``eval_initial/``.
    """

    def __init__(self, evaluator: Evaluator, every_n_steps: int | None, log_samples: int):
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.log_samples = log_samples
        self._last_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        result = self._evaluate(trainer, pl_module)
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in result.flat("eval_initial").items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_step:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer, pl_module) -> EvalResult:
        self._last_step = trainer.global_step
        result = self.evaluator.run(pl_module.trained_model)
        log_result(result, trainer.loggers, trainer.global_step, self.log_samples)
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in result.flat().items()})
        log.info("step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in result.flat().items()})
        return result


def eval_callbacks(cfg: DictConfig, registry, tokenizer: PreTrainedTokenizerBase) -> list[Callback]:
    """The evaluation callback of a training run; none without ``eval``."""
    if cfg.eval is None:
        return []
    return [EvalCallback(build_evaluator(cfg, registry, tokenizer), cfg.eval.every_n_steps, cfg.eval.log_samples)]


def evaluate_model(cfg: DictConfig, host, run_dir: Path) -> dict:
    """``mode=eval``: the configured model (hub id, directory, or a run's exported ``model/``) on
    the task, logged like a training run; returns the summary."""
    from rlhf_lab.tracking import build_loggers

    tokenizer = load_tokenizer(cfg.model)
    evaluator = build_evaluator(cfg, host.registry, tokenizer)
    use_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    model = load_causal_lm(cfg.model, lora=False).to("cuda" if use_gpu else "cpu")
    result = evaluator.run(model)
    loggers = build_loggers(cfg, run_dir)
    log_result(result, loggers, 0, evaluator.task.cfg.log_samples)
    for logger in loggers:
        logger.finalize("success")
    log.info("%s", {k: round(v, 4) for k, v in result.flat().items()})
    return {**result.flat(), "mode": "eval", "model": cfg.model.name_or_path}
