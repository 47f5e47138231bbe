"""The face-security demo (``domainfm demo face_security``): face photos to a pretrained, exported FSFM backbone and
a real/fake finetuning result at CPU scale, on 80 bundled real photos of the Face Research Lab London set
(``sample_data/README.md``). Steps: ``domainfm faces`` (aligned 112 px faces, parsing maps, overlays, the faces'
normalisation); ``face_security/fsfm_tiny`` pretraining with those statistics (labels unused); one blended fake
per face (Face X-ray-style, donor of another person: no real deepfakes are redistributable); ``domainfm finetune
task=deepfake`` of the pretrained backbone and of the same ViT at random initialisation, splits grouped by person,
frame- and video-level (a person's real or fake faces) AUROC with 95 % bootstrap CIs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from domainfm.cli import compose_config
from domainfm.commands.demo import random_init_export, verdict
from domainfm.sample_data import sample_path


def main(
    out: str | Path = "runs/demo_face_security",
    steps: int | str = 100,
    finetune_steps: int | str = 60,
    people: int | str = 40,
) -> dict:
    """``domainfm demo face_security [out=<folder>] [steps=<n>] [finetune_steps=<n>] [people=<n>]`` (about 6 min
    on 2 CPU cores)."""
    from domainfm.commands import finetune, pretrain
    from domainfm.face_security.commands.faces import overlay_sheet
    from domainfm.face_security.faces import FaceParams, extract_faces
    from domainfm.face_security.fakes import blended_fake_set

    start = time.perf_counter()
    out, steps, finetune_steps, people = Path(out).resolve(), int(steps), int(finetune_steps), int(people)
    photos = out / "photos"
    bundled = sample_path("face_security/london_faces")
    for expression in ("neutral", "smiling"):
        (photos / expression).mkdir(parents=True, exist_ok=True)
        for path in sorted((bundled / expression).glob("*.jpg"))[:people]:
            shutil.copy(path, photos / expression / path.name)
    print(f"[1/4] domainfm faces on {2 * people} photos ({people} people, neutral + smiling): align, parse", flush=True)
    faces = out / "faces"
    summary = extract_faces(photos, faces, FaceParams(size=112), workers="auto")
    overlay_sheet(faces)
    print(summary.render(), flush=True)
    mean, std = (",".join(f"{v:.4f}" for v in getattr(summary, k)) for k in ("mean", "std"))
    run = out / "fsfm_tiny"
    pretrain_args = [
        "recipe=face_security/fsfm_tiny", f"data.root={faces}", f"run_dir={run}", f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every={steps}", f"preprocess.mean=[{mean}]", f"preprocess.std=[{std}]",
        "data.transform.scale=[0.2,1.0]", "data.transform.hflip=0.5",
    ]  # fmt: skip
    print(
        f"\n[2/4] FSFM (tiny) for {steps} steps: CRFR-P masked reconstruction + EMA instance discrimination", flush=True
    )
    print("      by hand: domainfm pretrain " + " ".join(pretrain_args), flush=True)
    pretrain.run(compose_config("pretrain", pretrain_args))
    baseline = random_init_export(run, out / "random_init" / "export")
    print("\n[3/4] one blended fake per face (inner face of another person, colour-matched, feathered)", flush=True)
    fakes = blended_fake_set(faces, out / "fakes", identity="prefix", seed=0)
    results = {}
    for name, backbone in (("fsfm_tiny", run), ("random_init", baseline.parent)):
        args = [
            "task=deepfake", f"backbone={backbone}", f"data.csv={fakes}", f"run_dir={out / 'finetune' / name}",
            f"trainer.max_steps={finetune_steps}", f"trainer.eval_every={max(1, finetune_steps // 3)}",
            f"trainer.checkpoint_every={max(1, finetune_steps // 3)}", "trainer.monitor=val_auroc",
            "split.val=0.2", "split.test=0.3", "finetune.layer_decay=0.65",
        ]  # fmt: skip
        print(f"\n[4/4] real/fake finetuning of {name} for {finetune_steps} steps", flush=True)
        print("      by hand: domainfm finetune " + " ".join(args), flush=True)
        results[name] = next(iter(finetune.run(compose_config("finetune", args)).values()))
    (trained_frame, trained_video), (base_frame, base_video) = results.values()
    print("\n" + verdict(trained_frame, base_frame, metric="auroc", label="frame-level"))
    print(verdict(trained_video, base_video, metric="auroc", label="video-level"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"  faces + parsing {faces / 'overlays.png'} ({faces / 'faces.csv'})")
    print(f"  loss curve      {run / 'report' / 'loss.png'}")
    print(f"  finetuning      {out / 'finetune'}/<backbone>/summary.md, test_scores.csv")
    print(f"  exported model  {run / 'export'} (finetuned: {out / 'finetune' / 'fsfm_tiny' / 'export'})")
    (out / "demo.json").write_text(json.dumps(results, indent=1, default=str))
    return {"run": str(run), "faces": str(faces), "fakes": str(fakes), "results": results}


if __name__ == "__main__":
    main()
