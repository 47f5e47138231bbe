"""The 3D demo (``domainfm demo three_d``) at a few steps on a few synthetic meshes (the demo's own data: primitives,
synthetic by design, see three_d/demo.py): meshes written in three formats and read back, the encoder pretrained
and exported, the SVM protocol for it and its random init. Whether it learns at 300 steps: docs/three_d.md."""

import json

import numpy as np
from domainfm.three_d import demo
from domainfm.three_d.points import read_points


def test_the_demo_goes_from_meshes_to_svm_results(tmp_path):
    result = demo.main(out=str(tmp_path), steps="2", per_class="8")
    shapes = tmp_path / "shapes"
    files = sorted(p.relative_to(shapes).as_posix() for p in shapes.rglob("*.*"))
    assert len(files) == 40 and {f.rsplit(".", 1)[1] for f in files} == {"off", "ply", "obj"}
    cloud = read_points(shapes / "torus" / "001.ply", surface_points=256).xyz
    assert cloud.shape == (256, 3) and np.ptp(cloud, axis=0).min() > 0.1
    config = json.loads((tmp_path / "point_mae_tiny" / "export" / "config.json").read_text())
    assert config["architecture"] == "domainfm_point_transformer" and config["pretrained_cfg"]["input_size"] == [512, 3]
    assert set(result["results"]) == {"point_mae_tiny", "random_init"}
    for rows in result["results"].values():
        assert [r["protocol"] for r in rows] == ["svm", "knn"] and rows[0]["n"] == len(
            [r for r in (tmp_path / "evaluate" / "splits.csv").read_text().splitlines() if r.endswith(",test")]
        )


def test_the_i2p_mae_demo_pretrains_a_depth_view_guide_first(tmp_path):
    result = demo.main(out=str(tmp_path), method="i2p_mae", steps="2", per_class="4", guide_steps="2")
    assert len(list((tmp_path / "depth_images").glob("*.png"))) == 3 * 20  # 3 views of each of the 20 meshes
    guide = json.loads((tmp_path / "guide" / "export" / "config.json").read_text())
    assert guide["pretrained_cfg"]["input_size"] == [3, 64, 64] and guide["pretrained_cfg"]["mean"] == [
        0.485,
        0.456,
        0.406,
    ]
    run = json.loads((tmp_path / "i2p_mae_tiny" / "export" / "config.json").read_text())
    assert run["model_class"] == "domainfm.three_d.hierarchical_encoder:HierarchicalPointEncoder"
    assert set(result["results"]) == {"i2p_mae_tiny", "random_init"}
    assert [r["protocol"] for r in result["results"]["i2p_mae_tiny"]] == ["svm", "knn"]


def test_the_nerf_mae_demo_goes_from_posed_views_to_a_voxel_probe(tmp_path, capsys):
    from domainfm.sample_data import sample_path

    views = sample_path("three_d/nerf_synthetic_lego_64px")
    assert len(list((views / "train").glob("*.png"))) == 100 and (views / "LICENSE").is_file()
    result = demo.main(out=str(tmp_path), method="nerf_mae", steps="2", scenes="4", fit_steps="6", probe_scenes="5")
    fit = json.loads((tmp_path / "lego" / "fit.json").read_text())
    assert fit["views"] == {"train": 90, "held_out": 10} and fit["resolution"] == 48
    grids = sorted(p.name for p in (tmp_path / "grids").glob("*.npz"))
    assert grids == ["lego.npz", "scene_0000.npz", "scene_0001.npz", "scene_0002.npz", "scene_0003.npz"]
    config = json.loads((tmp_path / "nerf_mae_tiny" / "export" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [4, 32, 32, 32]
    assert set(result["results"]) == {"nerf_mae_tiny", "random_init"}
    out = capsys.readouterr().out
    assert "domainfm radiance_grid data.root=" in out and "voxel miou" in out
