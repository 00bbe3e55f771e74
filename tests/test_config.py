"""Every YAML in conf/ composes against the schemas; bad keys and types fail at composition."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rlhf_lab.__main__ import CONF_DIR, whole_mappings
from rlhf_lab.config import OptimConfig, validate
from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives.base import lr_lambda
from rlhf_lab.plugins import load_plugins
from tests.inprocess import compose_cli

REPO = Path(__file__).resolve().parent.parent

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
    # Every interpolation resolves (a '???' left for the user to fill stays as it is).
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container[group], dict)


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


# --- the command line as README writes it ---------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """The arguments of every ``python -m rlhf_lab ...`` line in README's bash blocks."""
    text = (REPO / "README.md").read_text()
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", text, re.S)]  # continued lines joined
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(m.group(1) or "", comments=True) for line in lines if (m := re.search(r"python -m rlhf_lab(\s.*)?$", line))]


def as_one_job(argv: list[str]) -> list[str]:
    """The overrides of the first job: flags dropped (``--cfg job``, ``--help``), a sweep's first value."""
    flags_with_value = {"--cfg"}
    overrides = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] not in flags_with_value)]
    if "-m" in argv:
        # A sweeper's search space (interval(...), range(...), choice(...)) is no single value: left to the sweep.
        overrides = [a for a in overrides if not re.search(r"=(interval|range|choice|tag)\(", a)]
        overrides = [re.sub(r"=([^,{\[]*),.*$", r"=\1", a) for a in overrides]
    return overrides


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv) or "(none)")
def test_every_readme_command_composes(argv):
    assert compose_cli(*as_one_job(argv)) is not None


def test_readme_lists_the_data_examples():
    commands = [" ".join(argv) for argv in readme_commands()]
    assert "data=hub data.hub=NAME data.fields={prompt: question, completion: answer}" in commands
    assert any(c.startswith("data=mixture data.sources={") for c in commands)


def test_a_mapping_given_whole_replaces_the_mapping():
    """Hydra closes Dict fields and merges a dict override into the one there; README's syntax
    (no '+') must set the mapping, and replace a preset's."""
    cfg = compose_cli("data=hub", "data.hub=NAME", "data.fields={prompt: question, completion: answer}")
    assert OmegaConf.to_container(cfg.data.fields) == {"prompt": "question", "completion": "answer"}
    sources = "data.sources={math: {path: data/math.jsonl, weight: 2.0}, chat: {hub: tatsu-lab/alpaca, converter: alpaca}}"
    cfg = compose_cli("data=mixture", sources)
    assert list(cfg.data.sources) == ["math", "chat"]  # the preset's five generated tasks are gone
    assert (cfg.data.sources.math.weight, cfg.data.sources.math.loader, cfg.data.sources.chat.converter) == (2.0, "auto", "alpaca")
    assert list(compose_cli("data=mixture").data.sources) == ["add", "reverse", "upper", "count", "sort"]


def test_one_entry_of_a_mapping_and_a_schema_node_still_merge():
    cfg = compose_cli("data=mixture", "data.sources.add.weight=3")
    assert len(cfg.data.sources) == 5 and cfg.data.sources.add.weight == 3
    assert whole_mappings(["model.lora={r: 8}"]) == ["model.lora={r: 8}"]  # a schema's node: its other fields stay
    assert compose_cli("model.lora={r: 8}").model.lora.alpha == 32


def test_a_source_with_an_unknown_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cli("data=mixture", "data.sources={math: {pth: data/math.jsonl}}")
    assert "pth" in str(err.value.__cause__ or err.value)


def test_readme_mixture_preset_is_a_data_option(tmp_path):
    """The README's conf/data/my_mix.yaml, put on Hydra's search path, composes as ``data=my_mix``."""
    text = (REPO / "README.md").read_text()
    yaml = re.search(r"```yaml\n# conf/data/my_mix.yaml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_mix.yaml").write_text(yaml)
    cfg = compose_cli("data=my_mix", f"hydra.searchpath=[file://{tmp_path}]")
    assert list(cfg.data.sources) == ["math", "chat"] and list(cfg.data.holdout_tasks) == ["chat"]
    assert cfg.data.sources.chat.converter == "alpaca" and cfg.data.batch_size == 8  # schema defaults fill the rest


