"""The ``domainfm`` command: ``domainfm <subcommand> [key=value ...]``; every subcommand is a Hydra app
(``--cfg job``, ``-m`` multirun and ``--help`` work as in any Hydra app)."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable

import hydra
from domainfm.configsearch import CORE_CONFIGS, list_recipes, searchpath_override
from domainfm.errors import DomainfmError
from omegaconf import DictConfig, OmegaConf

SUBCOMMANDS: dict[str, str] = {
    "pretrain": "self-supervised pretraining of a backbone (recipe=<domain>/<name>)",
    "finetune": "finetune a backbone on a labeled set",
    "evaluate": "frozen-backbone protocols: knn, linear, fewshot, abmil",
    "extract": "write backbone features of a dataset to .h5",
    "export": "export a run's backbone as safetensors + timm config.json",
    "tile": "whole-slide images -> tissue contours, overlays and tile coordinates (.h5) at a chosen MPP",
    "recipes": "list the recipes with a one-line description",
}


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("sample"):
        from domainfm.sample_data import sample_path

        OmegaConf.register_new_resolver("sample", lambda name: str(sample_path(name)))
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b))
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)


def _command(name: str) -> Callable[[DictConfig], None]:
    return importlib.import_module(f"domainfm.commands.{name}").run


def _hydra_app(name: str) -> Callable[[], None]:
    @hydra.main(config_path=str(CORE_CONFIGS), config_name=name, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        try:
            _command(name)(cfg)
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


def compose_config(command: str, overrides: list[str] | None = None) -> DictConfig:
    """The config that ``domainfm <command> <overrides>`` would run, composed in this process (for notebooks,
    scripts and tests): ``pretrain.run(compose_config("pretrain", ["run_dir=runs/x", ...]))``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CORE_CONFIGS), version_base="1.3"):
            return compose(config_name=command, overrides=[searchpath_override(), *(overrides or [])])
    finally:
        GlobalHydra.instance().clear()


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: domainfm <command> [key=value ...] [--cfg job] [-m]", "", "commands:"]
    lines += [f"  {k:<{width}}  {v}" for k, v in SUBCOMMANDS.items()]
    lines += [
        "",
        "examples:",
        "  domainfm pretrain recipe=core/mae_vit_tiny data.root=/archive trainer.max_steps=1000",
        "  domainfm recipes",
    ]
    return "\n".join(lines)


def _check_overrides(name: str, overrides: list[str]) -> str | None:
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
        with initialize_config_dir(config_dir=str(CORE_CONFIGS), version_base="1.3"):
            try:
                compose(config_name=name, overrides=plain)
            except (HydraException, OmegaConfBaseException) as err:
                return _explain(err, name, plain, compose)
    finally:
        GlobalHydra.instance().clear()
    return None


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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, overrides = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}; valid commands: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        sys.exit(2)
    _register_resolvers()
    search = searchpath_override()
    flags = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-i", "-cn", "--config-name"}
    if not flags.intersection(overrides):
        problem = _check_overrides(name, [*overrides, search])
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    flags, plain = _split_flags(overrides)
    sys.argv = [f"domainfm-{name}", *flags, search, *plain]
    _hydra_app(name)()


if __name__ == "__main__":
    main()
