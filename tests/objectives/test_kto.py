"""KTO: the loss by hand (z0 from mismatched pairs, detached, clamped), the objective at step 0 on
the tiny model, the mismatched pairs it encodes, and unpaired rows validated row by row."""

from __future__ import annotations

import re

import pytest
import torch

from rlhf_lab.config import DataConfig, ModelConfig, OptimConfig
from rlhf_lab.data.collate import pad_collate
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.synthetic import generate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import DataError
from rlhf_lab.models import ModelFactory
from rlhf_lab.objectives.kto import KTO, KTOConfig
from rlhf_lab.objectives.losses import kto, kto_reference_point
from tests.conftest import feature_set, write_jsonl


def test_kto_loss_by_hand():
    # beta 0.5, lambda_D 1, lambda_U 2; mismatched log-ratios 0.6, 0.2, -0.2: z0 = mean = 0.2
    z0 = kto_reference_point(torch.tensor([0.6, 0.2, -0.2]))
    assert z0.item() == pytest.approx(0.2)
    losses, rewards = kto(torch.tensor([2.0, -1.0, 0.0]), torch.tensor([True, False, True]), z0,
                          beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)  # fmt: skip
    # desirable, r = 2:    1 - sigma(0.5 * (2 - 0.2))    = 1 - sigma(0.9)  = 1 - 0.710950 = 0.289050
    # undesirable, r = -1: 2 * (1 - sigma(0.5 * (0.2 + 1))) = 2 * (1 - sigma(0.6)) = 2 * 0.354344 = 0.708688
    # desirable, r = 0:    1 - sigma(0.5 * (0 - 0.2))    = 1 - sigma(-0.1) = sigma(0.1)    = 0.524979
    torch.testing.assert_close(losses, torch.tensor([0.289050, 0.708688, 0.524979]), rtol=0, atol=1e-6)
    torch.testing.assert_close(rewards, torch.tensor([1.0, -0.5, 0.0]))  # beta * r


def test_reference_point_is_clamped_at_zero_and_detached():
    mismatched = torch.tensor([-0.3, -0.1], requires_grad=True)  # mean -0.2: a KL estimate below 0 is noise
    z0 = kto_reference_point(mismatched)
    assert z0.item() == 0.0 and not z0.requires_grad
    logratio = torch.tensor([0.5], requires_grad=True)
    kto(logratio, torch.tensor([True]), kto_reference_point(torch.tensor([0.1], requires_grad=True)), beta=1.0)[0].sum().backward()
    # d/dr [1 - sigma(r - z0)] = -sigma'(0.4) = -sigma(0.4) * (1 - sigma(0.4)) = -0.598688 * 0.401312
    assert logratio.grad.item() == pytest.approx(-0.598688 * 0.401312, abs=1e-6)


@pytest.fixture(scope="module")
def rows():
    return generate("unpaired", 6, seed=1)  # right answers (desirable) and wrong ones by turns


def make_kto(tokenizer, **cfg) -> KTO:
    return KTO(KTOConfig(name="kto", **cfg), models=ModelFactory(ModelConfig(), tokenizer), tokenizer=tokenizer, optim=OptimConfig())


def test_each_row_is_paired_with_another_rows_completion(rows, tiny_tokenizer):
    features = KTO.encode(Encoder(tiny_tokenizer, max_length=64), rows)
    completion = lambda seq: tiny_tokenizer.decode([t for t in seq["labels"] if t >= 0], skip_special_tokens=True)
    prompt = lambda seq: tiny_tokenizer.decode([t for t, label in zip(seq["input_ids"], seq["labels"]) if label < 0])
    partners = []
    for row, feature in zip(rows, features):
        matched, mismatched = feature["sequences"]
        assert completion(matched) == row["completion"] and feature["row"] == {"label": row["label"]}
        assert prompt(mismatched) == prompt(matched)  # the same prompt ...
        partners.append([r["completion"] for r in rows].index(completion(mismatched)))
    assert sorted(partners) == list(range(len(rows)))  # ... with every other row's completion once
    assert all(p != i for i, p in enumerate(partners))


def test_step_zero_loss_is_half_the_weight(rows, tiny_tokenizer):
    """With pi = pi_ref every log-ratio and z0 are 0, so each row's loss is lambda_y (1 - sigma(0)) = lambda_y / 2."""
    model = make_kto(tiny_tokenizer, reference="live", desirable_weight=1.0, undesirable_weight=3.0)
    batch = pad_collate(KTO.encode(Encoder(tiny_tokenizer, max_length=64), rows), tiny_tokenizer.pad_token_id)
    loss, metrics = model.compute_loss(batch)
    assert loss.item() == pytest.approx((3 * 0.5 + 3 * 1.5) / 6, abs=1e-6)  # 3 desirable, 3 undesirable rows
    assert metrics["kl"].item() == 0.0 and metrics["rewards/margin"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("label, problem", [("yes", "field 'label' must be true or false, got 'yes'"),
                                            (None, "missing field(s): needs prompt+completion+label")])  # fmt: skip
def test_unpaired_rows_are_validated_naming_file_and_row(tmp_path, tiny_tokenizer, label, problem):
    good = {"prompt": "p", "completion": "c", "label": True}
    path = write_jsonl(tmp_path / "feedback.jsonl", [good, good, {"prompt": "p", "completion": "c", "label": label}])
    with pytest.raises(DataError, match=re.escape(f"{path} row 3: {problem}")):
        DataModule(DataConfig(path=str(path)), "unpaired", KTO.encode, Encoder(tiny_tokenizer, 64), {}, seed=0)


def test_a_table_whose_last_batch_would_be_one_row_pairs_it_within_the_batch_before(tiny_tokenizer):
    """Rows are encoded 1,000 at a time: the 1,001st row alone could have no mismatched partner."""
    rows = generate("unpaired", 1001, seed=2)
    features = feature_set(rows, "unpaired", KTO.encode, Encoder(tiny_tokenizer, max_length=64))
    assert len(features) == 1001
    last = features[1000]["sequences"]
    assert last[0]["input_ids"] != last[1]["input_ids"] and features[1000]["row"] == {"label": rows[-1]["label"]}
    assert [extra["row"]["label"] for extra in features.extras()] == [row["label"] for row in rows]  # what on_fit_start counts
