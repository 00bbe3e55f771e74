"""Answer extraction on the messy completions users report, with GSM8K's filters (conf/eval/gsm8k_style.yaml)."""

import pytest
from omegaconf import OmegaConf

from rlhf_lab.__main__ import CONF_DIR
from rlhf_lab.prompting.extract import extract, majority, normalise

GSM8K = OmegaConf.load(f"{CONF_DIR}/eval/gsm8k_style.yaml")


def answer(text: str, strict: bool) -> str | None:
    found = extract(text, GSM8K.strict_pattern if strict else GSM8K.flexible_pattern, last=not strict)
    return None if found is None else normalise(found, list(GSM8K.ignore_patterns), GSM8K.ignore_case)


@pytest.mark.parametrize(
    "completion, strict, flexible",
    [
        ("She pays 3 * 4 = 12 dollars.\n#### 12", "12", "12"),
        ("The trip is 72 km", None, "72"),  # trailing unit: no '####', the last number
        ("#### 1,234 dollars", "1234", "1234"),  # commas in numbers
        ("It costs $1,000.", None, "1000"),  # currency sign and final full stop dropped
        ("3 + 4 = 7, and 7 * 2 = 14", None, "14"),  # several numbers: the last
        ("#### 5\nbut actually 6", "5", "6"),  # strict takes the first '####', flexible the last number
        ("I do not know.", None, None),  # no answer at all
        ("", None, None),
        ("#### -3", "-3", "-3"),
    ],
)
def test_gsm8k_filters(completion, strict, flexible):
    assert answer(completion, strict=True) == strict
    assert answer(completion, strict=False) == flexible


def test_gold_is_normalised_like_the_answer():
    assert normalise("1,234", list(GSM8K.ignore_patterns), True) == answer("#### 1234", strict=True)


def test_synthetic_filters_whole_completion_and_last_line():
    from rlhf_lab.config import EvalConfig

    cfg = EvalConfig()
    assert extract(" 42 ", cfg.strict_pattern) == "42"
    assert extract("41\n42", cfg.strict_pattern) is None  # strict: one line only
    assert extract("41\n42\n", cfg.flexible_pattern, last=True) == "42"


def test_majority_ignores_missing_and_breaks_ties_by_first_seen():
    assert majority([None, "7", "8", "7"]) == "7"
    assert majority(["8", "7", "7", "8"]) == "8"
    assert majority([None, None]) is None
