"""Answer extraction and exact match, as lm-evaluation-harness scores GSM8K.

Two regex filters read the answer out of a completion: *strict* takes the first match of a
pattern that demands the task's answer format (``#### 72``), *flexible* the last match of a looser
one (the last number). Before comparing, the ``ignore`` regexes (``,``, ``$``, a final ``.``) are
removed from both the answer and the gold, and case is optionally ignored. A completion without
a match has no answer and is scored wrong.
"""

from __future__ import annotations

import re
from collections import Counter


def extract(text: str, pattern: str, last: bool = False) -> str | None:
    """The first (or last) match of ``pattern`` in ``text``, stripped; a match with groups gives
    its first non-empty group. None when nothing matches."""
    matches = re.findall(pattern, text)
    if not matches:
        return None
    match = matches[-1 if last else 0]
    if isinstance(match, tuple):
        match = next((group for group in match if group), "")
    return match.strip()


def normalise(text: str, ignore: list[str], ignore_case: bool) -> str:
    for pattern in ignore:
        text = re.sub(pattern, "", text)
    return text.lower() if ignore_case else text


def majority(answers: list[str | None]) -> str | None:
    """The most frequent answer (ties: the one seen first); None when no sample has one.
    Pass normalised answers, so that ``1,000`` and ``1000`` count as one."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None
