"""Every YAML in conf/ composes against the schemas; bad keys and types fail at composition."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rlhf_lab.__main__ import CONF_DIR
from rlhf_lab.config import OptimConfig, validate
from rlhf_lab.errors import ConfigError
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


@pytest.mark.parametrize("overrides,message", [
    (["data.batch_size=0"], "data.batch_size=0: must be at least 1"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: must be a positive number of steps"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1: must be a positive number of steps (or -1, with trainer.max_epochs > 0)"),
    (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0: must be at least 1"),
    (["optim.lr=nan"], "optim.lr=nan: must be a finite number >= 0"),  # 0 is a frozen run (tests/objectives/test_dpo.py)
    (["optim.lr=-1e-3"], "optim.lr=-0.001: must be a finite number >= 0"),
    (["optim.grad_clip=0"], "optim.grad_clip=0.0: must be a positive finite number, or null"),
    (["data=jsonl"], "data.path is not set: data.loader=file reads a file (add data.path=FILE)"),
    (["objective=grpo", "reward=python"], "reward.fn must be set: it has no default"),
    (["objective=grpo", "reward=verifiable", "reward.timeout_s=0"], "reward.timeout_s=0.0: must be positive, or null"),
    (["model=hf", "model.name_or_path=/no/such/model"], "model.name_or_path=/no/such/model: no such directory (and not a hub id"),
])  # fmt: skip
def test_bad_values_are_named_before_anything_is_built(composer, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(composer(*overrides))
    assert str(err.value).startswith(message)


def test_a_model_directory_needs_its_config_and_its_tokenizer(composer, tmp_path, tiny_model_dir):
    validate(composer("model=hf", f"model.name_or_path={tiny_model_dir}"))
    with pytest.raises(ConfigError, match=rf"model.name_or_path={tmp_path}: not a model directory \(no config.json"):
        validate(composer("model=hf", f"model.name_or_path={tmp_path}"))
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=rf"model.name_or_path={tmp_path}: the model directory has no tokenizer"):
        validate(composer("model=hf", f"model.name_or_path={tmp_path}"))


def test_the_defaults_and_every_preset_pass(composer):
    for overrides in ([], ["objective=dpo"], ["pipeline=rlhf"], ["data=mixture"], ["objective=ppo", "reward=verifiable"]):
        validate(composer(*overrides))
