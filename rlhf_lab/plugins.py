"""Plugin manager facade: built-ins and entry points through one pluggy manager, a registry of
what they add, and errors that name the distribution at fault.

``python -m rlhf_lab.plugins`` lists the loaded plugins, their versions and registrations.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable

import pluggy
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rlhf_lab import __version__, hookspecs
from rlhf_lab.config import GROUP_BASES, store_root_schema
from rlhf_lab.errors import PluginError, RlhfLabError

ENTRY_POINT_GROUP = "rlhf_lab"
DISABLE_ENV = "RLHF_LAB_DISABLE_PLUGINS"
BUILTIN_PLUGINS = (
    "rlhf_lab.data.builtin",
    "rlhf_lab.objectives.builtin",
    "rlhf_lab.rewards.builtin",
    "rlhf_lab.prompting.strategies",
    "rlhf_lab.lab.plugin",
)

REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # "package.module:attr" (an attribute of the module)
# registry kind -> Hydra config group
KIND_GROUPS = {"objective": "objective", "reward": "reward", "prompting": "prompting", "dataset": "data"}


@dataclass
class PluginInfo:
    name: str  # entry-point name (what `plugins.disable` takes) or built-in module name
    distribution: str
    version: str
    entry_point: str  # "name = module:attr", or "built-in"

    def __str__(self) -> str:
        return f"plugin '{self.name}' (distribution {self.distribution} {self.version})"

    def failure(self, what: str) -> PluginError:
        """An error naming this plugin and its distribution, and how to run without it."""
        remedy = "" if self.entry_point == "built-in" else (
            f" Fix or uninstall {self.distribution}, or disable the plugin with "
            f"`plugins.disable=[{self.name}]` on the command line or {DISABLE_ENV}={self.name}."
        )
        return PluginError(f"{self} {what}.{remedy}")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    ref: Any  # objective class, reward / prompting factory, dataset loader; or "module:attr" naming it
    schema: type | None
    plugin: PluginInfo  # the plugin that registered it

    @property
    def target(self) -> Any:
        """What ``ref`` is or names: a "module:attr" reference is imported here, when a run first
        needs it, not while the config is composed; an import that fails names the plugin."""
        if not isinstance(self.ref, str):
            return self.ref
        module, _, attr = self.ref.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except Exception as exc:
            raise self.plugin.failure(f"registers {self.kind} '{self.name}' as '{self.ref}', which failed to import: "
                                      f"{type(exc).__name__}: {exc}") from exc

    def create(self, *args: Any, **kwargs: Any) -> Any:
        """``target(*args, **kwargs)`` (a factory, loader or class); an exception that is not one of
        rlhf_lab's own errors names the plugin, not just the exception."""
        try:
            return self.target(*args, **kwargs)
        except RlhfLabError:
            raise
        except Exception as exc:
            raise self.plugin.failure(f"failed building {self.kind} '{self.name}': {type(exc).__name__}: {exc}") from exc


