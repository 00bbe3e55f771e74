"""What each stage of a pipeline waits for when stages run concurrently (pipeline.jobs > 1)."""

from rlhf_lab.lab.pipeline import reads
from tests.inprocess import compose_cli


def test_a_stage_waits_for_its_init_and_every_stage_its_overrides_name():
    cfg = compose_cli("pipeline=compare")
    assert reads(cfg, "sft") == set()
    assert reads(cfg, "rm2") == {"sft"}
    assert reads(cfg, "bon") == {"sft", "rm"}  # "{rm}/model" in reward.path
    assert reads(cfg, "ppo_ensemble_min") == {"sft", "rm", "rm2", "rm3"}
    assert reads(cfg, "ppo_heldout") == {"sft", "rm", "rm2"}  # the held-out reward model of its callback
