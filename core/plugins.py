"""Domains as plug-ins of the core, found through Python entry points (group ``domainfm.domains``).

A domain declares itself in pyproject.toml with an entry point whose value names its package and its manifest
file, the way napari plug-ins name theirs::

    [project.entry-points."domainfm.domains"]
    pathology = "domainfm.pathology:domain.yaml"

The manifest (``domain.yaml`` in the package folder) is read as a file, so discovering a domain never imports it
(only its parent packages; keep those light). What it declares:

    name: pathology                    # the domain; recipes live in <configs>/recipe/<name>/
    description: one line
    extra: pathology                   # pip install "domainfm[<extra>]"
    requires: [openslide, h5py]        # modules the extra provides (checked with find_spec, not imported)
    configs: configs                   # Hydra config folder, relative to the package
    commands:                          # flat names: domainfm <name>; config <configs>/<name>.yaml
      tile: {module: domainfm.pathology.commands.tile, help: "slides -> tile coordinates"}
    demo: {module: domainfm.pathology.demo, help: "..."}       # module with main(**key=value strings)
    kinds:                             # data the core's generic commands hand to the domain
      slides:
        detect: data.coords            # chosen when this key is set (or data.kind=slides); key=value: that value
        extract: domainfm.pathology.commands.extract_slides:extract   # hook: extract(cfg, backbone) -> Path
    required: {data.coords: "the patches/ folder of domainfm tile"}  # hints for keys left ???
    limits: {tiling.tile_px: {min: 1}}  # ranges checked before a command runs (domainfm.validation)

A domain adds keys to a core command's config with ``<configs>/extend/<name>/<command>.yaml`` (``# @package
_global_``); the CLI composes it after the core's own file. The core itself is described by ``core/domain.yaml``
(read directly, not through an entry point). Two domains declaring one command, recipe or kind is an error.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from domainfm.errors import ConfigError, DomainfmError
from domainfm.extras import available

GROUP = "domainfm.domains"
CORE_MANIFEST = Path(__file__).parent / "domain.yaml"


class PluginError(DomainfmError):
    """A domain's manifest is unreadable, or two domains declare the same name."""


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str
    domain: str
    config: str  # Hydra config name, in config_dir (Hydra looks up a primary config there, not in the search path)
    config_dir: Path

    def load(self) -> Callable:
        return importlib.import_module(self.module).run


@dataclass(frozen=True)
class Kind:
    name: str
    domain: str
    detect: str | None
    hooks: dict[str, str]  # command -> "module:function"


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    folder: Path
    extra: str | None = None
    requires: tuple[str, ...] = ()
    configs: Path | None = None
    commands: dict[str, Command] = field(default_factory=dict)
    demo: dict[str, str] | None = None
    kinds: dict[str, Kind] = field(default_factory=dict)
    source: str = ""  # the entry point or file it came from
    package: str = ""  # the Python package the manifest belongs to (its _target_s are trusted)
    required: dict[str, str] = field(default_factory=dict)  # key -> what to give when it is still ???
    limits: dict[str, dict] = field(default_factory=dict)  # key -> {min|greater|max: number}

    @property
    def missing(self) -> list[str]:
        """Modules of this domain's extra that are not installed (none are imported to find out)."""
        return [m for m in self.requires if not available(m)]

    @property
    def install_hint(self) -> str:
        return f'pip install "domainfm[{self.extra}]"' if self.extra else ""

    def require(self) -> None:
        """Raise the one-line ImportError naming the extra when its modules are missing."""
        missing = self.missing
        if missing:
            raise ImportError(f"domainfm {self.name} needs {', '.join(missing)}: {self.install_hint}")

    def recipes(self) -> dict[str, Path]:
        """``{"<domain>/<name>": path}`` of every recipe yaml this domain ships."""
        root = self.configs / "recipe" if self.configs else None
        if root is None or not root.is_dir():
            return {}
        return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}

    def extension(self, command: str) -> str | None:
        """The ``+extend/<domain>=<command>`` override when this domain adds keys to ``command``'s config."""
        if self.configs and (self.configs / "extend" / self.name / f"{command}.yaml").is_file():
            return f"+extend/{self.name}={command}"
        return None


def read_manifest(path: Path, source: str = "", package: str = "") -> Domain:
    """Parse one ``domain.yaml``; errors name the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PluginError(f"{path}: unreadable domain manifest ({err.__class__.__name__}): fix or remove it") from err
    if not isinstance(raw, dict) or not raw.get("name"):
        raise PluginError(f"{path}: a domain manifest needs at least 'name: <domain>'")
    name, folder = str(raw["name"]), path.parent
    configs = folder / raw["configs"] if raw.get("configs") else None
    commands = {}
    for cmd, spec in (raw.get("commands") or {}).items():
        if not isinstance(spec, dict) or "module" not in spec:
            raise PluginError(f"{path}: commands.{cmd} needs 'module: <python module with run(cfg)>'")
        if configs is None:
            raise PluginError(f"{path}: commands need 'configs: <folder>' holding <command>.yaml")
        commands[cmd] = Command(cmd, spec["module"], str(spec.get("help", "")), name, spec.get("config", cmd), configs)
    kinds = {}
    for kind, spec in (raw.get("kinds") or {}).items():
        spec = dict(spec or {})
        detect = spec.pop("detect", None)
        kinds[kind] = Kind(kind, name, detect, {k: str(v) for k, v in spec.items()})
    demo = raw.get("demo")
    if demo is not None and (not isinstance(demo, dict) or "module" not in demo):
        raise PluginError(f"{path}: demo needs 'module: <python module with main()>'")
    return Domain(
        name=name,
        description=str(raw.get("description", "")).strip(),
        folder=folder,
        extra=raw.get("extra"),
        requires=tuple(raw.get("requires") or ()),
        configs=configs,
        commands=commands,
        demo=demo,
        kinds=kinds,
        source=source or str(path),
        package=package,
        required={str(k): str(v) for k, v in (raw.get("required") or {}).items()},
        limits={str(k): dict(v) for k, v in (raw.get("limits") or {}).items()},
    )


def _manifest_path(value: str) -> Path:
    """``package:file.yaml`` -> the file inside the package's folder, found without importing the package."""
    module, _, filename = value.partition(":")
    spec = importlib.util.find_spec(module.strip())
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"entry point {value!r}: package {module!r} not found")
    return Path(next(iter(spec.submodule_search_locations))) / (filename.strip() or "domain.yaml")