@pytest.mark.parametrize("overrides,message", [
    (["data.batch_size=0"], "data.batch_size=0: must be at least 1"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: must be a positive number of steps"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1: must be a positive number of steps (or -1, with trainer.max_epochs > 0)"),
    (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0: must be at least 1"),
    (["optim.lr=nan"], "optim.lr=nan: must be a finite number >= 0"),  # 0 is a frozen run (tests/objectives/test_dpo.py)
    (["optim.lr=-1e-3"], "optim.lr=-0.001: must be a finite number >= 0"),
    (["optim.grad_clip=0"], "optim.grad_clip=0.0: must be a positive finite number, or null"),
    (["data.val_rows=-1"], "data.val_rows=-1: must be >= 0, or null for data.val_fraction"),
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


# Each closed set of options (a Choice field) and what it allows, in the order the error lists them.
CHOICES = [
    (["model.source=local"], "model.source", "tiny, hf"),
    (["model.dtype=float64"], "model.dtype", "float32, bfloat16, float16"),
    (["data.on_overflow=cut"], "data.on_overflow", "truncate, error"),
    (["data.invalid_rows=skip"], "data.invalid_rows", "error, drop"),
    (["optim.scheduler=cosin"], "optim.scheduler", "cosine, linear, constant"),
    (["trainer.strategy=dpp"], "trainer.strategy", "auto, ddp, ddp_spawn, fsdp, deepspeed"),
    (["logger.name=wandbb"], "logger.name", "wandb, csv, tensorboard, none"),
    (["mode=evaluate"], "mode", "train, eval, self_instruct, best_of_n"),
    (["eval=synthetic", "eval.kind=generate"], "eval.kind", "generation, multiple_choice, loglikelihood_rolling"),
    (["eval=synthetic", "eval.accuracy_from=loose"], "eval.accuracy_from", "strict, flexible"),
    (["eval=synthetic", "eval.on_overflow=truncate"], "eval.on_overflow", "skip, error"),
    (["eval=synthetic", "eval.chat_template=always"], "eval.chat_template", "auto, never"),
    (["objective=dpo", "objective.loss=sigmod"], "objective.loss", "sigmoid, ipo, cdpo, hinge, simpo"),
    (["objective=dpo", "objective.reference=none"], "objective.reference", "precompute, live"),
    (["objective=online_dpo", "objective.loss=kto"], "objective.loss", "sigmoid, ipo, cdpo, hinge, simpo"),
    (["objective=ppo", "objective.kl_estimator=k4"], "objective.kl_estimator", "k1, k2, k3"),
    (["objective=grpo", "objective.kl_estimator=k4"], "objective.kl_estimator", "k1, k2, k3"),
    (["objective=grpo", "objective.loss_aggregation=tokens"], "objective.loss_aggregation", "token, sequence"),
    (["objective=grpo", "objective.generator=tgi"], "objective.generator", "hf, vllm"),
    (["objective=grpo", "reward=ensemble", "reward.aggregate=max"], "reward.aggregate", "mean, min, uwo"),
    (["prompting=best_of_n", "prompting.rank=gold"], "prompting.rank", "reward, loglikelihood"),
]


@pytest.mark.parametrize("overrides,key,allowed", CHOICES)
def test_a_typo_in_a_closed_option_fails_while_composing_naming_the_allowed_values(overrides, key, allowed):
    bad = overrides[-1].split("=")[1]
    with pytest.raises(ConfigCompositionException) as err:
        compose_cli(*overrides)
    message = str(err.value.__cause__)  # what the CLI prints under "Error merging override ..."
    assert f"Invalid value '{bad}', expected one of [{allowed}]" in message and f"full_key: {key}" in message
    good = allowed.split(", ")[-1]
    assert str(OmegaConf.select(compose_cli(*overrides[:-1], f"{key}={good}"), key)) == good


def test_saved_configs_hold_plain_strings(tmp_path):
    """.hydra/config.yaml (OmegaConf.save), the hparams W&B and CSV get (tracking), and the config
    stored in a checkpoint (resume fingerprint, read back with torch.load(weights_only=True)) hold
    a Choice as its plain string, never an Enum object."""
    import torch
    import yaml

    from rlhf_lab.tracking import build_loggers
    from rlhf_lab.training.resume import config_fingerprint

    cfg = compose_cli("objective=grpo", "reward=ensemble", "logger=csv", "mode=train")
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (saved["objective"]["kl_estimator"], saved["optim"]["scheduler"], saved["mode"]) == ("k3", "cosine", "train")
    [logger] = build_loggers(cfg, tmp_path)
    logger.save()
    hparams = yaml.safe_load((tmp_path / "hparams.yaml").read_text())  # safe_load refuses python/object tags
    assert (hparams["reward"]["aggregate"], hparams["logger"]["name"]) == ("mean", "csv")
    fingerprint = config_fingerprint(cfg)
    assert type(fingerprint["mode"]) is str and type(fingerprint["objective.loss_aggregation"]) is str
    torch.save(fingerprint, tmp_path / "fingerprint.pt")
    assert torch.load(tmp_path / "fingerprint.pt", weights_only=True) == fingerprint
