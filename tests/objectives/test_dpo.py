"""DPO on the real tiny model: ln 2 at step 0, one forward for chosen + rejected, the reference
(precomputed and cached, live, or the LoRA base), variants by config, and whole runs."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch

import rlhf_lab.models
from rlhf_lab.config import DataConfig, LoraConfig, ModelConfig, OptimConfig
from rlhf_lab.data.collate import Collator, pad_collate, packed_collate
from rlhf_lab.data.module import DataModule
from rlhf_lab.data.sources import row_problem
from rlhf_lab.data.synthetic import generate
from rlhf_lab.data.tokenize import Encoder
from rlhf_lab.errors import DataError
from rlhf_lab.models import ModelFactory
from rlhf_lab.objectives.dpo import DPO, DPOConfig, reference_cache_path
from tests.conftest import feature_set, write_jsonl

LN2 = math.log(2)
LEARNABLE = ("data.task=polite", "data.num_rows=400", "data.val_fraction=0.1", "trainer.max_steps=24")  # 12 batches an epoch, 2 epochs


@pytest.fixture(scope="module")
def feature_table(tiny_tokenizer):
    """6 pairs + 3 from the ranking, through the real data path."""
    rows = generate("preference", 6, seed=1) + [{"prompt": "Rank these", "ranked": ["best", "good", "bad"]}]
    return feature_set(rows, "preference", DPO.encode, Encoder(tiny_tokenizer, max_length=64))


@pytest.fixture(scope="module")
def features(feature_table) -> list[dict]:
    return feature_table.take(range(len(feature_table)))


@pytest.fixture
def models_built(monkeypatch):
    """Counts every causal LM the factory loads."""
    built = []
    real = rlhf_lab.models.load_causal_lm

    def counting(cfg, **kwargs):
        built.append(kwargs)
        return real(cfg, **kwargs)

    monkeypatch.setattr(rlhf_lab.models, "load_causal_lm", counting)
    return built


def with_reference(features, ref_logps: torch.Tensor) -> list[dict]:
    """The features of a FeatureSet, read after their precomputed reference log-probs are attached."""
    with_ref = features.subset(range(len(features)))
    with_ref.attach("ref_logp", ref_logps.numpy())
    return with_ref.take(range(len(with_ref)))


def make_dpo(tokenizer, model_cfg=None, **cfg) -> DPO:
    cfg = DPOConfig(name="dpo", **cfg)
    return DPO(cfg, models=ModelFactory(model_cfg or ModelConfig(), tokenizer), tokenizer=tokenizer, optim=OptimConfig())


def assert_step_zero(loss, metrics):
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margin"):
        assert metrics[name].item() == pytest.approx(0.0, abs=1e-6), name
    assert metrics["rewards/accuracy"].item() == 0.0  # no pair is ranked yet
    assert metrics["logps/chosen"].item() < 0 and metrics["logps/rejected"].item() < 0


def test_ranked_rows_become_all_their_pairs(features, tiny_tokenizer):
    assert len(features) == 9
    decode = lambda seq: tiny_tokenizer.decode([t for t in seq["labels"] if t >= 0], skip_special_tokens=True)
    assert [(decode(a), decode(b)) for a, b in (f["sequences"] for f in features[6:])] == [
        ("best", "good"), ("best", "bad"), ("good", "bad")
    ]


@pytest.mark.parametrize(
    "collate",
    [lambda f, pad: pad_collate(f, pad), lambda f, pad: packed_collate(f, 0), lambda f, pad: packed_collate(f, 40)],
    ids=["padded", "packed", "packed_rows"],
)
def test_step_zero_loss_is_ln2_with_a_live_reference(features, tiny_tokenizer, collate):
    dpo = make_dpo(tiny_tokenizer, reference="live")
    assert_step_zero(*dpo.compute_loss(collate(features, tiny_tokenizer.pad_token_id)))


def test_nll_term_adds_alpha_times_the_chosen_per_token_nll(features, tiny_tokenizer):
    """RPO: at step 0 the DPO part is ln 2, so the loss is ln 2 + alpha * mean(-log pi(y_w|x) / |y_w|)."""
    dpo = make_dpo(tiny_tokenizer, reference="live", nll_coef=0.5)
    batch = pad_collate(features, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        loss = dpo.compute_loss(batch)[0].item()
        logps, lengths = dpo.sequence_logps(dpo.policy, batch)  # chosen first, then rejected
    n = len(features)
    per_token_nll = [-lp / ln for lp, ln in zip(logps[:n].tolist(), lengths[:n].tolist())]
    assert loss == pytest.approx(LN2 + 0.5 * sum(per_token_nll) / n, rel=1e-5)


def test_chosen_and_rejected_share_one_forward_pass(features, tiny_tokenizer):
    """The batch's logps split in halves equal each half scored on its own."""
    dpo = make_dpo(tiny_tokenizer, reference="live")
    batch = pad_collate(features, tiny_tokenizer.pad_token_id)
    logps, lengths = dpo.sequence_logps(dpo.policy, batch)  # (18,)
    alone = [dpo.sequence_logps(dpo.policy, pad_collate([{"sequences": [f["sequences"][k]]} for f in features], 0))[0] for k in (0, 1)]
    torch.testing.assert_close(logps, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert lengths[:9].tolist() == [sum(t >= 0 for t in f["sequences"][0]["labels"]) for f in features]


def test_precomputed_reference_is_cached_and_reloaded(feature_table, features, tiny_tokenizer, tmp_path, caplog, models_built):
    cache = tmp_path / "ref"
    dpo = make_dpo(tiny_tokenizer, ref_cache_dir=str(cache))
    collate = Collator(tiny_tokenizer.pad_token_id, padding_free=False)
    with caplog.at_level(logging.INFO, logger="rlhf_lab.objectives.dpo"):
        computed = dpo.precompute_reference(feature_table, collate, batch_size=4)
        [cached] = cache.iterdir()
        mtime = cached.stat().st_mtime_ns
        other_beta = make_dpo(tiny_tokenizer, ref_cache_dir=str(cache), beta=0.5)
        loaded = other_beta.precompute_reference(feature_table, collate, batch_size=4)
    assert computed.shape == (9, 2)
    assert torch.equal(loaded, computed) and cached.stat().st_mtime_ns == mtime
    messages = [r.getMessage() for r in caplog.records if r.name == "rlhf_lab.objectives.dpo"]
    assert [m.split(":")[1].split()[0] for m in messages] == ["computed", "loaded"]
    assert len(models_built) == 3  # two policies, and one reference copy for the one computation
    # the precomputed values are the live reference's, and give ln 2 at step 0
    batch = pad_collate(features, tiny_tokenizer.pad_token_id)
    torch.testing.assert_close(computed.T.flatten(), dpo.score_reference(batch, dpo.models.reference()), rtol=1e-5, atol=1e-5)
    assert_step_zero(*dpo.compute_loss(collate(with_reference(feature_table, computed))))


def test_cache_key_changes_with_model_and_data(feature_table, tiny_tokenizer, tmp_path):
    base = reference_cache_path(str(tmp_path), ModelConfig(), feature_table)
    assert base == reference_cache_path(str(tmp_path), ModelConfig(lora=LoraConfig(r=4)), feature_table)
    assert base != reference_cache_path(str(tmp_path), ModelConfig(init_seed=1), feature_table)
    assert base != reference_cache_path(str(tmp_path), ModelConfig(), feature_table.subset(range(len(feature_table) - 1)))


@pytest.mark.parametrize("reference", ["live", "precompute"])
def test_lora_reference_is_the_base_model_with_adapters_disabled(feature_table, features, tiny_tokenizer, tmp_path, models_built, reference):
    lora = ModelConfig(lora=LoraConfig(r=4))
    dpo = make_dpo(tiny_tokenizer, lora, reference=reference, ref_cache_dir=str(tmp_path))
    collate = Collator(tiny_tokenizer.pad_token_id, padding_free=False)
    if reference == "precompute":
        features = with_reference(feature_table, dpo.precompute_reference(feature_table, collate, batch_size=4))
    loss, metrics = dpo.compute_loss(collate(features))
    assert len(models_built) == 1 and dpo.reference is None  # no second model, ever
    assert_step_zero(loss, metrics)
    loss.backward()
    trained = {n for n, p in dpo.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "cdpo", "hinge", "simpo"])
