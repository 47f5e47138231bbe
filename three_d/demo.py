"""The 3D demo (``domainfm demo three_d``): meshes to a pretrained, exported point encoder and a linear-SVM result
at CPU scale. It writes a small archive of synthetic meshes (five primitive classes: box, sphere, cylinder, cone,
torus, each randomly stretched, turned and dented, as ``.off`` / ``.ply`` / ``.obj`` files; synthetic because no
redistributable labeled 3D set is bundled), pretrains ``three_d/point_mae_tiny`` on them (labels unused), and runs
the ModelNet protocol (``domainfm evaluate data.points= protocol=[svm,knn]``, ``[max | mean]`` features) for the
pretrained encoder and the same encoder at random initialisation, with 95 % bootstrap CIs.

``method=i2p_mae``: I2P-MAE (tiny) instead of Point-MAE, guided by a 2D ViT that MAE pretrains first on the meshes'
depth views (no pretrained 2D weights can be downloaded; ``domainfm.three_d.depth_guide``), then the same protocol.

``method=nerf_mae``: radiance grids instead. It fits a grid to the 100 bundled lego views (64 px, ``domainfm
radiance_grid``), pretrains ``three_d/nerf_mae_tiny`` on it and on synthetic scenes of primitives (no labeled
radiance grid is redistributable; ``three_d/synthetic_grids.py``), and runs the voxel probe (``domainfm evaluate
data.grids=``) on other, labeled synthetic scenes for the pretrained encoder and the same encoder at random
initialisation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from domainfm.cli import compose_config
from domainfm.commands.demo import random_init_export, verdict

CLASSES = ("box", "sphere", "cylinder", "cone", "torus")
SUFFIXES = (".off", ".ply", ".obj")


def write_shapes(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """``root/<class>/<i>.{off,ply,obj}``: primitives with a random anisotropic scale (0.6-1.4 per axis), a random
    rotation and Gaussian dents of the vertices (1 % of the size); the same files for the same seed."""
    import trimesh

    rng = np.random.default_rng(seed)
    make = {
        "box": lambda: trimesh.creation.box(extents=(1.0, 1.0, 1.0)),
        "sphere": lambda: trimesh.creation.icosphere(subdivisions=3),
        "cylinder": lambda: trimesh.creation.cylinder(radius=0.5, height=1.2, sections=32),
        "cone": lambda: trimesh.creation.cone(radius=0.6, height=1.2, sections=32),
        "torus": lambda: trimesh.creation.torus(major_radius=0.6, minor_radius=0.2),
    }
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mesh = make[name]()
            mesh.apply_scale(rng.uniform(0.6, 1.4, size=3))
            mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
            mesh.vertices += rng.normal(scale=0.01, size=mesh.vertices.shape)
            mesh.export(folder / f"{i:03d}{SUFFIXES[i % len(SUFFIXES)]}")
    return root


def main(
    out: str | Path = "runs/demo_three_d",
    steps: int | str | None = None,
    per_class: int | str = 40,
    method: str = "point_mae",
    scenes: int | str = 60,
    fit_steps: int | str = 300,
    probe_scenes: int | str = 24,
    guide_steps: int | str = 100,
) -> dict:
    """``domainfm demo three_d [out=<folder>] [steps=<n>] [per_class=<n>]`` (about 2 min on 2 CPU cores);
    ``method=i2p_mae [guide_steps=<n>]`` for I2P-MAE (a 2D guide pretrained on the meshes' depth views first);
    ``method=nerf_mae [steps=<n>] [scenes=<n>] [fit_steps=<n>] [probe_scenes=<n>]`` for radiance grids."""
    if method == "nerf_mae":
        steps = 80 if steps is None else int(steps)
        return nerf_mae_demo(out, steps, int(scenes), int(fit_steps), int(probe_scenes))
    if method not in ("point_mae", "i2p_mae"):
        raise ValueError(f"method={method!r}: the 3D demo runs point_mae, i2p_mae or nerf_mae")
    default = 150 if method == "i2p_mae" else 300  # an I2P-MAE step (2D guide included) costs ~4 Point-MAE steps
    return point_demo(out, method, default if steps is None else int(steps), int(per_class), int(guide_steps))


def point_demo(out: str | Path, method: str, steps: int, per_class: int, guide_steps: int = 100) -> dict:
    """Meshes -> Point-MAE or I2P-MAE (tiny) -> linear SVM and kNN vs random init (module docstring)."""
    from domainfm.commands import evaluate, pretrain

    start = time.perf_counter()
    out, guided = Path(out).resolve(), method == "i2p_mae"
    n = 4 if guided else 3
    print(f"[1/{n}] writing {len(CLASSES)} x {per_class} synthetic meshes ({', '.join(CLASSES)}): .off / .ply / .obj")
    shapes = write_shapes(out / "shapes", per_class)
    extra = []
    if guided:
        from domainfm.three_d.depth_guide import depth_guide_overrides, write_depth_images

        count = write_depth_images(shapes, out / "depth_images", 512, 64)
        guide_args = depth_guide_overrides(out / "depth_images", out / "guide", 64, guide_steps)
        print(f"\n[2/{n}] the 2D guide: MAE (ViT-Tiny/8) for {guide_steps} steps on the meshes' {count} depth views "
              "(no CLIP weights here)", flush=True)  # fmt: skip
        print("      by hand: domainfm pretrain " + " ".join(guide_args), flush=True)
        pretrain.run(compose_config("pretrain", guide_args))
        extra = [f"method.guide={out / 'guide' / 'export'}", "method.image_size=64", "data.batch_size=16"]
    run = out / f"{method}_tiny"
    pretrain_args = [
        f"recipe=three_d/{method}_tiny", f"data.root={shapes}", f"run_dir={run}", f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every={steps}", "data.dataset.surface_points=2048", *extra,
    ]  # fmt: skip
    name = "I2P-MAE" if guided else "Point-MAE"
    print(f"\n[{n - 1}/{n}] {name} (tiny) for {steps} steps on the meshes' surface points (labels unused)", flush=True)
    print("      by hand: domainfm pretrain " + " ".join(pretrain_args), flush=True)
    pretrain.run(compose_config("pretrain", pretrain_args))
    baseline = random_init_export(run, out / "random_init" / "export")
    evaluate_args = [
        f"data.points={shapes}", f"backbone=[{run},{baseline.parent}]", "protocol=[svm,knn]", "pooling=both",
        f"run_dir={out / 'evaluate'}",
    ]  # fmt: skip
    print(f"\n[{n}/{n}] linear SVM and kNN on frozen [max | mean] features: pretrained vs random init", flush=True)
    print("      by hand: domainfm evaluate " + " ".join(evaluate_args), flush=True)
    results = evaluate.run(compose_config("evaluate", evaluate_args))
    trained, base = (rows[0] for rows in results.values())  # svm first, in the order of backbone=[...]
    print("\n" + verdict(trained, base, label="linear SVM"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"  loss curve      {run / 'report' / 'loss.png'}")
    print(f"  evaluation      {out / 'evaluate' / 'summary.md'} (embedding maps in {out / 'evaluate'})")
    print(f"  exported model  {run / 'export'} (domainfm.backbones.loading.load_backbone)")
    return {"run": str(run), "evaluate": str(out / "evaluate"), "results": results}


def nerf_mae_demo(out: str | Path, steps: int, scenes: int, fit_steps: int, probe_scenes: int) -> dict:
    """Posed views -> a fitted grid -> NeRF-MAE (tiny) -> voxel probe vs random init (module docstring)."""
    import shutil

    from domainfm.commands import pretrain
    from domainfm.sample_data import sample_path
    from domainfm.three_d.commands import radiance_grid, voxel_probe
    from domainfm.three_d.synthetic_grids import write_synthetic_grids

    start = time.perf_counter()
    out = Path(out).resolve()
    views = sample_path("three_d/nerf_synthetic_lego_64px")
    fit_args = [f"data.root={views}", f"out={out / 'lego'}", "fit.resolutions=[16,32,48]",
                f"fit.iterations={fit_steps}", "fit.rays=1024", f"checkpoint_every={fit_steps}"]  # fmt: skip
    print("[1/4] a radiance grid fitted to the 100 bundled lego views (64 px; every 10th held out)", flush=True)
    print("      by hand: domainfm radiance_grid " + " ".join(fit_args), flush=True)
    radiance_grid.run(compose_config("radiance_grid", fit_args))
    grids = out / "grids"
    print(f"\n[2/4] {scenes} synthetic scenes of spheres, boxes, cylinders and tori (32^3) beside the lego grid")
    write_synthetic_grids(grids, scenes, size=32, seed=1, labels=False)
    shutil.copy(out / "lego" / "rgbsigma.npz", grids / "lego.npz")
    labeled = write_synthetic_grids(out / "labeled_grids", probe_scenes, size=32, seed=2, labels=True)[0].parent
    run = out / "nerf_mae_tiny"
    pretrain_args = ["recipe=three_d/nerf_mae_tiny", f"data.root={grids}", f"run_dir={run}",
                     f"trainer.max_steps={steps}", f"trainer.checkpoint_every={steps}"]  # fmt: skip
    print(f"\n[3/4] NeRF-MAE (tiny) for {steps} steps on the grids", flush=True)
    print("      by hand: domainfm pretrain " + " ".join(pretrain_args), flush=True)
    pretrain.run(compose_config("pretrain", pretrain_args))
    baseline = random_init_export(run, out / "random_init" / "export")
    probe_args = [f"data.grids={labeled}", f"backbone=[{run},{baseline.parent}]", f"run_dir={out / 'probe'}"]
    print("\n[4/4] voxel probe (semantic voxel labelling, frozen encoder): pretrained vs random init", flush=True)
    print("      by hand: domainfm evaluate " + " ".join(probe_args), flush=True)
    results = voxel_probe.evaluate(compose_config("evaluate", probe_args))
    trained, base = results.values()
    print("\n" + verdict(trained, base, metric="miou", label="voxel"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"  fitted grid     {out / 'lego' / 'rgbsigma.npz'} (held-out renders: {out / 'lego' / 'renders.png'})")
    print(f"  reconstructions {run / 'report' / 'reconstructions.png'}")
    print(f"  exported model  {run / 'export'} (domainfm.backbones.loading.load_backbone)")
    return {"run": str(run), "probe": str(out / "probe"), "results": results}


if __name__ == "__main__":
    main()
