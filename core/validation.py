"""Checks on a composed command config before any work starts, so each bad value is one line naming the key,
the value and what is valid: values still ``???`` (with the hint a manifest gives under ``required:``), values
whose type differs from the key's default (``trainer.max_steps=abc``), and the ranges manifests declare under
``limits:`` (``{min: 1}``, ``{greater: 0}``, ``{max: 1}``). The core's rules are in ``core/domain.yaml``, each
domain's in its manifest, so every domain's keys are checked the same way."""

from __future__ import annotations

from typing import Any

from domainfm import plugins
from omegaconf import DictConfig, OmegaConf

_TYPES = {bool: "true or false", int: "an integer", float: "a number"}


def _leaves(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


def _rules() -> tuple[dict, dict]:
    required, limits = {}, {}
    for domain in plugins.domains().values():
        required.update(domain.required)
        limits.update(domain.limits)
    return required, limits


def missing_values(cfg: DictConfig, command: str) -> str | None:
    required, _ = _rules()
    raw = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    for key, value in _leaves(raw):
        if value == "???":
            return f"{key} is required (domainfm {command}): {required.get(key, f'give {key}=<value>')}"
    return None


def wrong_types(base: DictConfig, overrides: list[str]) -> str | None:
    """A user override whose value does not parse as the type of the key's default."""
    for ov in overrides:
        if "=" not in ov or ov.startswith(("+", "~", "hydra.", "recipe=")):
            continue
        key, _, text = ov.partition("=")
        try:
            default = OmegaConf.select(base, key, throw_on_missing=False, default=None)
        except Exception:  # noqa: BLE001 - an interpolation that cannot resolve yet: no type to compare
            continue
        kind = type(default)
        if kind not in _TYPES or default is None:
            continue
        if not _parses(text, kind):
            return f"{key}={text!r} is not {_TYPES[kind]} (default {key}={_show(default)})"
    return None


def out_of_range(cfg: DictConfig) -> str | None:
    _, limits = _rules()
    for key, rule in limits.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False, default=None)
        except Exception:  # noqa: BLE001
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "min" in rule and value < rule["min"]:
            return f"{key}={_show(value)} is out of range: it must be >= {rule['min']}"
        if "greater" in rule and value <= rule["greater"]:
            return f"{key}={_show(value)} is out of range: it must be > {rule['greater']}"
        if "max" in rule and value > rule["max"]:
            return f"{key}={_show(value)} is out of range: it must be <= {rule['max']}"
    return None


def _parses(text: str, kind: type) -> bool:
    text = text.strip()
    if kind is bool:
        return text.lower() in ("true", "false")
    try:
        number = float(text)
    except ValueError:
        return False
    return kind is float or number == int(number)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def validate(cfg: DictConfig, base: DictConfig, command: str, overrides: list[str]) -> str | None:
    """The first problem of ``cfg`` (the composed config; ``base`` composed without the user's value overrides)."""
    return wrong_types(base, overrides) or missing_values(cfg, command) or out_of_range(cfg)
