"""Reward sources for online RL, chosen with ``reward=<name>`` (a config group plugins extend).

A source's factory ``factory(cfg, tokenizer)`` returns ``score(prompts, completions) -> list[float]``:
the rows' prompts (text, or a chat as a list of messages) and the completions' text. A score
function may also name columns of the prompt rows as keyword arguments (``answer``, ``task``, or
``**columns`` for all): they are passed for the same rows. If ``score`` has a ``gold`` attribute
(a function of the same form) it is the gold score of a lab setting: the objective logs it
beside the reward it optimises.

``Reward`` wraps a score function for the trainer: it passes the columns, checks that every
score is a finite number, and turns any failure into a ``RewardError`` that names the source.
It times every call (a call over ``SLOW_S`` is logged with its time); with ``reward.timeout_s``
the call runs in a helper thread, a line reports a call still running every ``PROGRESS_EVERY_S``,
and a call past the limit stops the run (the thread is abandoned: Python cannot stop one).
With no ``reward`` chosen, online RL uses ``verifiable``: the exact-answer reward that prompt rows
with an ``answer`` column define.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.errors import ConfigError, RlhfLabError

if TYPE_CHECKING:
    import torch

# torch is imported inside the methods that score: the reward schemas of this package register while
# a config is composed, which must not load it (``python -m rlhf_lab --cfg job`` stays fast).

DEFAULT_REWARD = "verifiable"
SLOW_S = 1.0  # a scoring call that took longer is logged with its time
PROGRESS_EVERY_S = 10.0  # with a timeout: how often a call still running is reported
log = logging.getLogger(__name__)


class RewardError(RlhfLabError):
    """A reward source failed or returned something that is not a finite number per completion."""


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"


class Reward:
    def __init__(self, name: str, score: Callable[..., list[float]], timeout_s: float | None = None):
        self.name = name  # for messages: "'python' (my_module:score)"
        self.score = score
        self.gold = getattr(score, "gold", None)
        self.timeout_s = timeout_s

    def __call__(self, prompts: list, completions: list[str], rows: list[dict]) -> torch.Tensor:
        """(N,) float32 scores of ``completions``; raises ``RewardError`` naming the source."""
        return self._checked(self.score, "reward", prompts, completions, rows)

    def gold_scores(self, prompts: list, completions: list[str], rows: list[dict]) -> torch.Tensor:
        return self._checked(self.gold, "gold score", prompts, completions, rows)

    def _checked(self, fn: Callable, what: str, prompts: list, completions: list[str], rows: list[dict]) -> torch.Tensor:
        try:
            values = self._timed(fn, what, prompts, completions, self._columns(fn, what, rows))
        except RlhfLabError:
            raise
        except Exception as exc:
            raise RewardError(f"{what} {self.name} raised {type(exc).__name__}: {exc}") from exc
        if len(values) != len(completions):
            raise RewardError(f"{what} {self.name} returned {len(values)} scores for {len(completions)} completions.")
        for i, value in enumerate(values):
            try:  # float("0.5") would take a string: a score is a number, never text
                finite = not isinstance(value, (str, bytes)) and math.isfinite(float(value))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                raise RewardError(
                    f"{what} {self.name} returned {value!r} for completion {i} {completions[i][:60]!r} "
                    f"(prompt {str(prompts[i])[:60]!r}); every score must be a finite number."
                )
        import torch

        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    def _timed(self, fn: Callable, what: str, prompts: list, completions: list[str], columns: dict) -> list:
        start = time.perf_counter()
        if self.timeout_s is None:
            values = list(fn(prompts, completions, **columns))
        else:
            values = self._within_timeout(fn, what, prompts, completions, columns)
        seconds = time.perf_counter() - start
        (log.info if seconds >= SLOW_S else log.debug)("%s %s: scored %d completions in %.2f s", what, self.name, len(completions), seconds)
        return values

    def _within_timeout(self, fn: Callable, what: str, prompts: list, completions: list[str], columns: dict) -> list:
        import torch

        outcome: dict[str, Any] = {}
        grad = torch.is_grad_enabled()  # thread-local: the helper thread scores as the caller would

        def call() -> None:
            try:
                with torch.set_grad_enabled(grad):
                    outcome["values"] = list(fn(prompts, completions, **columns))
            except BaseException as exc:  # handed to the caller
                outcome["error"] = exc

        thread = threading.Thread(target=call, name=f"{what} {self.name}", daemon=True)  # daemon: never holds up the exit
        start = time.perf_counter()
        thread.start()
        while True:
            thread.join(min(PROGRESS_EVERY_S, max(0.0, self.timeout_s - (time.perf_counter() - start))))
            waited = time.perf_counter() - start
            if not thread.is_alive():
                break
            if waited >= self.timeout_s:
                raise RewardError(f"{what} {self.name} took longer than reward.timeout_s={self.timeout_s:g} s to score "
                                  f"{len(completions)} completions; the run stops here (raise reward.timeout_s to allow more).")
            log.info("%s %s: still scoring %d completions after %.0f s", what, self.name, len(completions), waited)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["values"]

    def _columns(self, fn: Callable, what: str, rows: list[dict]) -> dict[str, list]:
        """The row columns that ``fn`` names after (prompts, completions), or all for ``**columns``."""
        import torch

        target = fn.forward if isinstance(fn, torch.nn.Module) else fn  # a module's __call__ hides its signature
        params = list(inspect.signature(target).parameters.values())[2:]
        available = set(rows[0]) if rows else set()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return {k: [row[k] for row in rows] for k in available}
        missing = [p.name for p in params if p.default is p.empty and p.name not in available]
        if missing:
            raise RewardError(
                f"{what} {self.name} needs column(s) {missing} that the prompt rows lack "
                f"(they have {sorted(available)}); add them to the data or choose another reward=..."
            )
        return {p.name: [row[p.name] for row in rows] for p in params if p.name in available}


def build_reward(cfg: DictConfig | None, entries: dict[str, Any], tokenizer) -> Reward:
    """The ``reward`` group's source (``entries``: the registry's rewards by name), or the default."""
    if cfg is None:
        cfg = OmegaConf.structured(entries[DEFAULT_REWARD].schema(name=DEFAULT_REWARD))
    if cfg.name not in entries:
        raise ConfigError(f"No reward named '{cfg.name}' is registered (known: {', '.join(sorted(entries))}).")
    entry = entries[cfg.name]
    score = entry.create(cfg, tokenizer)
    origin = "" if entry.plugin.entry_point == "built-in" else f", from {entry.plugin}"
    return Reward(f"'{cfg.name}' ({_qualified(score)}{origin})", score, cfg.get("timeout_s"))
