"""The model as a strategy's ``run`` talks to it: batched calls over the documents of a task.

Each method takes a list of requests and ``ids``, the task document each request belongs to
(default: request ``i`` is document ``i``, one request per document in order). The ids let the
``LM`` name the document behind a bad prompt, skip a document whose prompt outgrows the model's
context (``eval.on_overflow=skip``; its later requests are not run and its answer is not scored),
and keep each document's intermediate calls for the W&B samples table. A call runs all the requests
it is given together (sorted by length, in batches of ``eval.batch_size``), so a strategy keeps its
cost down by asking for all its documents at once at every stage (``calls`` counts the calls).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Optional

from transformers import PreTrainedTokenizerBase

from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import ConfigError, DataError, PluginError
from rlhf_lab.prompting.engine import context_length, encode_pair, generate, loglikelihoods, rolling_windows
from rlhf_lab.prompting.tasks import Task


class LM:
    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, task: Task, who: str, reward=None):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.who = who  # "prompting=<name>", for messages
        self.reward_source = reward  # rlhf_lab.rewards.Reward, or None when the run has no `reward`
        self.encoder = Encoder(tokenizer, tokenizer.model_max_length, task.cfg.chat_template)
        self.special = not self.encoder.use_chat  # a chat template writes its own special tokens
        self.limit = context_length(model, tokenizer, task.cfg.max_length)
        self.calls: Counter[str] = Counter()  # batched model calls by method
        self.skipped: dict[int, int] = {}  # document -> length in tokens of its request that did not fit
        self.trace: dict[int, list[dict]] = defaultdict(list)  # document -> its generations: prompt, outputs

    def generate(
        self,
        prompts: list,
        ids: Optional[list[int]] = None,
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: Optional[int] = None,
        stop: Optional[list[str]] = None,
    ) -> list[list[str]]:
        """``n`` completions of each prompt (text, or chat turns), greedy when ``temperature`` is 0.
        ``max_new_tokens`` and ``stop`` default to the task's (``eval.max_new_tokens``, ``eval.stop``)."""
        ids = self._ids(prompts, ids)
        texts = self._texts(prompts, ids)
        max_new_tokens = max_new_tokens or self.task.cfg.max_new_tokens
        stop = list(self.task.cfg.stop if stop is None else stop)
        token_ids = self.tokenizer(texts, add_special_tokens=self.special)["input_ids"] if texts else []
        run = self._fitting(ids, [len(t) + max_new_tokens for t in token_ids])
        out = [[""] * n for _ in prompts]
        if run:
            self.calls["generate"] += 1
            completions = generate(
                self.model, self.tokenizer, [token_ids[j] for j in run], max_new_tokens=max_new_tokens, stop=stop,
                batch_size=self.task.cfg.batch_size, samples=n, temperature=temperature, top_p=top_p,
            )  # fmt: skip
            for j, outputs in zip(run, completions):
                out[j] = outputs
                self.trace[ids[j]].append({"prompt": texts[j], "outputs": outputs})
        return out

    def loglikelihood(self, contexts: list, continuations: list[str], ids: Optional[list[int]] = None, *, per_token: bool = False) -> list[float]:
        """``log p(continuation | context)`` summed over the continuation's tokens (divided by their
        number with ``per_token``) for each pair; contexts are text or chat turns. A context's
        trailing spaces move to its continuation (lm-evaluation-harness's convention)."""
        ids = self._ids(contexts, ids)
        if len(continuations) != len(contexts):
            raise ConfigError(f"{self.who}: loglikelihood got {len(contexts)} contexts and {len(continuations)} continuations.")
        texts = self._texts(contexts, ids)
        requests = [encode_pair(self.tokenizer, text, str(c), self.special) for text, c in zip(texts, continuations)]
        for i, (context, continuation) in zip(ids, requests):
            if not context or not continuation:
                raise DataError(f"task '{self.task.name}' document {i + 1}: {self.who} asked the log-likelihood of an empty context or continuation.")
        run = self._fitting(ids, [len(c) + len(x) for c, x in requests])
        out = [-math.inf] * len(contexts)
        if run:
            self.calls["loglikelihood"] += 1
            values = loglikelihoods(self.model, [requests[j] for j in run], self.task.cfg.batch_size, self.tokenizer.pad_token_id)
            for j, value in zip(run, values):
                out[j] = value / len(requests[j][1]) if per_token else value
        return out

    def loglikelihood_rolling(self, texts: list[str], ids: Optional[list[int]] = None) -> list[float]:
        """``log p(text)`` of each whole text, scored in windows of the model's context, each token
        predicted from up to a context's worth of the tokens before it, the first from BOS (EOS when
        there is none): lm-evaluation-harness's ``loglikelihood_rolling``."""
        ids = self._ids(texts, ids)
        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        windows, owner = [], []
        for j, text in enumerate(texts):
            if not isinstance(text, str) or not text:
                raise DataError(f"task '{self.task.name}' document {ids[j] + 1}: {self.who} asked the log-likelihood of {text!r}; it needs a non-empty text.")
            for window in rolling_windows(self.tokenizer(text)["input_ids"], prefix, self.limit):
                windows.append(window)
                owner.append(j)
        self.calls["loglikelihood_rolling"] += 1
        out = [0.0] * len(texts)
        for j, value in zip(owner, loglikelihoods(self.model, windows, self.task.cfg.batch_size, self.tokenizer.pad_token_id)):
            out[j] += value
        return out

    def reward(self, prompts: list, completions: list[str], ids: Optional[list[int]] = None) -> list[float]:
        """The run's reward source (``reward=...``) on each (prompt, completion); it may read the
        documents' columns (``answer``, ...) as in online RL."""
        if self.reward_source is None:
            raise ConfigError(f"{self.who} scores answers with a reward, but none is configured: set reward=<name> (e.g. reward=model reward.path=DIR).")
        ids = self._ids(prompts, ids)
        run = [j for j, i in enumerate(ids) if i not in self.skipped]
        out = [-math.inf] * len(prompts)
        if run:
            self.calls["reward"] += 1
            rows = [self.task.docs[ids[j]].row for j in run]
            scores = self.reward_source([prompts[j] for j in run], [completions[j] for j in run], rows).tolist()
            for j, score in zip(run, scores):
                out[j] = score
        return out

    def _ids(self, requests: list, ids: Optional[list[int]]) -> list[int]:
        ids = list(range(len(requests))) if ids is None else list(ids)
        if len(ids) != len(requests):
            raise ConfigError(f"{self.who}: {len(requests)} requests but {len(ids)} document ids.")
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < len(self.task.docs)):
                raise ConfigError(f"{self.who}: document id {i!r} is not one of the task's {len(self.task.docs)} documents (0..{len(self.task.docs) - 1}).")
        return ids

    def _texts(self, prompts: list, ids: list[int]) -> list[str]:
        """Prompts as the model reads them (through the chat template when the tokenizer has one)."""
        for prompt, i in zip(prompts, ids):
            check_prompt(prompt, i, self.who, self.encoder.use_chat)
        return self.encoder.prompt_texts(prompts)

    def _fitting(self, ids: list[int], lengths: list[int]) -> list[int]:
        """Positions of the requests to run: those of documents not skipped whose inputs fit the
        context. A request that does not fit skips its document or, with eval.on_overflow=error,
        stops the run naming it."""
        for i, n in zip(ids, lengths):
            if n > self.limit and i not in self.skipped:
                if self.task.cfg.on_overflow == "error":
                    raise DataError(f"task '{self.task.name}' document {i + 1}: {n} tokens exceed the model's context of {self.limit} ({self.who}; eval.on_overflow=skip skips such documents).")
                self.skipped[i] = n
        return [j for j, i in enumerate(ids) if i not in self.skipped]


def check_prompt(prompt, i: int, who: str, use_chat: bool) -> None:
    """A prompt is text, or chat turns where the tokenizer has a chat template; else an error naming document ``i``."""
    chat = isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)
    if not (isinstance(prompt, str) or chat):
        raise PluginError(f"{who} gave {prompt!r} as the prompt of document {i + 1}; a prompt is text or chat turns ({{'role', 'content'}} dicts).")
    if chat and not use_chat:
        raise ConfigError(f"{who} builds chat turns (document {i + 1}), but the tokenizer has no chat template or eval.chat_template=never.")
