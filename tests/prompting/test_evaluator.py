"""Tasks, strategies and the evaluator on local files of GSM8K and MMLU shape, bad input included."""

import math
import random

import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.__main__ import CONF_DIR
from rlhf_lab.config import EvalConfig, ModelConfig
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.models import load_causal_lm
from rlhf_lab.prompting import strategies as S
from rlhf_lab.prompting.engine import encode_pair, loglikelihoods
from rlhf_lab.prompting.evaluator import Evaluator
from rlhf_lab.prompting.tasks import load_task

from tests.conftest import write_jsonl

GSM8K_ROWS = [{"question": f"Tom has {a} apples and buys {b}. How many?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]]
MMLU_ROWS = [
    {"question": "2 + 2 =", "choices": ["3", "4", "5", "22"], "answer": 1, "subject": "maths"},
    {"question": "Capital of France?", "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": 0, "subject": "geography"},
    {"question": "Opposite of hot?", "choices": ["warm", "cold", "tepid", "boiling"], "answer": 1, "subject": "words"},
]


def task_cfg(preset: str, path, **overrides):
    base = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(f"{CONF_DIR}/eval/{preset}.yaml"))
    return OmegaConf.merge(base, {"path": str(path), **overrides})


def strategy(cls, schema, **fields):
    return cls(OmegaConf.structured(schema(name=cls.__name__, **fields)))


@pytest.fixture(scope="module")
def tiny_model():
    return load_causal_lm(ModelConfig()).eval()


@pytest.fixture
def gsm8k(tmp_path):
    return load_task(task_cfg("gsm8k_style", write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)), {})


def test_gsm8k_rows_split_into_steps_and_answer(gsm8k):
    doc = gsm8k.docs[0]
    assert (doc.answer, doc.rationale) == ("3", "1 + 2 = 3")
    assert gsm8k.question(doc) == "Question: Tom has 1 apples and buys 2. How many?\nAnswer:"
    assert gsm8k.target(doc, with_rationale=True) == "1 + 2 = 3\n#### 3"


def test_few_shot_prompt_layout_and_lm_eval_sampling(gsm8k):
    few = strategy(S.FewShot, S.FewShotConfig, k=2)
    doc = gsm8k.docs[0]
    prompt = few.prompt(doc, gsm8k, random.Random(1234))
    # lm-evaluation-harness draws k + 1 from the evaluated rows and drops the document asked
    drawn = [d for d in random.Random(1234).sample(gsm8k.docs, 3) if d is not doc][:2]
    expected = "".join(f"{gsm8k.question(d)} #### {d.answer}\n\n" for d in drawn) + gsm8k.question(doc)
    assert prompt == expected


def test_multiturn_few_shot_and_cot_trigger(gsm8k):
    turns = strategy(S.FewShot, S.FewShotConfig, k=2, multiturn=True).prompt(gsm8k.docs[1], gsm8k, random.Random(0))
    assert [m["role"] for m in turns] == ["user", "assistant", "user", "assistant", "user"]
    cot = strategy(S.ChainOfThought, S.CoTConfig, k=1).prompt(gsm8k.docs[1], gsm8k, random.Random(0))
    assert "#### " in cot and cot.endswith("Answer: Let's think step by step.")


def test_k_larger_than_the_pool_is_an_error(gsm8k, tiny_tokenizer):
    with pytest.raises(ConfigError, match="k=5 exemplars asked.*5 evaluated rows"):
        Evaluator(gsm8k, strategy(S.FewShot, S.FewShotConfig, k=5), "few_shot", tiny_tokenizer)


def test_fewshot_file_is_the_exemplar_pool(tmp_path):
    cfg = task_cfg("gsm8k_style", write_jsonl(tmp_path / "t.jsonl", GSM8K_ROWS[:2]), fewshot_path=str(write_jsonl(tmp_path / "f.jsonl", GSM8K_ROWS[2:])))
    task = load_task(cfg, {})
    assert task.pool is not None and len(task.pool) == 3
    with pytest.raises(ConfigError, match="k=4 exemplars asked.*3 in its exemplar pool"):
        task.exemplars(task.docs[0], 4, random.Random(0))


def test_missing_mapped_field_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1 + 1?", "solution": "#### 2"}])
    with pytest.raises(DataError, match=r"bad.jsonl row 1: task 'gsm8k_style' needs field\(s\) \['question', 'answer'\]"):
        load_task(task_cfg("gsm8k_style", path), {})
    with pytest.raises(DataError, match=r"mapped column\(s\) \['query'\] not found"):
        load_task(task_cfg("gsm8k_style", path, fields={"question": "query", "answer": "solution"}), {})
    assert load_task(task_cfg("gsm8k_style", path, fields={"question": "problem", "answer": "solution"}), {}).docs[0].answer == "2"


def test_bad_choice_label_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(DataError, match="label 5 is not a choice index"):
        load_task(task_cfg("mmlu_style", path), {})


def test_prompt_longer_than_the_context_is_skipped_or_an_error(gsm8k, tiny_model, tiny_tokenizer):
    long = OmegaConf.merge(gsm8k.cfg, {"max_length": 50, "max_new_tokens": 8})
    gsm8k.cfg = long
    gsm8k.docs[0].question = "many words " * 30
    result = Evaluator(gsm8k, strategy(S.ZeroShot, S.ZeroShotConfig), "zero_shot", tiny_tokenizer).run(tiny_model)
    assert (result.metrics["scored"], result.metrics["skipped"]) == (4, 1)
    gsm8k.cfg = OmegaConf.merge(long, {"on_overflow": "error"})
    with pytest.raises(DataError, match="document 1: .* tokens exceed the model's context of 50"):
        Evaluator(gsm8k, strategy(S.ZeroShot, S.ZeroShotConfig), "zero_shot", tiny_tokenizer).run(tiny_model)


