"""docs/plugins.md keeps up with the code: every hook with its arguments, every public name, every
registry method; and its five-line plugin works (after datasette's tests/test_docs.py)."""

import inspect
import re
from pathlib import Path

import pytest

import rlhf_lab.api
from rlhf_lab import hookspecs
from rlhf_lab.plugins import Registry, load_plugins

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
HOOKS = [fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "rlhf_lab_spec")]


def test_hooks_are_found():
    assert len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS, ids=lambda fn: fn.__name__)
def test_every_hook_has_a_heading_with_its_arguments(hook):
    heading = f"#### `{hook.__name__}({', '.join(inspect.signature(hook).parameters)})`"
    assert heading in GUIDE.splitlines(), f"docs/plugins.md lacks the heading {heading}"


@pytest.mark.parametrize("name", rlhf_lab.api.__all__)
def test_every_public_name_is_in_the_api_table(name):
    assert f"| `{name}` |" in GUIDE


@pytest.mark.parametrize("method", [m for m in vars(Registry) if m.startswith("add_")])
def test_every_registry_method_is_documented(method):
    assert f"`{method}(" in GUIDE


def test_hook_api_version_is_major_minor():
    assert re.fullmatch(r"\d+\.\d+", hookspecs.HOOK_API_VERSION)


def test_the_five_line_plugin_works(rlhf_lab_fake_plugins, monkeypatch):
    source = re.search(r"```python\n(.*?)```", GUIDE, re.S).group(1)
    entry_point = re.search(r"\[project\.entry-points\.rlhf_lab\]\n(\w+) = \"(\w+)\"", GUIDE)
    assert entry_point.groups() == ("brevity", "brevity")
    rlhf_lab_fake_plugins.add("rlhf-lab-brevity", source, module="brevity")
    monkeypatch.syspath_prepend(rlhf_lab_fake_plugins.path)
    monkeypatch.delenv("RLHF_LAB_DISABLE_PLUGINS", raising=False)

    entry = load_plugins().registry.get("reward", "brevity")
    score = entry.target(entry.schema(name="brevity", max_chars=3), None)
    assert score(["q", "q"], ["abc", "abcd"]) == [1.0, 0.0]
    assert entry.plugin.distribution == "rlhf-lab-brevity"
