"""Self-instruct's filters on hand-made generations."""

import pytest

from rlhf_lab.config import SelfInstructConfig
from rlhf_lab.prompting.self_instruct import filter_round, instruction_problem, rouge_l, words

CFG = SelfInstructConfig(min_words=3, max_words=10, max_similarity=0.7)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("Name three colours of the rainbow.", None),
        ("", "empty"),
        ("Add them", "2 words, outside [3, 10]"),
        ("one two three four five six seven eight nine ten eleven", "11 words, outside [3, 10]"),
        ("- list three fruits", "starts with a symbol"),
        ("Write a poem \ufffd\ufffd about rain", "unprintable characters"),
        ("Write a poem\x1b about rain", "unprintable characters"),
    ],
)
def test_malformed_instructions(text, problem):
    assert instruction_problem(text, CFG) == problem


def test_rouge_l_by_hand():
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4
    assert rouge_l(["a", "b", "c", "d"], ["a", "c", "d", "e"]) == pytest.approx(0.75)
    assert rouge_l(["a"], []) == 0.0


def test_round_drops_and_counts_malformed_and_near_duplicates():
    seen = [words("What is 3 + 4?")]
    counts = {"generated": 0, "malformed": 0, "near_duplicate": 0}
    generated = [
        "What is 3 + 5?",  # near-duplicate of the seed
        "Name three colours of the rainbow.",
        "Name three colours of a rainbow.",  # near-duplicate of the one before
        "??",  # malformed
        "Translate 'house' into French.",
    ]
    assert filter_round(generated, seen, CFG, counts) == [1, 4]
    assert counts == {"generated": 5, "malformed": 1, "near_duplicate": 2}
    assert len(seen) == 3