class Registry:
    """What plugins register. Passed to every registration hook as ``register``."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KIND_GROUPS}
        # The plugin whose hook is running: the host sets it before each call, for attribution.
        self.current_plugin = PluginInfo("unattributed", "rlhf_lab", __version__, "built-in")

    # Each target may be given as a "module:attr" string instead: it is imported when a run needs it,
    # so that registering (and composing a config) imports none of the target's dependencies.

    def add_objective(self, name: str, system_cls: type | str, schema: type) -> None:
        self._add("objective", name, system_cls, schema)

    def add_reward(self, name: str, factory: Callable | str, schema: type) -> None:
        self._add("reward", name, factory, schema)

    def add_prompting(self, name: str, factory: Callable | str, schema: type) -> None:
        self._add("prompting", name, factory, schema)

    def add_dataset(self, name: str, loader: Callable | str, schema: type | None = None) -> None:
        self._add("dataset", name, loader, schema)

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.entries[kind])) or "none"
            raise PluginError(f"No {kind} named '{name}' is registered (known: {known}).") from None

    def _add(self, kind: str, name: str, target: Any, schema: type | None) -> None:
        plugin = self.current_plugin
        taken = self.entries[kind].get(name)
        if taken is not None:
            raise plugin.failure(f"registers {kind} '{name}', which {taken.plugin} already registered")
        if isinstance(target, str) and not REFERENCE.fullmatch(target):
            raise plugin.failure(f"registers {kind} '{name}' as '{target}', which is not a \"module:attr\" reference")
        if schema is not None:
            base = GROUP_BASES[KIND_GROUPS[kind]]
            if not (dataclasses.is_dataclass(schema) and isinstance(schema, type) and issubclass(schema, base)):
                raise plugin.failure(
                    f"registers {kind} '{name}' with schema {schema!r}, "
                    f"which is not a dataclass extending rlhf_lab.config.{base.__name__}"
                )
            if "__dataclass_fields__" not in vars(schema):  # a subclass inherits the marker, not its own fields
                raise plugin.failure(
                    f"registers {kind} '{name}' with schema {schema.__qualname__}, which lacks @dataclass: "
                    f"its own fields would be ignored (decorate it with @dataclass)"
                )
            no_default = [f.name for f in dataclasses.fields(schema) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            if no_default:
                raise plugin.failure(
                    f"registers {kind} '{name}' with schema {schema.__qualname__}, whose field '{no_default[0]}' has no "
                    f"default: give it one (omegaconf.MISSING for a value that every run must set)"
                )
            try:
                OmegaConf.structured(schema)
            except Exception as exc:
                raise plugin.failure(
                    f"registers {kind} '{name}' with a schema that OmegaConf rejects: {type(exc).__name__}: {exc}"
                ) from exc
        self.entries[kind][name] = Entry(kind, name, target, schema, plugin)

    def registrations(self, plugin: PluginInfo) -> list[str]:
        """How to select everything ``plugin`` registered: ``group=name``, or ``data.loader=name`` for
        a dataset loader without a schema (not an option of the ``data`` group)."""
        return [
            f"{KIND_GROUPS[kind]}.loader={e.name}" if kind == "dataset" and e.schema is None else f"{KIND_GROUPS[kind]}={e.name}"
            for kind, es in self.entries.items() for e in es.values() if e.plugin is plugin
        ]  # fmt: skip


class PluginHost:
    """The loaded plugin manager, its registry and what each plugin is."""

    def __init__(self, pm: pluggy.PluginManager, registry: Registry, infos: list[PluginInfo], disabled: list[PluginInfo]):
        self.pm = pm
        self.registry = registry
        self.infos = infos
        self.disabled = disabled  # installed entry points skipped (plugins.disable, RLHF_LAB_DISABLE_PLUGINS)

    @property
    def hook(self):
        return self.pm.hook

    def call(self, hook_name: str, **kwargs: Any) -> list:
        """Every implementation of a run hook, in pluggy's order, non-None results collected; an
        exception that is not one of rlhf_lab's own errors becomes a PluginError naming the plugin
        (pluggy lets it through unnamed)."""
        hook = getattr(self.pm.hook, hook_name)
        impls = hook.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):  # wrappers need pluggy's own call loop
            return hook(**kwargs)
        infos = {info.name: info for info in self.infos}
        results = []
        for impl in reversed(impls):
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except RlhfLabError:
                raise
            except Exception as exc:
                raise infos[impl.plugin_name].failure(f"failed in {hook_name}: {type(exc).__name__}: {exc}") from exc
            if result is not None:
                results.append(result)
        return results

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
                cs.store(group=group, name=entry.name, node=node, provider=entry.plugin.name)


def disabled_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


def _entry_point_info(ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    name, version = (dist.name, dist.version) if dist is not None else ("unknown distribution", "?")
    return PluginInfo(ep.name, name, version, f"{ep.name} = {ep.value}")


REGISTRATION_HOOKS = ("rlhf_lab_add_objectives", "rlhf_lab_add_rewards", "rlhf_lab_add_prompting", "rlhf_lab_add_datasets")


def load_plugins(disable: Iterable[str] = ()) -> PluginHost:
    """Load built-ins and installed entry points, then run the registration hooks.

    Every failure raises a ``PluginError`` that names the plugin's distribution and how to
    disable it; pluggy itself lets import errors through unnamed.
    """
    installed = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    disabled = disabled_entry_points(installed, [*disable, *disabled_from_env()])
    pm = pluggy.PluginManager("rlhf_lab")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        infos[modname] = PluginInfo(modname, "rlhf_lab", __version__, "built-in")
    pm.check_pending()

    skipped = []
    for ep in installed:
        info = _entry_point_info(ep)
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            skipped.append(info)
            continue
        if ep.name in infos:
            raise info.failure(f"uses the entry-point name of {infos[ep.name]}")
        try:
            plugin = ep.load()
        except Exception as exc:
            raise info.failure(f"failed to import (entry point '{info.entry_point}'): {type(exc).__name__}: {exc}") from exc
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise info.failure(
                f"has a hook implementation that does not match rlhf_lab's hook API {hookspecs.HOOK_API_VERSION} "
                f"(rlhf_lab/hookspecs.py): {exc}"
            ) from exc
        infos[ep.name] = info

    registry = Registry()
    for hook_name in REGISTRATION_HOOKS:
        # One implementation at a time, in registration order (built-ins first), so that every
        # registration and every failure is attributed to its plugin.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            registry.current_plugin = infos[impl.plugin_name]
            try:
                impl.function(register=registry)
            except PluginError:
                raise
            except Exception as exc:
                raise registry.current_plugin.failure(f"failed in {hook_name}: {type(exc).__name__}: {exc}") from exc
    return PluginHost(pm, registry, list(infos.values()), skipped)


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: rlhf_lab_orpo and rlhf-lab-orpo are one distribution


def disabled_entry_points(installed: list[EntryPoint], names: Iterable[str]) -> set[str]:
    """The entry-point names that ``names`` disable: each name is an entry point's name or its
    distribution's (all of that distribution's entry points). A name that is neither is an error,
    never silently ignored."""
    disabled: set[str] = set()
    for name in names:
        hits = {ep.name for ep in installed if ep.name == name or (ep.dist is not None and _normalised(ep.dist.name) == _normalised(name))}
        if not hits:
            what = "a built-in plugin, which cannot be disabled" if name in BUILTIN_PLUGINS else "no installed plugin"
            choices = ", ".join(f"{ep.name} ({_entry_point_info(ep).distribution})" for ep in installed) or "none"
            raise PluginError(
                f"plugins.disable / {DISABLE_ENV} names '{name}', which is {what}; it takes an entry-point or "
                f"distribution name (installed plugins: {choices})."
            )
        disabled |= hits
    return disabled


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
        regs = ", ".join(host.registry.registrations(info)) or "hooks only"
        print(f"  {info.name}  [{info.distribution} {info.version}; {info.entry_point}]  {regs}")
    for info in host.disabled:
        print(f"  {info.name}  [{info.distribution} {info.version}; {info.entry_point}]  disabled (not imported)")
    for entries in host.registry.entries.values():  # a run imports a "module:attr" target only when it uses it: check them all
        for entry in entries.values():
            try:
                entry.target
            except PluginError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
