"""MADELEINE end to end on real multistain sections (ANHIR, ../shared/data/pathology): the 5-stain lung lesion, the
H&E/proSPC lesion pair and the H&E/PanCytokeratin rat kidney, tiled as images, patch features from a small random
ViT, the recipe trained a few steps, slide embeddings extracted; evaluation on synthetic bags (no labeled
multistain slides exist here)."""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit import create_vit
from domainfm.cli import compose_config
from domainfm.commands import evaluate, extract, pretrain
from domainfm.engine.export import export_backbone
from domainfm.errors import DataError
from domainfm.pathology.synthetic_bags import make_multistain_bags
from domainfm.pathology.tiling import TilingParams, tile_slides
from safetensors.torch import load_file

SECTIONS = {  # tissue -> {stain: file under ../shared/data/pathology}
    "lung_les3": {
        "HE": "anhir_lung_lesion3_5stains/29-041-Izd2-w35-He-les3.jpg",
        "CD31": "anhir_lung_lesion3_5stains/29-041-Izd2-w35-CD31-3-les3.jpg",
        "CC10": "anhir_lung_lesion3_5stains/29-041-Izd2-w35-Cc10-5-les3.jpg",
        "KI67": "anhir_lung_lesion3_5stains/29-041-Izd2-w35-Ki67-7-les3.jpg",
        "PROSPC": "anhir_lung_lesion3_5stains/29-041-Izd2-w35-proSPC-4-les3.jpg",
    },
    "lesion_w35": {
        "HE": "anhir_birl_he_ihc/lesions_/scale-5pc/Izd2-29-041-w35_HE.jpg",
        "PROSPC": "anhir_birl_he_ihc/lesions_/scale-5pc/Izd2-29-041-w35_proSPC.jpg",
    },
    "rat_kidney": {
        "HE": "anhir_birl_he_ihc/rat-kidney_/scale-5pc/Rat-Kidney_HE.jpg",
        "PANCK": "anhir_birl_he_ihc/rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin.jpg",
    },
}
STAINS = ["HE", "CD31", "CC10", "KI67", "PROSPC", "PANCK"]


