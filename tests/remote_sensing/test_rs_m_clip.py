"""remote_sensing/rs_m_clip_tiny end to end on the bundled EuroSAT chips and their multilingual captions (real
images; captions are class templates written by us, see remote_sensing/sample_data/README.md): pretrain a few
steps, the export carries the text tower and tokenizer, zero-shot (per language too) and retrieval through
`domainfm evaluate`."""

import json

import pytest
import torch
from domainfm.cli import compose_config
from domainfm.commands import evaluate, pretrain
from domainfm.errors import DataError
from domainfm.methods.clip import load_clip_text
from domainfm.sample_data import sample_path
from hydra.utils import instantiate

pytest.importorskip("transformers")
SAMPLE = sample_path("remote_sensing/eurosat_rgb_small").parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rsm") / "run"
    overrides = [
        "recipe=remote_sensing/rs_m_clip_tiny",
        f"run_dir={run_dir}",
        "trainer.max_steps=2",
        "trainer.checkpoint_every=2",
        "data.batch_size=8",
        "trainer.progress=false",
        "data.num_workers=0",
    ]
    summary = pretrain.run(compose_config("pretrain", overrides))
    assert summary["steps"] == 2
    return run_dir


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


def test_zeroshot_and_retrieval_through_evaluate(run, tmp_path):
    common = ["progress=false", "report.plots=false", "cache_features=false", f"backbone={run}"]
    zs = evaluate.run(
        compose_config(
            "evaluate",
            common
            + [
                f"data.root={SAMPLE / 'eurosat_rgb_small'}",
                f"data.csv={SAMPLE / 'eurosat_labels.csv'}",
                "protocol=[zeroshot]",
                f"zeroshot.prompts={SAMPLE / 'eurosat_prompts.json'}",
                f"run_dir={tmp_path / 'zs'}",
                "metrics.bootstrap=20",
            ],
        )
    )
    (rows,) = zs.values()
    names = [r["protocol"] for r in rows]
    assert names == ["zeroshot"] + [f"zeroshot[{x}]" for x in ("en", "pt", "es", "fr", "de", "it")]
    assert all(r["n"] == 30 for r in rows)  # the test split: 3 chips per class, none captioned in training
    assert "zeroshot" in (tmp_path / "zs" / "summary.md").read_text()
    rt = evaluate.run(
        compose_config(
            "evaluate",
            common
            + [
                f"data.root={SAMPLE / 'eurosat_rgb_small'}",
                f"data.captions={SAMPLE / 'eurosat_test_captions.csv'}",
                "protocol=[retrieval]",
                f"run_dir={tmp_path / 'rt'}",
                "metrics.bootstrap=20",
            ],
        )
    )
    assert set(rt) == {"run"} | {f"run [{x}]" for x in ("de", "en", "es", "fr", "it", "pt")}
    assert rt["run"]["n_images"] == 30 and rt["run"]["n_texts"] == 180 and rt["run [pt]"]["n_texts"] == 30
    assert 0 <= rt["run"]["mean_recall"] <= 100
    assert json.loads((tmp_path / "rt" / "results.json").read_text())["retrieval"]["run"]["n_texts"] == 180


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
