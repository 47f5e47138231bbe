"""Domains as plug-ins: a third-party domain distribution built in a temporary folder (its entry point, manifest,
one command, one recipe, a data kind with an extract hook, a demo) is listed and run by ``domainfm`` without
touching the core; clashes, bad manifests and missing extras are one-line errors. docs/architecture.md's "Write
your own domain" follows :func:`write_plugin`."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from domainfm import plugins
from domainfm.errors import ConfigError
from omegaconf import OmegaConf

from tests.conftest import REPO, TINY, run_cli

MANIFEST = """\
name: {name}
description: a third-party domain for the plug-in test
extra: {name}
requires: [json]
configs: configs
commands:
  {command}:
    module: {package}.commands
    help: "write a greeting to out="
demo:
  module: {package}.commands
  help: "the greeting demo"
kinds:
  {kind}:
    detect: data.greeting
    extract: {package}.commands:extract
    evaluate: {package}.commands:evaluate
"""

COMMANDS = '''\
"""The plug-in's command, its extract hook and its demo."""
import json
from pathlib import Path


def run(cfg):
    Path(cfg.out).write_text(json.dumps({"greeting": cfg.greeting, "domain": "acme"}))
    print(f"hello from acme: {cfg.greeting}")


def extract(cfg, backbone):
    Path(cfg.out).write_text(json.dumps({"backbone": backbone, "greeting": cfg.data.greeting}))
    print(f"acme extract hook: {cfg.data.greeting}")
    return Path(cfg.out)


def evaluate(cfg):
    print(f"acme evaluate hook: {cfg.data.greeting} with {cfg.protocol}")
    return {"greeting": cfg.data.greeting}


def main(out="acme-demo.json", greeting="demo"):
    Path(out).write_text(json.dumps({"demo": greeting}))
    print(f"acme demo wrote {out}")
