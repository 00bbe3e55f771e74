"""Rule-based verifiable reward (``reward=verifiable``): exact match of the answer extracted from
a completion against the row's ``answer`` column, as reasoning tasks are scored (RLVR, Tulu 3,
https://arxiv.org/abs/2411.15124, sec. 6):

    R(x, y) = correct  if normalise(extract(y)) == normalise(answer(x))  else  wrong

Extraction and normalisation are the evaluation's (``rlhf_lab.prompting.extract``), so training
optimises what evaluation measures. The default for online RL when no reward is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from rlhf_lab.config import RewardConfig
from rlhf_lab.prompting.extract import extract, normalise


@dataclass
class VerifiableConfig(RewardConfig):
    pattern: str = r"([^\n]*\S)"  # regex whose last match is the answer (its first non-empty group, if any); default: the last non-empty line
    ignore_patterns: List[str] = field(default_factory=lambda: ["\\.$"])  # regexes removed from answer and gold before comparing
    ignore_case: bool = False
    correct: float = 1.0  # reward of a right answer
    wrong: float = 0.0  # reward of a wrong or missing answer


def verifiable(cfg: VerifiableConfig, tokenizer):
    ignore = list(cfg.ignore_patterns)

    def score(prompts: list, completions: list[str], answer: list) -> list[float]:
        out = []
        for completion, gold in zip(completions, answer):
            found = extract(completion, cfg.pattern, last=True)
            right = found is not None and normalise(found, ignore, cfg.ignore_case) == normalise(str(gold), ignore, cfg.ignore_case)
            out.append(cfg.correct if right else cfg.wrong)
        return out

    return score
