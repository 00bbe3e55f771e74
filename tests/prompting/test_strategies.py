"""Strategies that talk to the model in stages: the LM handle (one batched call per stage, document
ids, overflow, bad prompts and answers), each staged strategy's control flow against a model that
has every habit of the arith world, best-of-n's choice, and the plugin guide's example."""

import random
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlhf_lab.config import ModelConfig
from rlhf_lab.errors import ConfigError, DataError, PluginError
from rlhf_lab.lab import world
from rlhf_lab.models import load_causal_lm
from rlhf_lab.prompting import strategies as S
from rlhf_lab.prompting.evaluator import Evaluator
from rlhf_lab.prompting.lm import LM
from rlhf_lab.prompting.tasks import Task
from rlhf_lab.rewards import Reward
from rlhf_lab.rewards.model import ModelRewardConfig, RewardModelScorer

ADDITIONS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]


def strategy(cls, schema, **fields):
    return cls(OmegaConf.structured(schema(name=cls.__name__, **fields)))


@pytest.fixture(scope="module")
def tiny_model():
    return load_causal_lm(ModelConfig()).eval()


def additions(**options) -> Task:
    return Task.from_rows(ADDITIONS, name="add", chat_template="never", **{"max_new_tokens": 6, **options})


class WorldModel:
    """Stands in for a model that learnt every habit of the arith world's SFT rows perfectly, except
    that its first worked answer to the documents in ``slips`` carries a calculation slip. It
    answers a prompt as those rows do, so a strategy whose prompts drift from them answers wrong.
    It keeps the documents of each batched call in ``batches``."""

    def __init__(self, slips=()):
        self.slips = set(slips)
        self.batches: list[list[int]] = []

    def generate(self, prompts, ids=None, *, n=1, **sampling):
        ids = list(range(len(prompts))) if ids is None else list(ids)
        self.batches.append(ids)
        return [[self.reply(p, i)] * n for p, i in zip(prompts, ids)]

    def reply(self, prompt: str, i: int = -1) -> str:
        if prompt.endswith(f" {world.DECOMPOSE_TRIGGER}"):
            return " ".join(f'"{s}"' for s in world.subquestions(prompt.removesuffix(f" {world.DECOMPOSE_TRIGGER}")))
        cot = re.fullmatch(rf"(Compute [^.]*\.) {re.escape(world.COT_TRIGGER)}(?: (.*) Feedback:(?: .* Revised:)?)?", prompt)
        if cot:
            question, answer = cot.groups()
            if answer is not None and not prompt.endswith("Revised:"):
                return world.critique(question, answer)
            return world.worked(*world.parse_arith(question), (0, 1) if answer is None and i in self.slips else None)
        *solved, asked = prompt.split("\n")  # least-to-most: solved "<question> <step>" lines, then the next question
        if solved:
            value = int(re.findall(r"-?\d+", solved[-1])[-1])
            if not asked.startswith("Then "):
                return f"The answer is {value}."
            _, op, operand = asked.rstrip(".").split(" ")
            return f"{value} {op} {operand} = {value + int(operand) if op == '+' else value - int(operand)}."
        start, operations = world.parse_arith(asked)
        value = world.running_values(start, operations)[-1]
        return world.worked(start, operations).removesuffix(f" The answer is {value}.") if len(operations) == 1 else str(value)


def test_the_stand_in_answers_every_sft_row_of_the_world_as_the_row_does():
    model = WorldModel()
    for row in world.generate("sft", 600, task="arith"):
        assert model.reply(row["prompt"]) == row["completion"], row


def world_task(split: str, n: int) -> Task:
    return Task.from_rows(world.generate("prompt", n, split=split, task="arith"), name="world_arith", chat_template="never")