def test_multiple_choice_accuracy_is_the_argmax_of_the_log_likelihoods(tmp_path, tiny_model, tiny_tokenizer):
    cfg = task_cfg("mmlu_style", write_jsonl(tmp_path / "mc.jsonl", MMLU_ROWS), choice_labels=[])  # score the choice texts
    task = load_task(cfg, {})
    result = Evaluator(task, strategy(S.ZeroShot, S.ZeroShotConfig), "zero_shot", tiny_tokenizer).run(tiny_model)
    acc = acc_norm = 0
    for doc in task.docs:
        context = task.question(doc)
        lls = loglikelihoods(tiny_model, [encode_pair(tiny_tokenizer, context, " " + c, True) for c in doc.choices], 1, 0)
        acc += max(range(4), key=lambda j: lls[j]) == doc.label
        acc_norm += max(range(4), key=lambda j: lls[j] / len(doc.choices[j])) == doc.label
    assert result.metrics["acc"] == acc / 3 and result.metrics["acc_norm"] == acc_norm / 3
    assert result.flat()["eval/mmlu_style/zero_shot/accuracy"] == result.metrics["acc"]


def test_mmlu_prompt_lists_labelled_choices(tmp_path):
    task = load_task(task_cfg("mmlu_style", write_jsonl(tmp_path / "mc.jsonl", MMLU_ROWS)), {})
    doc = task.docs[0]
    assert task.question(doc) == "2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    assert (task.continuations(doc), doc.answer) == (["A", "B", "C", "D"], "B")


def test_writing_strategies_refuse_multiple_choice(tmp_path, tiny_tokenizer):
    task = load_task(task_cfg("mmlu_style", write_jsonl(tmp_path / "mc.jsonl", MMLU_ROWS)), {})
    with pytest.raises(ConfigError, match="needs a generation task"):
        Evaluator(task, strategy(S.SelfConsistency, S.SelfConsistencyConfig), "self_consistency", tiny_tokenizer)


def test_self_consistency_reports_maj_at_n_and_is_deterministic(gsm8k, tiny_model, tiny_tokenizer):
    gsm8k.cfg = OmegaConf.merge(gsm8k.cfg, {"max_new_tokens": 6})
    sc = strategy(S.SelfConsistency, S.SelfConsistencyConfig, n=3, trigger="")
    first = Evaluator(gsm8k, sc, "self_consistency", tiny_tokenizer).run(tiny_model)
    second = Evaluator(gsm8k, sc, "self_consistency", tiny_tokenizer).run(tiny_model)
    assert "maj@3" in first.metrics
    assert [r["output"] for r in first.records] == [r["output"] for r in second.records]
    assert all(r["output"].count("\n---\n") == 2 for r in first.records)


def test_perplexity_of_held_out_text_as_lm_evaluation_harness_defines_it(tmp_path, tiny_model, tiny_tokenizer):
    texts = ["the cat  sat on\tthe mat", "h\u00e9llo"]
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"name": "text", "kind": "loglikelihood_rolling", "loader": "file", "path": str(write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts]))})
    result = Evaluator(load_task(cfg, {}), strategy(S.ZeroShot, S.ZeroShotConfig), "zero_shot", tiny_tokenizer).run(tiny_model)
    assert [(r["words"], r["bytes"]) for r in result.records] == [(6, 23), (1, 6)]  # words split at runs of whitespace; UTF-8 bytes
    lls = []
    for text in texts:  # shorter than the context: one window, the first token predicted from BOS
        ids = torch.tensor([[tiny_tokenizer.bos_token_id, *tiny_tokenizer(text)["input_ids"]]])
        logps = tiny_model(ids).logits[0, :-1].log_softmax(-1)
        lls.append(logps.gather(-1, ids[0, 1:, None]).sum().item())
    assert [r["loglikelihood"] for r in result.records] == pytest.approx(lls, abs=1e-4)
    ll = sum(lls)
    assert result.metrics["word_perplexity"] == pytest.approx(math.exp(-ll / 7), rel=1e-4)
    assert result.metrics["byte_perplexity"] == pytest.approx(math.exp(-ll / 29), rel=1e-4)
    assert result.metrics["bits_per_byte"] == pytest.approx(-ll / 29 / math.log(2), rel=1e-4)
    assert result.metrics["model_calls"] == 1
    windowed = Evaluator(load_task(OmegaConf.merge(cfg, {"max_length": 4}), {}), strategy(S.ZeroShot, S.ZeroShotConfig), "zero_shot", tiny_tokenizer).run(tiny_model)
    assert windowed.metrics["word_perplexity"] != pytest.approx(result.metrics["word_perplexity"], rel=1e-3)  # a 4-token context sees less


def test_perplexity_tasks_need_text_and_take_no_prompting(tmp_path, tiny_tokenizer):
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"name": "text", "kind": "loglikelihood_rolling", "loader": "file", "path": str(write_jsonl(tmp_path / "t.jsonl", [{"page": "x"}]))})
    with pytest.raises(DataError, match=r"t.jsonl row 1: task 'text' needs field\(s\) \['text'\]"):
        load_task(cfg, {})
    task = load_task(OmegaConf.merge(cfg, {"fields": {"text": "page"}}), {})
    with pytest.raises(ConfigError, match="scores the log-likelihood of its texts as they are: prompting=few_shot does not apply"):
        Evaluator(task, strategy(S.FewShot, S.FewShotConfig, k=0), "few_shot", tiny_tokenizer)
