"""The 3D demo (``domainfm demo three_d``): meshes to a pretrained, exported point encoder and a linear-SVM result
at CPU scale. It writes a small archive of synthetic meshes (five primitive classes: box, sphere, cylinder, cone,
torus, each randomly stretched, turned and dented, as ``.off`` / ``.ply`` / ``.obj`` files; synthetic because no
redistributable labeled 3D set is bundled), pretrains ``three_d/point_mae_tiny`` on them (labels unused), and runs
the ModelNet protocol (``domainfm evaluate data.points= protocol=[svm,knn]``, ``[max | mean]`` features) for the
pretrained encoder and the same encoder at random initialisation, with 95 % bootstrap CIs."""

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


def main(out: str | Path = "runs/demo_three_d", steps: int | str = 300, per_class: int | str = 40) -> dict:
    """``domainfm demo three_d [out=<folder>] [steps=<n>] [per_class=<n>]`` (about 2 min on 2 CPU cores)."""
    from domainfm.commands import evaluate, pretrain

    start = time.perf_counter()
    out, steps, per_class = Path(out).resolve(), int(steps), int(per_class)
    print(f"[1/3] writing {len(CLASSES)} x {per_class} synthetic meshes ({', '.join(CLASSES)}): .off / .ply / .obj")
    shapes = write_shapes(out / "shapes", per_class)
    run = out / "point_mae_tiny"
    pretrain_args = [
        "recipe=three_d/point_mae_tiny", f"data.root={shapes}", f"run_dir={run}", f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every={steps}", "data.dataset.surface_points=2048",
    ]  # fmt: skip
    print(f"\n[2/3] Point-MAE (tiny) for {steps} steps on the meshes' surface points (labels unused)", flush=True)
    print("      by hand: domainfm pretrain " + " ".join(pretrain_args), flush=True)
    pretrain.run(compose_config("pretrain", pretrain_args))
    baseline = random_init_export(run, out / "random_init" / "export")
    evaluate_args = [
        f"data.points={shapes}", f"backbone=[{run},{baseline.parent}]", "protocol=[svm,knn]", "pooling=both",
        f"run_dir={out / 'evaluate'}",
    ]  # fmt: skip
    print("\n[3/3] linear SVM and kNN on frozen [max | mean] features: pretrained vs random init", flush=True)
    print("      by hand: domainfm evaluate " + " ".join(evaluate_args), flush=True)
    results = evaluate.run(compose_config("evaluate", evaluate_args))
    trained, base = (rows[0] for rows in results.values())  # svm first, in the order of backbone=[...]
    print("\n" + verdict(trained, base, label="linear SVM"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"  loss curve      {run / 'report' / 'loss.png'}")
    print(f"  evaluation      {out / 'evaluate' / 'summary.md'} (embedding maps in {out / 'evaluate'})")
    print(f"  exported model  {run / 'export'} (domainfm.backbones.loading.load_backbone)")
    return {"run": str(run), "evaluate": str(out / "evaluate"), "results": results}


if __name__ == "__main__":
    main()