@functools.cache
def domains() -> dict[str, Domain]:
    """Every domain: the core first, then the installed ones in name order. Checks that no two declare one name."""
    found = {"core": read_manifest(CORE_MANIFEST, "domainfm core", "domainfm")}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            package = ep.value.partition(":")[0].strip()
            domain = read_manifest(_manifest_path(ep.value), f"entry point {ep.name} = {ep.value}", package)
        except (ImportError, ValueError) as err:
            raise PluginError(f"entry point {ep.name} = {ep.value}: {err}") from err
        if domain.name in found:
            if found[domain.name].folder == domain.folder:  # the same package seen twice on sys.path
                continue
            first = found[domain.name].source
            raise PluginError(f"domain {domain.name!r} is declared twice ({first}; {domain.source})")
        found[domain.name] = domain
    check_unique(found)
    return found


def check_unique(found: dict[str, Domain]) -> None:
    """Commands, recipes and kinds are flat names: a clash between two domains is an error naming both."""
    for what, names in (
        ("command", lambda d: d.commands),
        ("recipe", lambda d: d.recipes()),
        ("data kind", lambda d: d.kinds),
    ):
        owner: dict[str, str] = {}
        for domain in found.values():
            for key in names(domain):
                if key in owner:
                    raise PluginError(
                        f"{what} {key!r} is declared by both domain {owner[key]!r} and domain {domain.name!r}: "
                        "rename one of them"
                    )
                owner[key] = domain.name
        if what == "command" and "demo" in owner:
            raise PluginError(f"command 'demo' is reserved (domain {owner['demo']!r}): declare a demo: entry instead")


def commands() -> dict[str, Command]:
    return {name: cmd for d in domains().values() for name, cmd in d.commands.items()}


def config_dirs() -> list[Path]:
    """The Hydra config folders: the core's first, then each domain's."""
    return [d.configs for d in domains().values() if d.configs and d.configs.is_dir()]


def extensions(command: str) -> list[str]:
    """Overrides adding every domain's extra keys to ``command``'s config."""
    return [ov for d in domains().values() if (ov := d.extension(command))]


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _detects(cfg: Any, detect: str) -> bool:
    """``detect`` is a key that is set (``data.chips``) or ``key=value`` (``task=segmentation``)."""
    key, sep, value = detect.partition("=")
    found = _select(cfg, key.strip())
    return str(found) == value.strip() if sep else found not in (None, "", [])


def data_kind(cfg: Any) -> Kind | None:
    """The domain kind of ``cfg``'s data: ``data.kind=<name>``, or the one kind whose ``detect`` key is set (or
    has the value ``detect`` names)."""
    kinds = {name: k for d in domains().values() for name, k in d.kinds.items()}
    chosen = _select(cfg, "data.kind")
    if chosen:
        if chosen not in kinds:
            raise ConfigError(f"unknown data.kind={chosen!r}; valid kinds: {', '.join(sorted(kinds)) or 'none'}")
        return kinds[chosen]
    hits = [k for k in kinds.values() if k.detect and _detects(cfg, k.detect)]
    if len(hits) > 1:
        keys = ", ".join(f"{k.detect} ({k.name})" for k in hits)
        raise ConfigError(f"the data looks like several kinds ({keys}): choose one with data.kind=<name>")
    return hits[0] if hits else None


def kind_hook(cfg: Any, command: str) -> Callable | None:
    """The hook a domain provides for ``command`` on ``cfg``'s data kind (``None``: plain images, the core's own
    path). Importing the hook imports the domain, so a missing extra is the one-line ``pip install`` hint here."""
    kind = data_kind(cfg)
    if kind is None:
        return None
    if command not in kind.hooks:
        raise ConfigError(f"domainfm {command} does not take data.kind={kind.name} (domain {kind.domain})")
    domains()[kind.domain].require()
    module, _, func = kind.hooks[command].partition(":")
    return getattr(importlib.import_module(module), func or command)


TRUSTED_ROOTS = ("domainfm", "timm", "torch", "torchvision")


def trusted_packages() -> tuple[str, ...]:
    """Where a ``_target_`` read from a file on disk may point: the core, timm, torch and the installed domains."""
    roots = [d.package.split(".", 1)[0] for d in domains().values() if d.package]
    return tuple(dict.fromkeys([*TRUSTED_ROOTS, *roots]))


def check_targets(node: Any, origin: str) -> None:
    """Refuse a config from disk (a run folder's ``config.yaml``) whose ``_target_``s point outside the trusted
    packages: Hydra would import and call them, and its own blocklist is best effort. ``origin`` names the file."""
    trusted = trusted_packages()

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                where = f"{key}.{k}" if key else str(k)
                if k == "_target_" and not (isinstance(v, str) and v.split(".", 1)[0] in trusted and "." in v):
                    raise ConfigError(
                        f"{origin}: {where}={v!r} is outside {', '.join(trusted)}; refusing to run code named by a "
                        "file from disk (only configs of domainfm recipes can be rebuilt)"
                    )
                walk(v, where)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    walk(node, "")