@pytest.fixture(scope="module")
def features(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("multistain")
    slides = tmp / "slides"
    slides.mkdir()
    rows = []
    for tissue, stains in SECTIONS.items():
        for stain, rel in stains.items():
            name = f"{tissue}_{stain}"
            shutil.copy(shared_data / "pathology" / rel, slides / f"{name}.jpg")
            rows.append((tissue, stain, f"{name}.h5", tissue))
    # 5 % scale scans: about 5 um/px; 32 px tiles of 160 um
    tile_slides(slides, tmp / "tiles", TilingParams(target_mpp=5.0, tile_px=32), mpp=5.0, workers=1, progress=False)
    torch.manual_seed(0)
    vit = create_vit(img_size=32, patch_size=16, depth=1, embed_dim=24, num_heads=2).eval()
    preprocess = {"img_size": 32, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "mpp": 5.0}
    export_backbone(vit, tmp / "patch_encoder", preprocess)
    cfg = compose_config(
        "extract",
        [f"backbone={tmp / 'patch_encoder'}", f"data.root={slides}", f"data.coords={tmp / 'tiles' / 'patches'}",
         f"out={tmp / 'features'}", "progress=false", "data.num_workers=0", "pooling=cls"],
    )  # fmt: skip
    extract.run(cfg)
    with (tmp / "features" / "multistain.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "stain", "path", "patient"), *rows])
    return tmp


def test_madeleine_trains_on_real_multistain_sections_and_exports(features, tmp_path):
    tiles = {p.stem: len(h5py.File(p)["features"]) for p in (features / "features").glob("*.h5")}
    assert len(tiles) == 9 and min(tiles.values()) > 50  # every section tiled and embedded
    run = tmp_path / "run"
    cfg = compose_config(
        "pretrain",
        ["recipe=pathology/madeleine_tiny", f"data.csv={features / 'features' / 'multistain.csv'}",
         f"data.stains=[{','.join(STAINS)}]", "backbone.in_dim=24", f"run_dir={run}", "trainer.max_steps=4",
         "trainer.rank_every=2", "data.batch_size=3", "data.num_workers=0", "trainer.progress=false",
         "data.dataset.n_patches=48", "method.local_tokens=16"],
    )  # fmt: skip
    pretrain.run(cfg)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = logs[-1]
    # proSPC is the only stain with two tissues: the only pair with a negative (the official masking rule)
    assert {k for k in last if k.startswith(("nce_", "got_"))} == {"nce_PROSPC", "got_PROSPC"}
    assert np.isfinite(last["loss"]) and 1.0 <= last["rankme"] <= 3.0
    # the recipe exports the weights of the highest smooth rank after 1/6 of the run (MADELEINE's choice)
    ranks = {r["step"]: r["rankme"] for r in logs if "rankme" in r}
    assert sorted(ranks) == [2, 4]
    chosen = max(ranks, key=ranks.get)
    best = torch.load(run / "checkpoints" / "best_rank.pt", weights_only=True)
    assert best["step"] == chosen and best["rankme"] == pytest.approx(ranks[chosen], rel=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_step"] == chosen
    exported = load_file(run / "export" / "model.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, best["model"][f"backbone.{key}"], rtol=0, atol=0)
    card = (run / "export" / "README.md").read_text()
    assert f"step {chosen} of 4: highest RankMe" in card
    encoder = load_backbone(str(run / "export"))
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["model_args"]["stains"] == STAINS and config["domainfm"]["patch_feature_dim"] == 24
    assert "patch_encoder" in config["domainfm"]  # which patch features the slide encoder expects
    # slide embeddings: one row per slide file, the encoder on all of its patches
    out = tmp_path / "slides.h5"
    cfg = compose_config(
        "extract",
        [f"backbone={run / 'export'}", f"data.bags={features / 'features'}", f"out={out}", "progress=false",
         "data.num_workers=0", "pooling=cls"],
    )  # fmt: skip
    extract.run(cfg)
    with h5py.File(out) as f:
        ids = [i.decode() for i in f["ids"][:]]
        rows = f["features"][:]
    assert sorted(ids) == sorted(tiles) and rows.shape == (9, 64)
    he = h5py.File(features / "features" / "lung_les3_HE.h5")["features"][:]
    with torch.no_grad():
        expected = encoder.eval()(torch.from_numpy(he)[None])[0].numpy()
    np.testing.assert_allclose(rows[ids.index("lung_les3_HE")], expected, rtol=1e-4, atol=1e-5)


def test_slide_evaluation_protocols_side_by_side(tmp_path):
    ms, labels = make_multistain_bags(tmp_path / "bags", n_tissues=40, dim=8, patches=(20, 30), seed=0)
    slides = tmp_path / "slides.csv"
    with labels.open() as f, slides.open("w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["slide_id", "label", "group", "path"])
        for r in csv.DictReader(f):
            w.writerow([r["slide_id"], r["label"], r["group"], f"{r['slide_id']}_HE.h5"])
    run = tmp_path / "run"
    pretrain.run(
        compose_config(
            "pretrain",
            [
                "recipe=pathology/madeleine_tiny",
                f"data.csv={ms}",
                "data.stains=[HE,MARKER,IHC2]",
                "backbone.in_dim=8",
                f"run_dir={run}",
                "trainer.max_steps=3",
                "data.num_workers=0",
                "trainer.progress=false",
                "data.dataset.n_patches=16",
                "method.local_tokens=8",
            ],
        )  # fmt: skip
    )
    cfg = compose_config(
        "evaluate",
        [f"backbone=[{run / 'export'},mean]", f"data.bags={tmp_path / 'bags' / 'features'}", f"data.csv={slides}",
         "protocol=[fewshot_lr,retrieval_map]", "fewshot_lr.shots=[1,5]", "fewshot_lr.folds=3",
         f"run_dir={tmp_path / 'ev'}", "progress=false", "data.num_workers=0", "report.plots=false"],
    )  # fmt: skip
    results = evaluate.run(cfg)
    assert set(results) == {"run", "mean"}
    names = [r["protocol"] for r in results["mean"]]
    assert names == ["fewshot_lr 1-shot", "fewshot_lr 5-shot", "retrieval 1", "retrieval 5", "retrieval 10"]
    # the mean baseline is the patch-feature mean: check its 1-NN retrieval by hand from splits.csv
    with (tmp_path / "ev" / "splits.csv").open() as f:
        split = {r["path"]: r["split"] for r in csv.DictReader(f)}
    feats = {sid: h5py.File(tmp_path / "bags" / "features" / f"{sid}_HE.h5")["features"][:].mean(0) for sid in split}
    with labels.open() as f:
        label = {r["slide_id"]: r["label"] for r in csv.DictReader(f)}
    db = [s for s in split if split[s] != "test"]
    hits = []
    for q in (s for s in split if split[s] == "test"):
        sims = [feats[q] @ feats[d] / np.linalg.norm(feats[q]) / np.linalg.norm(feats[d]) for d in db]
        hits.append(label[db[int(np.argmax(sims))]] == label[q])
    assert results["mean"][2]["episodes"]["accuracy"][0] == pytest.approx(np.mean(hits))
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,label\nnope,positive\n")
    cfg.data.csv = str(bad)
    with pytest.raises(DataError, match="1 of 1 slides have no features in data.bags.*nope.h5"):
        evaluate.run(cfg)
