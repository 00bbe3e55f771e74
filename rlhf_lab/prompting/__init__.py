"""Prompting strategies and evaluation: how a task is put to a model, and how the answers are scored.

Writing a strategy
------------------
A one-pass strategy turns each document of a task into the prompt a model sees: subclass
``Strategy``, implement ``prompt``, give it a schema extending ``PromptingConfig`` (which carries
``name`` and ``seed``), and register both from a plugin::

    from dataclasses import dataclass
    from rlhf_lab.api import PromptingConfig, Strategy, hookimpl

    @dataclass
    class AnswerBrieflyConfig(PromptingConfig):
        instruction: str = "Answer with a number only."

    class AnswerBriefly(Strategy):
        def prompt(self, doc, task, rng):
            return f"{self.cfg.instruction}\n{task.question(doc)}"

    @hookimpl
    def rlhf_lab_add_prompting(register):
        register.add_prompting("answer_briefly", AnswerBriefly, AnswerBrieflyConfig)

A strategy that talks to the model in stages implements ``run`` instead, a small program over
batched calls; every stage asks for all the documents still active at once::

    class PlanThenSolve(Strategy):
        generates = True  # the answer is written, so multiple-choice tasks are refused

        def run(self, docs, task, lm, rng):
            asks = [f"{task.question(doc)} Let's devise a plan." for doc in docs]
            plans = lm.generate(asks)  # one batched call: n=1 completion per prompt
            return [s for (s,) in lm.generate([f"{a} {p} Now solve it." for a, (p,) in zip(asks, plans)])]

Then ``python -m rlhf_lab mode=eval prompting=<name>`` (or ``eval=<task>`` in a training run)
uses it. The interface, in full:

- ``Strategy(cfg)``: the factory; ``cfg`` is the composed ``prompting`` config (``self.cfg``).
- ``prompt(doc, task, rng) -> str | list[dict]``: one document's prompt: text, or chat turns
  (``{"role", "content"}`` dicts; they need a tokenizer with a chat template). Text goes through
  the chat template too when ``eval.chat_template=auto`` and the tokenizer has one. ``rng`` is a
  ``random.Random`` seeded from ``cfg.seed``. Multiple-choice tasks always use ``prompt``.
- ``run(docs, task, lm, rng) -> list[str | list[str]]``: generation tasks. ``docs`` are the task's
  documents in order (a document's position is its id); return one answer per document: its
  completion text, or several sampled texts that ``vote`` combines. The default calls ``prompt``
  for every document, then ``lm.generate`` once.
- ``lm`` (``LM``), each method one batched call over the requests it is given; ``ids`` names the
  document of each request (default: request i is document i), so that a prompt too long for the
  model skips that document (or stops the run naming it) and the calls of each document appear
  in the W&B samples table:

  - ``lm.generate(prompts, ids=None, *, n=1, temperature=0.0, top_p=1.0, max_new_tokens=None,
    stop=None) -> list[list[str]]``: n completions per prompt (defaults: the task's
    ``eval.max_new_tokens`` and ``eval.stop``);
  - ``lm.loglikelihood(contexts, continuations, ids=None, *, per_token=False) -> list[float]``:
    log p(continuation | context), summed (or averaged) over the continuation's tokens;
  - ``lm.loglikelihood_rolling(texts, ids=None) -> list[float]``: log p(text) of whole texts;
  - ``lm.reward(prompts, completions, ids=None) -> list[float]``: the run's reward source
    (``reward=...``); set ``needs_reward = True`` so that a run without one stops before the model
    loads, naming the key;
  - ``lm.calls``: the batched calls made so far, by method.
- ``doc`` (``Doc``): ``question``, ``answer``, ``rationale`` (or None), ``choices``, ``label``, and
  ``row`` (every column of the source row).
- ``task`` (``Task``): ``task.question(doc)`` (the document rendered by the task's template, ending
  where the answer starts), ``task.target(doc, with_rationale=False)`` (a solved exemplar's
  answer, with its steps for chain of thought), ``task.exemplars(doc, k, rng)`` (k other solved
  documents), ``task.cfg`` (the ``eval`` config: ``target_delimiter``, ...), ``task.kind``;
  ``Task.from_rows(rows, **eval_options)`` builds one in memory, for tests.
- Class attributes: ``generates`` (True: generation tasks only), ``needs_reward``, ``samples``
  (completions per prompt in the default ``run``, default 1), ``temperature`` (0: greedy) and
  ``top_p``; set them in ``__init__`` from the config if they are options.
- ``vote(answers) -> answer``: a document's answer from its samples' normalised answers (None
  where a sample had none); the default takes the first, ``self_consistency`` the majority.

A prompt or an answer that is not text (``None``, a number) stops the run naming the document.

A plugin imports every name above from ``rlhf_lab.api`` (``Strategy``, ``PromptingConfig``,
``Doc``, ``Task``, ``LM``, ``Answer``, ``Prompt``, ``hookimpl``); the modules named below are
internal and may change in any release.

Built in (``strategies.py``): ``zero_shot``, ``few_shot``, ``cot``, ``self_consistency`` (one pass);
``least_to_most``, ``self_refine``, ``best_of_n`` (staged). Tasks and their config are in
``tasks.py`` and ``rlhf_lab.config.EvalConfig``; the model handle in ``lm.py``; scoring in
``evaluator.py``.
"""

import importlib
from typing import TYPE_CHECKING

from rlhf_lab.prompting.strategies import (
    Answer,
    BestOfN,
    BestOfNConfig,
    ChainOfThought,
    CoTConfig,
    FewShot,
    FewShotConfig,
    LeastToMost,
    LeastToMostConfig,
    Prompt,
    SelfConsistency,
    SelfConsistencyConfig,
    SelfRefine,
    SelfRefineConfig,
    Strategy,
    ZeroShot,
    ZeroShotConfig,
)

if TYPE_CHECKING:
    from rlhf_lab.prompting.lm import LM
    from rlhf_lab.prompting.tasks import Doc, Task

# The model handle and the tasks load transformers and datasets: imported when first asked for, so
# that registering the built-in strategies (and composing a config) does not.
_LAZY = {"LM": "rlhf_lab.prompting.lm", "Doc": "rlhf_lab.prompting.tasks", "Task": "rlhf_lab.prompting.tasks"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LM",
    "Answer",
    "BestOfN",
    "BestOfNConfig",
    "ChainOfThought",
    "CoTConfig",
    "Doc",
    "FewShot",
    "FewShotConfig",
    "LeastToMost",
    "LeastToMostConfig",
    "Prompt",
    "SelfConsistency",
    "SelfConsistencyConfig",
    "SelfRefine",
    "SelfRefineConfig",
    "Strategy",
    "Task",
    "ZeroShot",
    "ZeroShotConfig",
]
