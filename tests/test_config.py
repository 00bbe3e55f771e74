"""Every YAML in conf/ composes against the schemas; bad keys and types fail at composition."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rlhf_lab.__main__ import CONF_DIR
from rlhf_lab.config import OptimConfig
from rlhf_lab.objectives.base import lr_lambda
from rlhf_lab.plugins import load_plugins

OPTIONS = sorted(
    (group.name, yaml.stem) for group in Path(CONF_DIR).iterdir() if group.is_dir() for yaml in group.glob("*.yaml")
)


@pytest.fixture(scope="module")
def composer():
    load_plugins().store_configs()

    def _compose(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_yaml_composes(composer, group, option):
    cfg = composer(f"{group}={option}")
    # Resolve everything that has no mandatory '???' left for the user to fill.
    container = OmegaConf.to_container(cfg[group], resolve=False)
    assert container is not None


def test_defaults_are_the_embedded_sft_job(composer):
    cfg = composer()
    assert (cfg.model.source, cfg.data.loader, cfg.objective.name, cfg.logger.name) == ("tiny", "synthetic", "sft", "wandb")
    assert cfg.optim.lr == pytest.approx(3e-3)  # model=tiny tunes the optimiser for a random init


def test_hf_model_keeps_the_optimiser_default(composer):
    cfg = composer("model=hf", "model.name_or_path=/some/dir")
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize(
    "override,key",
    [("objective.bta=0.1", "bta"), ("data.batchsize=3", "batchsize"), ("trainer.foo=1", "foo")],
)
def test_unknown_key_fails_naming_it(composer, override, key):
    with pytest.raises(ConfigCompositionException) as err:
        composer(override)
    assert key in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_naming_it(composer):
    with pytest.raises(ConfigCompositionException) as err:
        composer("trainer.max_steps=many")
    assert "max_steps" in str(err.value.__cause__ or err.value)


def test_run_contract_keys_exist(composer):
    cfg = composer()
    for key in [
        "data.batch_size", "data.max_length", "data.shuffle", "optim.lr", "seed", "trainer.max_steps",
        "trainer.accelerator", "trainer.devices", "trainer.precision", "model.lora.r", "model.gradient_checkpointing",
        "optim.scheduler", "optim.warmup_steps", "optim.grad_clip", "optim.accumulate_grad_batches",
    ]:
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None or key == "model.lora.r", key


def test_lr_schedules_by_hand():
    cfg = OptimConfig(lr=1.0, warmup_steps=2, scheduler="cosine", min_lr_ratio=0.1)
    f = lr_lambda(cfg, total_steps=12)
    assert [f(0), f(1)] == [0.5, 1.0]  # linear warmup
    assert f(2) == pytest.approx(1.0)  # decay starts at full lr
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) -> 0.55
    assert f(12) == pytest.approx(0.1)  # floor
    linear = lr_lambda(OptimConfig(scheduler="linear"), total_steps=10)
    assert linear(5) == pytest.approx(0.5)
    assert lr_lambda(OptimConfig(scheduler="constant"), total_steps=10)(9) == 1.0


def test_slurm_launcher_preset_composes(composer):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 1)
    assert launcher.max_num_timeout > 0


@pytest.mark.parametrize(("overrides", "name"), [
    ([], "sft"),
    (["objective=dpo"], "dpo"),
    (["pipeline=rlhf"], "rlhf"),
    (["mode=eval", "eval=gsm8k_style"], "eval-gsm8k_style"),  # not "-sft": an evaluation trains nothing
    (["mode=self_instruct"], "self_instruct"),
])
def test_run_directories_are_named_after_what_runs(composer, overrides, name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.run.dir.rsplit("/", 1)[1].split("-", 3)[-1] == name
