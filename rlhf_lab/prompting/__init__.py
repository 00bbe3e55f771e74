"""Prompting strategies and evaluation: how a task is put to a model, and how the answers are scored.

Writing a strategy
------------------
A strategy turns one document of a task into the prompt a model sees. Subclass ``Strategy``,
implement ``prompt``, give it a schema extending ``rlhf_lab.config.PromptingConfig`` (which
carries ``name`` and ``seed``), and register both from a plugin::

    from dataclasses import dataclass
    from rlhf_lab import hookimpl
    from rlhf_lab.config import PromptingConfig
    from rlhf_lab.prompting import Strategy

    @dataclass
    class PlanAndSolveConfig(PromptingConfig):
        trigger: str = "Let's first understand the problem and devise a plan to solve it."

    class PlanAndSolve(Strategy):
        generates = True  # the answer is written, so multiple-choice tasks are refused

        def prompt(self, doc, task, rng):
            return f"{task.question(doc)} {self.cfg.trigger}"

    @hookimpl
    def rlhf_lab_add_prompting(register):
        register.add_prompting("plan_and_solve", PlanAndSolve, PlanAndSolveConfig)

Then ``python -m rlhf_lab mode=eval prompting=plan_and_solve`` (or ``eval=<task>`` in a training
run) uses it. The interface, in full:

- ``Strategy(cfg)``: the factory; ``cfg`` is the composed ``prompting`` config (``self.cfg``).
- ``prompt(doc, task, rng) -> str | list[dict]``: called once per document, in order, before any
  model runs. Return text, or chat turns (``{"role", "content"}`` dicts; they need a tokenizer
  with a chat template). Text goes through the chat template too when ``eval.chat_template=auto``
  and the tokenizer has one. ``rng`` is a ``random.Random`` seeded from ``cfg.seed``.
- ``doc`` (``Doc``): ``question``, ``answer``, ``rationale`` (or None), ``choices``, ``label``, and
  ``row`` (every column of the source row).
- ``task`` (``Task``): ``task.question(doc)`` (the document rendered by the task's template, ending
  where the answer starts), ``task.target(doc, with_rationale=False)`` (a solved exemplar's
  answer, with its steps for chain of thought), ``task.exemplars(doc, k, rng)`` (k other solved
  documents), ``task.cfg`` (the ``eval`` config: ``target_delimiter``, ...), ``task.kind``.
- Class attributes: ``generates`` (True: generation tasks only), ``samples`` (completions per
  prompt, default 1), ``temperature`` (0: greedy) and ``top_p``; set them in ``__init__`` from
  the config if they are options.
- ``vote(answers) -> answer``: a document's answer from its samples' normalised answers (None
  where a sample had none); the default takes the first, ``self_consistency`` the majority.

Built in: ``zero_shot``, ``few_shot``, ``cot``, ``self_consistency`` (``strategies.py``). Tasks and
their config are in ``tasks.py`` and ``rlhf_lab.config.EvalConfig``; scoring in ``evaluator.py``.
"""

from rlhf_lab.prompting.strategies import (
    ChainOfThought,
    CoTConfig,
    FewShot,
    FewShotConfig,
    Prompt,
    SelfConsistency,
    SelfConsistencyConfig,
    Strategy,
    ZeroShot,
    ZeroShotConfig,
)
from rlhf_lab.prompting.tasks import Doc, Task

__all__ = [
    "ChainOfThought",
    "CoTConfig",
    "Doc",
    "FewShot",
    "FewShotConfig",
    "Prompt",
    "SelfConsistency",
    "SelfConsistencyConfig",
    "Strategy",
    "Task",
    "ZeroShot",
    "ZeroShotConfig",
]
