"""remote_sensing/rs_m_clip_tiny end to end on the bundled EuroSAT chips and their multilingual captions (real
images; captions are class templates written by us, see remote_sensing/sample_data/README.md), through the
remote-sensing demo: pretrain a few steps, the export carries the text tower and tokenizer, zero-shot (per language
too) and retrieval through `domainfm evaluate`, against the random-init export (which has a text tower too)."""

import json

import pytest
import torch
from domainfm.cli import compose_config
from domainfm.commands import evaluate
from domainfm.errors import DataError
from domainfm.methods.clip import load_clip_text
from domainfm.sample_data import sample_path
from hydra.utils import instantiate

pytest.importorskip("transformers")
SAMPLE = sample_path("remote_sensing/eurosat_rgb_small").parent


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """The remote-sensing demo at 2 steps: pretrain, random-init baseline, zero-shot and retrieval."""
    from domainfm.remote_sensing import demo

    out = tmp_path_factory.mktemp("rsm")
    result = demo.main(out=str(out), steps="2")
    assert result["run"] == str(out / "rs_m_clip_tiny")
    return out


@pytest.fixture(scope="module")
def run(demo_out):
    return demo_out / "rs_m_clip_tiny"


def test_export_rebuilds_the_text_side_offline(run):
    folder = run / "export" / "text_tower"
    assert {p.name for p in folder.iterdir()} == {"tokenizer", "tower.json", "weights.safetensors"}
    spec = json.loads((folder / "tower.json").read_text())
    assert spec["tokenizer"] == "tokenizer" and spec["context_length"] == 32
    assert spec["text_tower"]["config"]["model_type"] == "xlm-roberta"  # inline: nothing outside the export
    text = load_clip_text(run)  # the run folder resolves to its export
    cfg = compose_config("pretrain", ["recipe=remote_sensing/rs_m_clip_tiny", f"run_dir={run}"])
    method = instantiate(cfg.method)
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)["model"]
    method.load_state_dict(state)
    method.eval()
    prompts = ["uma imagem de satélite de floresta.", "ein Satellitenbild von Wald."]
    dataset = instantiate(cfg.data.dataset)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(method.encode_text(dataset.tokenizer(prompts)), dim=-1)
    torch.testing.assert_close(text.encode_texts(prompts), expected)
    assert text.logits.logit_scale.item() == pytest.approx(method.logits.logit_scale.item())


def test_the_demo_runs_zeroshot_per_language_and_retrieval_against_random_init(demo_out):
    zs = json.loads((demo_out / "zeroshot" / "results.json").read_text())["results"]
    assert set(zs) == {"rs_m_clip_tiny", "random_init"}
    for rows in zs.values():
        names = [r["protocol"] for r in rows]
        assert names == ["zeroshot"] + [f"zeroshot[{x}]" for x in ("en", "pt", "es", "fr", "de", "it")]
        assert all(r["n"] == 30 for r in rows)  # the test split: 3 chips per class, none captioned in training
    assert "zeroshot[pt]" in (demo_out / "zeroshot" / "summary.md").read_text()
    rt = json.loads((demo_out / "retrieval" / "results.json").read_text())["retrieval"]
    langs = ("de", "en", "es", "fr", "it", "pt")
    assert set(rt) == {f"{n}{s}" for n in ("rs_m_clip_tiny", "random_init") for s in ["", *(f" [{x}]" for x in langs)]}
    run = rt["rs_m_clip_tiny"]
    assert run["n_images"] == 30 and run["n_texts"] == 180 and rt["rs_m_clip_tiny [pt]"]["n_texts"] == 30
    assert 0 <= run["mean_recall"] <= 100


def test_zeroshot_on_a_backbone_without_text_tower_is_one_line(run, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(run / "export", plain)
    shutil.rmtree(plain / "text_tower")
    overrides = [
        f"backbone={plain}",
        f"data.root={SAMPLE / 'eurosat_rgb_small'}",
        f"data.csv={SAMPLE / 'eurosat_labels.csv'}",
        "protocol=[zeroshot]",
        f"run_dir={tmp_path / 'e'}",
        "progress=false",
        "report.plots=false",
    ]
    with pytest.raises(DataError, match=r"holds no CLIP text tower \(text_tower/tower.json\)"):
        evaluate.run(compose_config("evaluate", overrides))


def test_domain_sample_paths_name_what_exists():
    assert sample_path("remote_sensing/eurosat_prompts.json").is_file()
    with pytest.raises(DataError, match="available: .*eurosat_rgb_small"):
        sample_path("remote_sensing/nothing")
    with pytest.raises(DataError, match="'astro' is not an installed domain"):
        sample_path("astro/x")
