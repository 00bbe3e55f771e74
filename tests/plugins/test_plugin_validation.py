"""A plugin author's mistakes and a user's switches, each answered with an error that names the
plugin: a strategy without a prompt, a reward that answers in text, plugins disabled by
distribution name, listed as disabled, and an option of a disabled plugin asked for.

The plugins are fake distributions on sys.path (``rlhf_lab_fake_plugins``), found like installed ones.
"""

import pytest
from omegaconf import OmegaConf

from rlhf_lab.__main__ import option_of_a_disabled_plugin
from rlhf_lab.errors import PluginError
from rlhf_lab.plugins import load_plugins, main
from rlhf_lab.prompting.evaluator import build_evaluator
from rlhf_lab.rewards import RewardError, build_reward

PLUGIN = '''
from dataclasses import dataclass
from rlhf_lab.api import PromptingConfig, RewardConfig, Strategy, hookimpl

@dataclass
class TextScoreConfig(RewardConfig):
    pass

def text_score(cfg, tokenizer):
    return lambda prompts, completions: ["1.0" for _ in completions]

@dataclass
class SilentConfig(PromptingConfig):
    pass

class Silent(Strategy):
    def prompt(self, doc, task, rng):
        return None  # forgot the return value

@hookimpl
def rlhf_lab_add_rewards(register):
    register.add_reward("text_score", text_score, TextScoreConfig)

@hookimpl
def rlhf_lab_add_prompting(register):
    register.add_prompting("silent", Silent, SilentConfig)
'''
BROKEN = "raise RuntimeError('no GPU driver found')\n"


@pytest.fixture
def site(rlhf_lab_fake_plugins, monkeypatch):
    monkeypatch.syspath_prepend(rlhf_lab_fake_plugins.path)
    monkeypatch.delenv("RLHF_LAB_DISABLE_PLUGINS", raising=False)
    return rlhf_lab_fake_plugins


def test_a_strategy_whose_prompt_returns_none_is_named_with_its_plugin(site, rlhf_lab_tokenizer):
    module = site.add("acme-silent", PLUGIN, version="1.0.0")
    registry = load_plugins().registry
    cfg = OmegaConf.create({"eval": None, "reward": None, "prompting": OmegaConf.structured(registry.get("prompting", "silent").schema(name="silent"))})
    with pytest.raises(PluginError, match=rf"prompting=silent \(from plugin '{module}' \(distribution acme-silent 1.0.0\)\) gave None as the prompt of document 1"):
        build_evaluator(cfg, registry, rlhf_lab_tokenizer)


def test_a_reward_returning_text_is_an_error_naming_its_plugin(site):
    module = site.add("acme-text-score", PLUGIN, version="1.0.0")
    entries = load_plugins().registry.entries["reward"]
    reward = build_reward(OmegaConf.structured(entries["text_score"].schema(name="text_score")), entries, None)
    with pytest.raises(RewardError, match=rf"from plugin '{module}' \(distribution acme-text-score 1.0.0\)\) returned '1.0' for completion 0"):
        reward(["q"], ["a"], [{"prompt": "q"}])


@pytest.mark.parametrize("name", ["acme-broken", "ACME_Broken"])  # a distribution's name, spelled as pip allows
def test_a_distribution_name_disables_its_plugins(site, name):
    module = site.add("acme-broken", BROKEN)
    with pytest.raises(PluginError, match="failed to import"):
        load_plugins()
    host = load_plugins(disable=[name])
    assert [info.name for info in host.disabled] == [module]
    assert module not in {info.name for info in host.infos}


@pytest.mark.parametrize(
    "name, problem",
    [
        ("acme-brokn", "names 'acme-brokn', which is no installed plugin; it takes an entry-point or distribution name"),
        ("rlhf_lab.objectives.builtin", "names 'rlhf_lab.objectives.builtin', which is a built-in plugin, which cannot be disabled"),
    ],
)
def test_disabling_what_is_not_installed_is_an_error_not_ignored(site, name, problem):
    module = site.add("acme-broken", BROKEN)
    with pytest.raises(PluginError, match=problem) as failure:
        load_plugins(disable=[name])
    assert f"{module} (acme-broken)" in str(failure.value)  # what could be disabled


def test_the_listing_shows_disabled_plugins(site, capsys):
    module = site.add("acme-broken", BROKEN, version="2.3.4")
    assert main(["plugins.disable=[acme-broken]"]) == 0
    assert f"  {module}  [acme-broken 2.3.4; {module} = {module}]  disabled (not imported)" in capsys.readouterr().out.splitlines()


LAZY = '''
from dataclasses import dataclass
from rlhf_lab.api import ObjectiveConfig, hookimpl

@dataclass
class LazyConfig(ObjectiveConfig):
    pass

@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("lazy", "acme_lazy_systems:Lazy", LazyConfig)
'''


def test_a_reference_that_fails_to_import_is_named_when_a_run_needs_it_and_by_the_listing(site, capsys):
    """A "module:attr" target is imported only when used: registering (and composing) succeeds, and
    the run that builds it, or ``python -m rlhf_lab.plugins``, names the plugin and the import error."""
    module = site.add("acme-lazy", LAZY, version="1.0.0")
    entry = load_plugins().registry.get("objective", "lazy")
    problem = (rf"plugin '{module}' \(distribution acme-lazy 1.0.0\) registers objective 'lazy' as 'acme_lazy_systems:Lazy', "
               r"which failed to import: ModuleNotFoundError: No module named 'acme_lazy_systems'")
    with pytest.raises(PluginError, match=problem):
        entry.target
    assert main([]) == 1
    assert "registers objective 'lazy' as 'acme_lazy_systems:Lazy', which failed to import" in capsys.readouterr().err


def test_the_embedded_data_is_listed_as_the_loader_it_is(site, capsys):
    assert main([]) == 0
    assert "  rlhf_lab.data.builtin  [rlhf_lab 0.1.0; built-in]  data.loader=synthetic" in capsys.readouterr().out.splitlines()


def test_selecting_a_disabled_plugins_option_says_it_is_disabled(site):
    site.add("acme-disabled-opt", PLUGIN, entry_point="silent_strategies")
    host = load_plugins(disable=["silent_strategies"])
    host.store_configs()
    problem = option_of_a_disabled_plugin(["prompting=few_shot,silent", "data=tiny"], host)
    assert problem == (
        "prompting=silent is not an option while plugin 'silent_strategies' (distribution acme-disabled-opt 0.0.1) "
        "is disabled, which may register it: to enable, remove its name or its distribution's from "
        "plugins.disable=[...] and RLHF_LAB_DISABLE_PLUGINS."
    )
    assert option_of_a_disabled_plugin(["prompting=few_shot", "objective=sft", "data=tiny"], host) is None
