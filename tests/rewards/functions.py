"""Reward functions that tests name by import path (``reward.fn=tests.rewards.functions:...``)."""

import os

calls = 0


def share_of_a(prompts, completions):
    """The share of the letter 'a' among a completion's characters (a random policy scores ~0.05)."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def length(prompts, completions):
    return [float(len(c)) for c in completions]


def needs_answer(prompts, completions, answer, task=None):
    """1 for the row's answer, plus 0.5 on task 'add' (columns come as lists, one value per completion)."""
    task = task or [None] * len(completions)
    return [float(a == c) + 0.5 * (t == "add") for c, a, t in zip(completions, answer, task)]


def sees_all_columns(prompts, completions, **columns):
    return [float(len(columns))] * len(completions)


def fails_later(prompts, completions):
    """share_of_a until call ``FAIL_AT_CALL``; then raises, as a judge service that went down."""
    global calls
    calls += 1
    if calls >= int(os.environ.get("FAIL_AT_CALL", "1")):
        raise ConnectionError("judge service unreachable")
    return share_of_a(prompts, completions)


def flat_on_add(prompts, completions, task):
    """0 for every completion of task 'add' (a group with no signal), share_of_a otherwise."""
    return [0.0 if t == "add" else c.count("a") / max(len(c), 1) for c, t in zip(completions, task)]