def test_least_to_most_solves_long_problems_one_sub_question_per_batched_stage():
    task, model = world_task("test_long", 6), WorldModel()
    answers = strategy(S.LeastToMost, S.LeastToMostConfig).run(task.docs, task, model, random.Random(0))
    assert answers == [f"The answer is {doc.answer}." for doc in task.docs]
    asked = [len(world.subquestions(doc.question)) + 1 for doc in task.docs]  # its sub-questions, then the question
    assert {5, 6} <= {a - 1 for a in asked}  # problems of 5 and 6 operations: stages end at different times
    # one call lists the sub-questions of all documents; stage j asks the documents that have a j-th question
    assert model.batches == [list(range(6)), *([i for i in range(6) if asked[i] > j] for j in range(max(asked)))]


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_self_refine_revises_only_the_answers_its_critique_flags(rounds):
    task, model = world_task("test", 5), WorldModel(slips={1, 3})
    answers = strategy(S.SelfRefine, S.SelfRefineConfig, rounds=rounds).run(task.docs, task, model, random.Random(0))
    right = {i for i, (a, doc) in enumerate(zip(answers, task.docs)) if a.endswith(f"The answer is {doc.answer}.")}
    assert right == ({0, 2, 4} if rounds == 0 else set(range(5)))
    # first answers; then a round: critique the documents still refining, revise the flagged ones;
    # the revised answers are right, so round 2 critiques them and stops
    expected = [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 3], [1, 3]][: 1 + 2 * rounds]
    assert model.batches == expected


def test_one_pass_strategies_make_one_batched_call(tiny_model, tiny_tokenizer):
    task = additions()
    for cls, schema, fields in ((S.ZeroShot, S.ZeroShotConfig, {}), (S.SelfConsistency, S.SelfConsistencyConfig, {"n": 3, "trigger": ""})):
        result = Evaluator(task, strategy(cls, schema, **fields), "s", tiny_tokenizer).run(tiny_model)
        assert (result.metrics["model_calls"], result.metrics["scored"]) == (1, 4)
        assert "calls" not in result.records[0]


class TwoStages(S.Strategy):
    """Asks each question, then asks again with the first answer (document 2 padded to ``long`` words)."""

    generates = True
    long = 0

    def run(self, docs, task, lm, rng):
        firsts = lm.generate([task.question(doc) for doc in docs])
        seconds = [f"{task.question(doc)} {a} Again:" + " word" * (self.long if i == 1 else 0) for i, (doc, (a,)) in enumerate(zip(docs, firsts))]
        return [a for (a,) in lm.generate(seconds)]


def test_a_second_stage_too_long_for_the_context_skips_that_document_or_names_it(tiny_model, tiny_tokenizer):
    task = additions(max_length=60)
    two = TwoStages(OmegaConf.structured(S.ZeroShotConfig(name="two")))
    result = Evaluator(task, two, "two", tiny_tokenizer).run(tiny_model)
    assert (result.metrics["scored"], result.metrics["skipped"], result.metrics["model_calls"]) == (4, 0, 2)
    assert result.records[0]["calls"].count("Again:") == 1  # the samples table shows both calls of a document
    two.long = 80
    result = Evaluator(task, two, "two", tiny_tokenizer).run(tiny_model)
    assert (result.metrics["scored"], result.metrics["skipped"]) == (3, 1)
    task.cfg = OmegaConf.merge(task.cfg, {"on_overflow": "error"})
    with pytest.raises(DataError, match=r"document 2: \d+ tokens exceed the model's context of 60 \(prompting=two"):
        Evaluator(task, two, "two", tiny_tokenizer).run(tiny_model)


class Answers(S.Strategy):
    """Answers what it is told to, for every document."""

    generates = True

    def __init__(self, cfg, answers):
        super().__init__(cfg)
        self.answers = answers

    def run(self, docs, task, lm, rng):
        return self.answers


@pytest.mark.parametrize(
    "answers, message",
    [
        (["3", "7", None, "15"], r"prompting=bad answered None for document 3; an answer is the completion text"),
        (["3", ["7", 7], "11", "15"], r"answered \['7', 7\] for document 2"),
        (["3", "7", "11", []], r"answered \[\] for document 4"),
        (["3"], r"run\(\) returned 1 answers for 4 documents"),
    ],
)
def test_an_answer_that_is_not_text_names_the_document(answers, message, tiny_model, tiny_tokenizer):
    with pytest.raises(PluginError, match=message):
        Evaluator(additions(), Answers(OmegaConf.structured(S.ZeroShotConfig(name="bad")), answers), "bad", tiny_tokenizer).run(tiny_model)


class NoPromptFor(S.ZeroShot):
    def prompt(self, doc, task, rng):
        return None if doc.answer == "11" else task.question(doc)


def test_a_prompt_that_is_not_text_names_the_document_before_any_model_runs(tiny_tokenizer):
    with pytest.raises(PluginError, match=r"prompting=none gave None as the prompt of document 3"):
        Evaluator(additions(), NoPromptFor(OmegaConf.structured(S.ZeroShotConfig(name="none"))), "none", tiny_tokenizer)


