"""How the host treats broken plugins: every failure stops the run with a message naming the
distribution, and disabling that plugin lets every other one work.

The plugins are real distributions (a module and its ``.dist-info``) that importlib.metadata
discovers on sys.path or the CLI's PYTHONPATH, exactly like installed ones.
"""

from importlib.metadata import entry_points

import pytest

from rlhf_lab import hookspecs
from rlhf_lab.errors import PluginError
from rlhf_lab.plugins import ENTRY_POINT_GROUP, load_plugins, main

# A working third-party objective written against rlhf_lab.api only.
GOOD = '''
from dataclasses import dataclass
from rlhf_lab.api import Objective, ObjectiveConfig, hookimpl, score_labels

@dataclass
class NLLConfig(ObjectiveConfig):
    pass

class NLL(Objective):
    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.policy = self.models.policy()

    def compute_loss(self, batch):
        return -score_labels(self.policy, batch).logps().mean(), {}

@hookimpl
def rlhf_lab_add_objectives(register):
    register.add_objective("nll", NLL, NLLConfig)
'''

HEADER = "from dataclasses import dataclass\nfrom typing import Set\nfrom rlhf_lab.api import ObjectiveConfig, hookimpl\n"
BROKEN = {
    "raises_on_import": (HEADER + "raise RuntimeError('no GPU driver found')\n", "failed to import .* RuntimeError: no GPU driver found"),
    "name_taken": (
        HEADER + "@dataclass\nclass C(ObjectiveConfig):\n    pass\n\n"
        "@hookimpl\ndef rlhf_lab_add_objectives(register):\n    register.add_objective('sft', object, C)\n",
        "registers objective 'sft', which plugin 'rlhf_lab.objectives.builtin' \\(distribution rlhf_lab .*\\) already registered",
    ),
    "unknown_hook": (
        HEADER + "@hookimpl\ndef rlhf_lab_add_objective(register):\n    pass\n",
        "does not match rlhf_lab's hook API .*rlhf_lab_add_objective",
    ),
    "schema_rejected": (
        HEADER + "@dataclass\nclass C(ObjectiveConfig):\n    tags: Set[str] = None\n\n"
        "@hookimpl\ndef rlhf_lab_add_objectives(register):\n    register.add_objective('tagged', object, C)\n",
        "registers objective 'tagged' with a schema that OmegaConf rejects",
    ),
    "schema_not_a_config": (
        HEADER + "@hookimpl\ndef rlhf_lab_add_objectives(register):\n    register.add_objective('loose', object, dict)\n",
        "not a dataclass extending rlhf_lab.config.ObjectiveConfig",
    ),
    "schema_without_dataclass": (
        HEADER + "class C(ObjectiveConfig):\n    lam: float = 0.1\n\n"
        "@hookimpl\ndef rlhf_lab_add_objectives(register):\n    register.add_objective('undecorated', object, C)\n",
        "registers objective 'undecorated' with schema C, which lacks @dataclass: its own fields would be ignored",
    ),
    "field_without_default": (
        HEADER + "@dataclass(kw_only=True)\nclass C(ObjectiveConfig):\n    lam: float\n\n"
        "@hookimpl\ndef rlhf_lab_add_objectives(register):\n    register.add_objective('required', object, C)\n",
        "registers objective 'required' with schema C, whose field 'lam' has no default",
    ),
    "reference_malformed": (
        HEADER + "@dataclass\nclass C(ObjectiveConfig):\n    pass\n\n"
        "@hookimpl\ndef rlhf_lab_add_objectives(register):\n    register.add_objective('dotted', 'acme.systems.Dotted', C)\n",
        "registers objective 'dotted' as 'acme.systems.Dotted', which is not a \"module:attr\" reference",
    ),
    "raises_in_hook": (
        HEADER + "@hookimpl\ndef rlhf_lab_add_rewards(register):\n    raise KeyError('api_key')\n",
        "failed in rlhf_lab_add_rewards: KeyError",
    ),
}


