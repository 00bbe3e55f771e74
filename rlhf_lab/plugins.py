"""Plugin manager facade: built-ins and entry points through one pluggy manager, a registry of
what they add, and errors that name the distribution at fault.

``python -m rlhf_lab.plugins`` lists the loaded plugins, their versions and registrations.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable

import pluggy
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rlhf_lab import __version__, hookspecs
from rlhf_lab.config import GROUP_BASES, store_root_schema
from rlhf_lab.errors import PluginError

ENTRY_POINT_GROUP = "rlhf_lab"
DISABLE_ENV = "RLHF_LAB_DISABLE_PLUGINS"
BUILTIN_PLUGINS = (
    "rlhf_lab.data.builtin",
    "rlhf_lab.objectives.sft",
)

# registry kind -> Hydra config group
KIND_GROUPS = {"objective": "objective", "reward": "reward", "prompting": "prompting", "dataset": "data"}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: Any  # objective class, reward / prompting factory, dataset loader
    schema: type | None
    plugin: str  # name of the plugin that registered it


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    entry_point: str
    registers: list[str] = field(default_factory=list)


class Registry:
    """What plugins register. Passed to every registration hook as ``register``."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KIND_GROUPS}
        self.current_plugin = "?"

    def add_objective(self, name: str, system_cls: type, schema: type) -> None:
        self._add("objective", name, system_cls, schema)

    def add_reward(self, name: str, factory: Callable, schema: type) -> None:
        self._add("reward", name, factory, schema)

    def add_prompting(self, name: str, factory: Callable, schema: type) -> None:
        self._add("prompting", name, factory, schema)

    def add_dataset(self, name: str, loader: Callable, schema: type | None = None) -> None:
        self._add("dataset", name, loader, schema)

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.entries[kind])) or "none"
            raise PluginError(f"No {kind} named '{name}' is registered (known: {known}).") from None

    def _add(self, kind: str, name: str, target: Any, schema: type | None) -> None:
        taken = self.entries[kind].get(name)
        if taken is not None:
            raise PluginError(
                f"Plugin '{self.current_plugin}' registers {kind} '{name}', "
                f"which plugin '{taken.plugin}' already registered."
            )
        if schema is not None:
            base = GROUP_BASES[KIND_GROUPS[kind]]
            if not (dataclasses.is_dataclass(schema) and isinstance(schema, type) and issubclass(schema, base)):
                raise PluginError(
                    f"Plugin '{self.current_plugin}' registers {kind} '{name}' with schema {schema!r}, "
                    f"which is not a dataclass extending rlhf_lab.config.{base.__name__}."
                )
            try:
                OmegaConf.structured(schema)
            except Exception as exc:
                raise PluginError(
                    f"Plugin '{self.current_plugin}' registers {kind} '{name}' with a schema that "
                    f"OmegaConf rejects: {exc}"
                ) from exc
        self.entries[kind][name] = Entry(kind, name, target, schema, self.current_plugin)


class PluginHost:
    """The loaded plugin manager, its registry and what each plugin is."""

    def __init__(self, pm: pluggy.PluginManager, registry: Registry, infos: list[PluginInfo]):
        self.pm = pm
        self.registry = registry
        self.infos = infos

    @property
    def hook(self):
        return self.pm.hook

    def store_configs(self) -> None:
        """Make every registered schema a Hydra option of its group (``objective=<name>``)."""
        cs = ConfigStore.instance()
        store_root_schema()
        for kind, group in KIND_GROUPS.items():
            for entry in self.registry.entries[kind].values():
                if entry.schema is None:
                    continue
                node = OmegaConf.structured(entry.schema)
                if kind == "dataset":
                    node.loader = entry.name
                else:
                    node.name = entry.name
                cs.store(group=group, name=entry.name, node=node, provider=entry.plugin)


def disabled_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


def _dist_label(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("unknown distribution", "?")


def _plugin_failure(ep: EntryPoint, what: str, exc: BaseException) -> PluginError:
    dist, version = _dist_label(ep)
    return PluginError(
        f"Plugin '{ep.name}' (distribution {dist} {version}, entry point "
        f"'{ep.name} = {ep.value}' in group '{ENTRY_POINT_GROUP}') {what}: "
        f"{type(exc).__name__}: {exc}. Fix or uninstall {dist}, or disable the plugin with "
        f"`plugins.disable=[{ep.name}]` on the command line or {DISABLE_ENV}={ep.name}."
    )


def load_plugins(disable: Iterable[str] = ()) -> PluginHost:
    """Load built-ins and installed entry points, then run the registration hooks."""
    disabled = set(disable) | set(disabled_from_env())
    pm = pluggy.PluginManager("rlhf_lab")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        infos.append(PluginInfo(modname, "rlhf_lab", __version__, "built-in"))
    pm.check_pending()

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise _plugin_failure(ep, "failed to import", exc) from exc
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise _plugin_failure(ep, "declares a hook rlhf_lab does not have", exc) from exc
        dist, version = _dist_label(ep)
        infos.append(PluginInfo(ep.name, dist, version, f"{ep.name} = {ep.value}"))

    registry = Registry()
    by_name = {info.name: info for info in infos}
    for hook_name in ("rlhf_lab_add_objectives", "rlhf_lab_add_rewards", "rlhf_lab_add_prompting", "rlhf_lab_add_datasets"):
        # One implementation at a time, in registration order (built-ins first), so that every
        # registration is attributed to its plugin.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            registry.current_plugin = impl.plugin_name
            before = {k: set(v) for k, v in registry.entries.items()}
            try:
                impl.function(register=registry)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"Plugin '{impl.plugin_name}' failed in {hook_name}: {type(exc).__name__}: {exc}. "
                    f"Disable it with `plugins.disable=[{impl.plugin_name}]` or {DISABLE_ENV}."
                ) from exc
            for kind, names in registry.entries.items():
                for name in sorted(set(names) - before[kind]):
                    by_name[impl.plugin_name].registers.append(f"{KIND_GROUPS[kind]}={name}")
    return PluginHost(pm, registry, infos)


def disabled_from_argv(argv: list[str]) -> list[str]:
    """Plugins must be chosen before Hydra composes, so read ``plugins.disable=[a,b]`` from argv."""
    names: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "plugins.disable":
            names += [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        host = load_plugins(disabled_from_argv(argv))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"rlhf_lab {__version__}, hook API {hookspecs.HOOK_API_VERSION}")
    for info in host.infos:
        regs = ", ".join(info.registers) or "hooks only"
        print(f"  {info.name}  [{info.distribution} {info.version}; {info.entry_point}]  {regs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