def test_best_of_n_keeps_the_sample_the_reward_ranks_highest(tiny_model, tiny_tokenizer):
    task = additions(max_new_tokens=8)
    seen = []

    def longest(prompts, completions, answer):  # a reward may read the documents' columns, as in online RL
        seen.append((list(prompts), list(answer)))
        return [float(len(c)) for c in completions]

    best = strategy(S.BestOfN, S.BestOfNConfig, n=4, temperature=1.0)
    lm = LM(tiny_model, tiny_tokenizer, task, "prompting=best_of_n", Reward("'longest'", longest))
    answers = best.run(task.docs, task, lm, random.Random(0))
    assert lm.calls == {"generate": 1, "reward": 1}  # 4 samples x 4 documents: one generation, one scoring
    for i, doc in enumerate(task.docs):
        samples = lm.trace[i][0]["outputs"]
        assert len(samples) == 4 and len(set(samples)) > 1
        assert answers[i] == max(samples, key=len)
    [(prompts, columns)] = seen
    cot = [f"{task.question(doc)} {world.COT_TRIGGER}" for doc in task.docs]  # the samples are chains of thought
    assert prompts == [p for p in cot for _ in range(4)] and columns == [doc.answer for doc in task.docs for _ in range(4)]


def test_best_of_n_reranks_with_a_reward_model(tiny_model, tiny_tokenizer, tmp_path):
    from rlhf_lab.models import load_scalar_head_model

    reward_model = load_scalar_head_model(ModelConfig(), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        reward_model.score.weight.normal_(generator=torch.Generator().manual_seed(0))
    reward_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    scorer = RewardModelScorer(ModelRewardConfig(name="model", path=str(tmp_path)))
    task = additions(max_new_tokens=8)
    lm = LM(tiny_model, tiny_tokenizer, task, "prompting=best_of_n", Reward("'model'", scorer))
    answers = strategy(S.BestOfN, S.BestOfNConfig, n=3, temperature=1.0).run(task.docs, task, lm, random.Random(0))
    for i, doc in enumerate(task.docs):
        samples = lm.trace[i][0]["outputs"]
        scores = scorer([f"{task.question(doc)} {world.COT_TRIGGER}"] * 3, samples)
        assert answers[i] == samples[max(range(3), key=scores.__getitem__)]


def test_best_of_n_by_the_models_own_likelihood(tiny_model, tiny_tokenizer):
    task = additions(max_new_tokens=8)
    lm = LM(tiny_model, tiny_tokenizer, task, "prompting=best_of_n")
    answers = strategy(S.BestOfN, S.BestOfNConfig, n=4, temperature=1.0, rank="loglikelihood").run(task.docs, task, lm, random.Random(0))
    assert lm.calls == {"generate": 1, "loglikelihood": 1}
    for i, doc in enumerate(task.docs):
        samples = [s for s in lm.trace[i][0]["outputs"] if s]
        per_token = lm.loglikelihood([f"{task.question(doc)} {world.COT_TRIGGER}"] * len(samples), samples, [i] * len(samples), per_token=True)
        assert answers[i] == samples[max(range(len(samples)), key=per_token.__getitem__)]


def test_a_strategy_that_needs_a_reward_says_which_key_to_set(tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError, match=r"prompting=best_of_n scores answers with a reward, but no reward is configured: set reward=<name>"):
        Evaluator(additions(), strategy(S.BestOfN, S.BestOfNConfig), "best_of_n", tiny_tokenizer)
    lm = LM(tiny_model, tiny_tokenizer, additions(), "prompting=mine")
    with pytest.raises(ConfigError, match=r"prompting=mine scores answers with a reward, but none is configured: set reward=<name>"):
        lm.reward(["q"], ["a"])


def test_the_plugin_guides_staged_strategy_runs(tiny_model, tiny_tokenizer):
    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    [source] = [block for block in re.findall(r"```python\n(.*?)```", guide, re.S) if "def run(" in block]
    namespace = {}
    exec(source, namespace)
    task = additions()
    lm = LM(tiny_model, tiny_tokenizer, task, "prompting=self_verify")
    answers = namespace["SelfVerify"](OmegaConf.structured(namespace["SelfVerifyConfig"](name="self_verify", n=3))).run(task.docs, task, lm, random.Random(0))
    assert lm.calls == {"generate": 1, "loglikelihood": 1}
    assert all(answer in lm.trace[i][0]["outputs"] for i, answer in enumerate(answers))