'''

COMMAND_CONFIG = """\
# domainfm {command}: the plug-in's command config
defaults:
  - override hydra/job_logging: stdout
  - _self_
greeting: hello
out: ???
hydra:
  run:
    dir: .
  output_subdir: null
"""

RECIPE = """\
# @package _global_
defaults:
  - core/mae_vit_tiny
  - _self_
name: {name}_mae
description: "the acme recipe: core MAE on the bundled H&E tiles"
"""

EXTEND = """\
# @package _global_
data:
  greeting: null
"""


def write_plugin(
    site: Path, name: str = "acme", command: str = "hello", kind: str = "greetings", recipe: str | None = None
) -> Path:
    """A plug-in distribution in ``site``: package ``<name>_domain`` + ``<name>_domain-0.1.dist-info`` whose
    ``entry_points.txt`` registers ``<name> = <name>_domain:domain.yaml`` in the ``domainfm.domains`` group."""
    package = f"{name}_domain"
    pkg = site / package
    (pkg / "configs" / "recipe" / name).mkdir(parents=True)
    (pkg / "configs" / "extend" / name).mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "domain.yaml").write_text(MANIFEST.format(name=name, package=package, command=command, kind=kind))
    (pkg / "commands.py").write_text(COMMANDS)
    (pkg / "configs" / f"{command}.yaml").write_text(COMMAND_CONFIG.format(command=command))
    (pkg / "configs" / "recipe" / name / f"{recipe or 'tiny_mae'}.yaml").write_text(RECIPE.format(name=name))
    for extended in ("extract", "evaluate"):
        (pkg / "configs" / "extend" / name / f"{extended}.yaml").write_text(EXTEND)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[domainfm.domains]\n{name} = {package}:domain.yaml\n")
    return pkg


def _env(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join(p for p in [str(site), os.environ.get("PYTHONPATH", "")] if p)}


def test_a_third_party_domain_is_listed_and_runs(tmp_path):
    site = tmp_path / "site"
    write_plugin(site)
    env = _env(site)

    helped = run_cli(["--help"], tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "acme commands:" in helped.stdout and re.search(r"\n  hello +write a greeting to out=", helped.stdout)
    assert "pathology commands:" in helped.stdout and "greetings (acme)" in helped.stdout

    listed = run_cli(["recipes"], tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "\nacme\n  acme/tiny_mae  the acme recipe: core MAE on the bundled H&E tiles" in listed.stdout
    assert "core/mae_vit_tiny" in listed.stdout and "pathology/uni_tiny" in listed.stdout

    ran = run_cli(["hello", "greeting=hi there", f"out={tmp_path / 'hello.json'}"], tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    assert "hello from acme: hi there" in ran.stdout
    assert json.loads((tmp_path / "hello.json").read_text()) == {"greeting": "hi there", "domain": "acme"}

    # the plug-in's recipe through the core's pretrain, its data kind through the core's extract
    run_dir = tmp_path / "run"
    trained = run_cli(
        ["pretrain", "recipe=acme/tiny_mae", f"run_dir={run_dir}", "trainer.max_steps=2", *TINY], tmp_path, env=env
    )
    assert trained.returncode == 0, trained.stderr
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert OmegaConf.load(run_dir / "config.yaml").name == "acme_mae"

    out = tmp_path / "feats.json"
    hooked = run_cli(["extract", f"backbone={run_dir}", "data.greeting=hey", f"out={out}"], tmp_path, env=env)
    assert hooked.returncode == 0, hooked.stderr
    assert "acme extract hook: hey" in hooked.stdout
    assert json.loads(out.read_text()) == {"backbone": str(run_dir), "greeting": "hey"}

    judged = run_cli(["evaluate", "backbone=x", "data.greeting=yo", "protocol=knn"], tmp_path, env=env)
    assert judged.returncode == 0, judged.stderr
    assert "acme evaluate hook: yo with knn" in judged.stdout

    demo = run_cli(["demo", "acme", f"out={tmp_path / 'demo.json'}"], tmp_path, env=env)
    assert demo.returncode == 0, demo.stderr
    assert json.loads((tmp_path / "demo.json").read_text()) == {"demo": "demo"}


def test_two_domains_declaring_one_command_is_a_one_line_error(tmp_path):
    site = tmp_path / "site"
    write_plugin(site, "acme")
    write_plugin(site, "zeta", command="hello", kind="zeta_kind")
    out = run_cli(["--help"], tmp_path, env=_env(site))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: command 'hello' is declared by both domain 'acme' and domain 'zeta': rename one of them"
    )


def _manifest(tmp_path: Path, name: str, **kw) -> plugins.Domain:
    site = tmp_path / name
    write_plugin(site, name, **kw)
    return plugins.read_manifest(site / f"{name}_domain" / "domain.yaml")


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            {"command": "pretrain", "kind": "k2"},
            "command 'pretrain' is declared by both domain 'core' and domain 'zeta': rename one of them",
        ),
        (
            {"command": "other", "kind": "greetings"},
            "data kind 'greetings' is declared by both domain 'acme' and domain 'zeta': rename one of them",
        ),
        (
            {"command": "demo", "kind": "k2"},
            "command 'demo' is reserved (domain 'zeta'): declare a demo: entry instead",
        ),
    ],
)
def test_clashes_name_both_domains(tmp_path, second, message):
    found = {"core": plugins.read_manifest(plugins.CORE_MANIFEST), "acme": _manifest(tmp_path, "acme")}
    found["zeta"] = _manifest(tmp_path, "zeta", **second)
    with pytest.raises(plugins.PluginError) as err:
        plugins.check_unique(found)
    assert str(err.value) == message


def test_recipe_clash_names_both_domains(tmp_path):
    acme = _manifest(tmp_path, "acme")
    zeta = _manifest(tmp_path, "zeta", command="other", kind="k2")
    (zeta.configs / "recipe" / "acme").mkdir()
    (zeta.configs / "recipe" / "acme" / "tiny_mae.yaml").write_text("description: x\n")
    with pytest.raises(plugins.PluginError, match="recipe 'acme/tiny_mae' is declared by both domain 'acme' and "):
        plugins.check_unique({"acme": acme, "zeta": zeta})


def test_bad_manifests_name_the_file_and_key(tmp_path):
    path = tmp_path / "domain.yaml"
    path.write_text("description: no name\n")
    with pytest.raises(plugins.PluginError, match=r"domain.yaml: a domain manifest needs at least 'name: <domain>'"):
        plugins.read_manifest(path)
    path.write_text("name: x\nconfigs: c\ncommands:\n  go: {help: nothing}\n")
    with pytest.raises(plugins.PluginError, match=r"commands.go needs 'module: <python module with run\(cfg\)>'"):
        plugins.read_manifest(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(plugins.PluginError, match="unreadable domain manifest"):
        plugins.read_manifest(path)


def test_installed_domains_follow_the_layout():
    """Every folder packaged as ``domainfm.<domain>`` is an entry point with a manifest; recipes sit under
    ``recipe/<domain>/``; commands' configs exist; the core lists no domain."""
    from tests.core.test_import_contracts import tomllib

    packaged = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = plugins.domains()
    assert set(found) == {"core"} | {name.split(".", 1)[1] for name in packaged if name != "domainfm"}
    for domain in found.values():
        assert all(key.startswith(f"{domain.name}/") for key in domain.recipes()), domain.name
        for cmd in domain.commands.values():
            assert (cmd.config_dir / f"{cmd.config}.yaml").is_file(), cmd.name
    assert set(found["core"].commands) == {"pretrain", "finetune", "evaluate", "extract", "export", "recipes"}
    assert found["pathology"].commands["tile"].module == "domainfm.pathology.commands.tile"


def test_help_marks_domains_whose_extra_is_missing(monkeypatch):
    from domainfm.cli import _usage

    monkeypatch.setitem(sys.modules, "openslide", None)
    text = _usage()
    assert 'pathology commands:  [not installed: pip install "domainfm[pathology]"]' in text
    assert "demos: core, face_security, medical, pathology (not installed)" in text
    domains_line = next(ln for ln in text.splitlines() if ln.startswith("domains: "))
    assert domains_line.startswith("domains: core, ")
    assert 'pathology (pip install "domainfm[pathology]")' in domains_line
    monkeypatch.delitem(sys.modules, "openslide")
    assert "pathology commands:\n  tile" in _usage()


def test_data_kind_is_chosen_by_key_or_name():
    cfg = OmegaConf.create({"data": {"kind": None, "coords": None}})
    assert plugins.data_kind(cfg) is None
    cfg.data.coords = "/tiles/patches"
    assert plugins.data_kind(cfg).name == "slides"
    assert plugins.data_kind(OmegaConf.create({"data": {"kind": "slides"}})).domain == "pathology"
    with pytest.raises(
        ConfigError,
        match=r"unknown data.kind='meshes'; valid kinds: antispoofing, chips, deepfake, grids, points, segmentation, "
        "slide_bags, slides, volumes",
    ):
        plugins.data_kind(OmegaConf.create({"data": {"kind": "meshes"}}))
    with pytest.raises(ConfigError, match="domainfm evaluate does not take data.kind=slides"):
        plugins.kind_hook(cfg, "evaluate")


def test_domain_hook_without_its_extra_is_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)
    cfg = OmegaConf.create({"data": {"coords": "/tiles"}})
    with pytest.raises(ImportError, match=r'^domainfm pathology needs openslide: pip install "domainfm\[pathology\]"$'):
        plugins.kind_hook(cfg, "extract")


def test_demo_lists_and_refuses_unknown_names(tmp_path):
    listed = run_cli(["demo"], tmp_path)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0] == "demos (domainfm demo <domain> [key=value ...]):"
    names = {ln.split()[0] for ln in listed.stdout.splitlines()[1:]}
    assert {"medical", "pathology", "remote_sensing"} <= names
    bad = run_cli(["demo", "volcanology"], tmp_path)
    expected = (
        "error: no demo named 'volcanology'; demos: core, face_security, medical, pathology, remote_sensing, three_d"
    )
    assert bad.returncode == 2 and bad.stderr.strip() == expected


def test_architecture_guide_shows_the_plugin_layout():
    guide = (REPO / "docs" / "architecture.md").read_text()
    section = guide.split("## Write your own domain", 1)[1]
    for piece in ('[project.entry-points."domainfm.domains"]', "domain.yaml", "configs/recipe/", "extend/", "kinds:"):
        assert piece in section, piece