def test_every_variant_trains_the_policy(features, tiny_tokenizer, models_built, loss):
    dpo = make_dpo(tiny_tokenizer, loss=loss, reference="live")
    value, metrics = dpo.compute_loss(pad_collate(features, tiny_tokenizer.pad_token_id))
    value.backward()
    assert torch.isfinite(value) and dpo.policy.get_input_embeddings().weight.grad.abs().sum() > 0
    assert len(models_built) == (1 if loss == "simpo" else 2)  # SimPO builds no reference


# --- whole runs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_step_zero_run_is_ln2_and_writes_the_reference_cache(cli, tmp_path):
    """objective.ref_cache_dir through the CLI; that another beta reloads the cache rather than
    computing it again is test_precomputed_reference_is_cached_and_reloaded, without a second run."""
    cache = tmp_path / "ref_cache"
    # lr=0: the policy stays the reference, so every logged loss is ln 2 and every reward 0
    run = cli("objective=dpo", "logger=csv", "data.num_rows=64", "trainer.max_steps=2", "optim.lr=0", f"objective.ref_cache_dir={cache}")
    assert run.returncode == 0, run.output
    assert "reference log-probs: computed" in run.output
    assert len(list(cache.iterdir())) == 1
    s = run.summary
    for stage in ("train", "val"):
        assert s[f"{stage}/loss"] == pytest.approx(LN2, abs=1e-5)
        assert s[f"{stage}/rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
        assert s[f"{stage}/rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    for name in ("rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected"):
        assert f"train/{name}" in s and f"val/{name}" in s


@pytest.mark.slow
def test_dpo_learns_a_preference_it_can_see(cli, tmp_path):
    res = cli("objective=dpo", "logger=csv", *LEARNABLE, f"objective.ref_cache_dir={tmp_path / 'ref'}")
    assert res.returncode == 0, res.output
    assert res.summary["val/rewards/accuracy"] >= 0.9


def test_default_synthetic_preference_rows_are_all_valid():
    """``objective=dpo`` / ``objective=rm`` with no data override read these: none may stop the run."""
    rows = generate("preference", 4000) + generate("preference", 200, tasks=["polite"])
    assert [r for r in rows if row_problem(r, "preference")] == []


BAD_ROWS = [
    {"prompt": "a", "chosen": "yes", "rejected": "no"},
    {"prompt": "b", "chosen": "yes", "rejected": "no"},
    {"prompt": "c", "chosen": "same", "rejected": "same"},
    {"prompt": "d", "chosen": "", "rejected": "no"},
    {"prompt": "e", "ranked": ["one", "two", "one"]},
] + [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(20)]


@pytest.mark.parametrize(
    "rows, message",
    [
        (BAD_ROWS[:2] + BAD_ROWS[3:], "prefs.jsonl row 3: field 'chosen' is empty"),
        (BAD_ROWS[:2] + BAD_ROWS[4:], "prefs.jsonl row 3: field 'ranked' response 3 repeats response 1"),
        (BAD_ROWS[:2] + [{"prompt": "f", "ranked": ["only one"]}], "row 3: field 'ranked' must be a list of at least two"),
    ],
)
def test_bad_preference_rows_are_named(tmp_path, rows, message, tiny_tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(message)):
        DataModule(DataConfig(path=str(path)), "preference", DPO.encode, Encoder(tiny_tokenizer, 64), {}, seed=0)


@pytest.mark.slow
def test_bad_preference_row_stops_the_run_before_training(cli, tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", BAD_ROWS)
    res = cli("objective=dpo", "logger=csv", "data=jsonl", f"data.path={path}", f"objective.ref_cache_dir={tmp_path / 'ref'}")
    assert res.returncode == 1
    assert "prefs.jsonl row 3: chosen and rejected are identical" in res.output and "data.invalid_rows=drop" in res.output
    assert not (res.run_dir / "summary.json").exists() and not (tmp_path / "ref").exists()


@pytest.mark.slow
def test_bad_preference_rows_can_be_dropped_and_are_counted(cli, tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", BAD_ROWS)
    res = cli("objective=dpo", "logger=csv", "data=jsonl", f"data.path={path}", "data.invalid_rows=drop",
              "trainer.max_steps=1", f"objective.ref_cache_dir={tmp_path / 'ref'}")
    assert res.returncode == 0, res.output
    assert "dropped 3 invalid preference row(s)" in res.output
    assert res.summary["data/dropped_invalid"] == 3