@pytest.fixture
def site(rlhf_lab_fake_plugins, monkeypatch):
    monkeypatch.syspath_prepend(rlhf_lab_fake_plugins.path)
    monkeypatch.delenv("RLHF_LAB_DISABLE_PLUGINS", raising=False)
    return rlhf_lab_fake_plugins


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_named_and_can_be_disabled(site, case):
    source, problem = BROKEN[case]
    broken = site.add(f"acme-{case}", source, version="2.3.4")  # module names differ: no stale imports
    good = site.add(f"good-{case}", GOOD)

    with pytest.raises(PluginError, match=problem) as failure:
        load_plugins()
    message = str(failure.value)
    assert f"plugin '{broken}' (distribution acme-{case} 2.3.4)" in message
    assert f"plugins.disable=[{broken}]" in message and f"RLHF_LAB_DISABLE_PLUGINS={broken}" in message

    host = load_plugins(disable=[broken])
    loaded = {info.name for info in host.infos}
    assert {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - loaded == {broken}
    assert host.registry.get("objective", "nll").plugin.name == good


def test_two_distributions_with_one_entry_point_name(site):
    site.add("first-dist", GOOD, entry_point="shared")
    site.add("second-dist", GOOD, entry_point="shared")
    with pytest.raises(PluginError, match="uses the entry-point name of plugin 'shared'") as failure:
        load_plugins()
    assert "first-dist" in str(failure.value) and "second-dist" in str(failure.value)


def test_listing_reports_hook_api_and_plugin_versions(site, capsys):
    module = site.add("good-listed", GOOD, version="1.2.3")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"rlhf_lab 0.1.0, hook API {hookspecs.HOOK_API_VERSION}"
    assert f"{module}  [good-listed 1.2.3; {module} = {module}]  objective=nll" in out


RUN_HOOKS = HEADER + """
from rlhf_lab.api import RewardConfig

@dataclass
class JudgeConfig(RewardConfig):
    pass

def judge(cfg, tokenizer):
    raise ConnectionError("judge service unreachable")

@hookimpl
def rlhf_lab_add_rewards(register):
    register.add_reward("remote_judge", judge, JudgeConfig)

@hookimpl
def rlhf_lab_configure(cfg):
    if cfg.get("boom"):
        raise KeyError("boom")
"""


def test_a_plugin_failing_in_a_run_hook_or_factory_is_named(site):
    module = site.add("acme-judge", RUN_HOOKS, version="0.3.0")
    host = load_plugins()
    host.call("rlhf_lab_configure", cfg={"boom": False})
    with pytest.raises(PluginError, match=rf"plugin '{module}' \(distribution acme-judge 0.3.0\) failed in rlhf_lab_configure: KeyError: 'boom'"):
        host.call("rlhf_lab_configure", cfg={"boom": True})
    with pytest.raises(PluginError, match=rf"plugin '{module}' .* failed building reward 'remote_judge': ConnectionError: judge service unreachable"):
        host.registry.get("reward", "remote_judge").create(None, None)


@pytest.mark.slow
def test_cli_stops_without_traceback_then_runs_with_the_plugin_disabled(rlhf_lab_fake_plugins, rlhf_lab_cli, rlhf_lab_run):
    rlhf_lab_fake_plugins.add("acme-broken", BROKEN["raises_on_import"][0], version="2.3.4")
    rlhf_lab_fake_plugins.add("acme-good", GOOD)
    env = rlhf_lab_fake_plugins.env

    failed = rlhf_lab_cli("objective=nll", env=env)
    assert failed.returncode == 1
    assert "rlhf_lab: error: plugin 'acme_broken' (distribution acme-broken 2.3.4) failed to import" in failed.stderr
    assert "Traceback" not in failed.output

    listed = rlhf_lab_cli(module="rlhf_lab.plugins", env={**env, "RLHF_LAB_DISABLE_PLUGINS": "acme_broken"})
    assert "acme_good  [acme-good 0.0.1; acme_good = acme_good]  objective=nll" in listed.stdout, listed.output

    summary = rlhf_lab_run("objective=nll", "plugins.disable=[acme_broken]", steps=2, env=env).summary
    assert summary["objective"] == "nll" and summary["global_step"] == 2
