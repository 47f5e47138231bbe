"""The ``domainfm`` command: ``domainfm <subcommand> [key=value ...]``; every subcommand is a Hydra app
(``--cfg job``, ``-m`` multirun and ``--help`` work as in any Hydra app). The subcommands are the core's and
every installed domain's (``domainfm.plugins``); ``domainfm demo [domain]`` runs a domain's demo."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import hydra
from domainfm import plugins
from domainfm.configsearch import (  # noqa: F401 - compose_config: for notebooks and scripts
    command_overrides,
    compose_config,
    list_recipes,
    register_resolvers,
)
from domainfm.errors import DomainfmError
from domainfm.validation import validate
from omegaconf import DictConfig, OmegaConf


def _hydra_app(command: plugins.Command) -> Callable[[], None]:
    @hydra.main(config_path=str(command.config_dir), config_name=command.config, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        try:
            command.load()(cfg)
        except Exception as err:
            user = _user_error(err)
            if user is None:
                raise
            logging.getLogger("domainfm").debug("failed", exc_info=True)
            print(f"error: {user}", file=sys.stderr)
            sys.exit(2)

    return app


def _user_error(err: BaseException | None) -> BaseException | None:
    """The DomainfmError/ImportError behind ``err`` (Hydra's instantiate wraps them), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (DomainfmError, ImportError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _usage() -> str:
    lines = ["usage: domainfm <command> [key=value ...] [--cfg job] [-m]", "       domainfm demo [domain]", ""]
    found = plugins.domains()
    width = max((len(c) for d in found.values() for c in d.commands), default=4)
    for domain in found.values():
        if not domain.commands:
            continue
        missing = f"  [not installed: {domain.install_hint}]" if domain.missing else ""
        lines.append(f"{domain.name} commands:{missing}" if domain.name != "core" else "commands:")
        lines += [f"  {c.name:<{width}}  {c.help}" for c in domain.commands.values()]
        lines.append("")
    installed = [d.name for d in found.values() if not d.missing]
    absent = [f"{d.name} ({d.install_hint})" for d in found.values() if d.missing]
    lines.append(f"domains: {', '.join(installed)}" + (f"; not installed: {', '.join(absent)}" if absent else ""))
    demos = [f"{d.name}{' (not installed)' if d.missing else ''}" for d in found.values() if d.demo]
    kinds = [f"{k} ({d.name})" for d in found.values() for k in d.kinds]
    lines.append(f"demos: {', '.join(demos)}  (domainfm demo <domain>)")
    if kinds:
        lines.append(f"data kinds for extract/evaluate: {', '.join(kinds)}  (data.kind=<kind>)")
    lines += [
        "",
        "examples:",
        "  domainfm pretrain recipe=core/mae_vit_tiny data.root=/archive trainer.max_steps=1000",
        "  domainfm recipes",
    ]
    return "\n".join(lines)


def _check_overrides(command: plugins.Command, overrides: list[str]) -> str | None:
    """Compose once to turn Hydra's composition errors into one line listing the valid choices."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    recipes = list_recipes()
    for ov in overrides:
        if ov.startswith("recipe="):
            choice = ov.split("=", 1)[1]
            if choice not in recipes:
                return f"unknown recipe {choice!r}; valid recipes: {', '.join(recipes)}"
    plain = _split_flags(overrides)[1]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(command.config_dir), version_base="1.3"):
            try:
                cfg = compose(config_name=command.config, overrides=plain)
            except (HydraException, OmegaConfBaseException) as err:
                return _explain(err, command.config, plain, compose)
            keep = ("recipe=", "hydra.searchpath", "+extend/")
            user = [o for o in plain if not o.startswith(keep)]
            # the defaults the user's values are typed against (a second composition only when there are values)
            base = (
                compose(config_name=command.config, overrides=[o for o in plain if o.startswith(keep)]) if user else cfg
            )
            return validate(cfg, base, command.name, user)
    finally:
        GlobalHydra.instance().clear()


_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """``(flags with their values, key=value overrides)``: argparse wants the flags first."""
    flags, overrides, take_value = [], [], False
    for a in args:
        if take_value:
            flags.append(a)
            take_value = False
        elif a.startswith("-"):
            flags.append(a)
            take_value = a in _FLAGS_WITH_VALUE
        else:
            overrides.append(a)
    return flags, overrides


def _explain(err: Exception, name: str, overrides: list[str], compose) -> str:
    cause = err.__cause__ or err
    full_key = getattr(cause, "full_key", None)
    if full_key:
        parent, _, leaf = str(full_key).rpartition(".")
        rest = [o for o in overrides if not o.lstrip("+~").startswith(f"{full_key}=")]
        try:
            cfg = compose(config_name=name, overrides=rest)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        except Exception:  # noqa: BLE001
            valid = []
        where = f" under '{parent}'" if parent else ""
        return (
            f"unknown config key '{full_key}'; valid keys{where}: {', '.join(map(str, valid))} "
            f"(prefix with + to add a new key: +{full_key}=...)"
        )
    return " ".join(str(err).split())


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = plugins.commands()
    except DomainfmError as err:  # a broken or clashing domain manifest
        _fail(str(err))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, overrides = argv[0], argv[1:]
    if name == "demo":
        from domainfm.commands.demo import run_demo

        try:
            run_demo(overrides)
        except Exception as err:
            user = _user_error(err)
            if user is None:
                raise
            _fail(str(user))
        return
    if name not in commands:
        _fail(f"unknown command {name!r}; valid commands: {', '.join([*commands, 'demo'])}")
    command = commands[name]
    try:
        plugins.domains()[command.domain].require()
    except ImportError as err:
        _fail(str(err))
    register_resolvers()
    search = command_overrides(name)
    flags = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-i", "-cn", "--config-name"}
    if not flags.intersection(overrides):
        problem = _check_overrides(command, [*overrides, *search])
        if problem:
            _fail(problem)
    flags, plain = _split_flags(overrides)
    sys.argv = [f"domainfm-{name}", *flags, *search, *plain]
    _hydra_app(command)()


if __name__ == "__main__":
    main()
