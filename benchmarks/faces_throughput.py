"""Preprocessing throughput of ``domainfm faces`` on the 80 bundled London photos (256 x 256 px, one face each;
copied three times, 240 faces, so worker start-up is amortised as in a real archive): faces/s with 1 and 2 worker
processes (per core), and where one worker's time goes (MediaPipe face mesh, selfie
segmentation, alignment warp, rule-based parsing, PNG writing), measured stage by stage on the same photos.

    .venv/bin/python benchmarks/faces_throughput.py            # ~1 min on 2 CPU cores; run nothing else meanwhile

Writes a markdown table to stdout and ``.bench/faces_throughput/results.json``.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".bench" / "faces_throughput"


def whole_runs(photos: Path, size: int) -> dict[str, float]:
    from domainfm.face_security.faces import FaceParams, extract_faces

    rates = {}
    for workers in (1, 2):
        out = OUT / f"faces_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        summary = extract_faces(photos, out, FaceParams(size=size), workers=workers, chunk=20, progress=False)
        rates[workers] = summary.faces / (time.perf_counter() - t0)
    return rates


def stages(photos: Path, size: int) -> dict[str, float]:
    """Milliseconds per face of each stage, one process."""
    from domainfm.face_security.align import FaceAnalyzer, align_face
    from domainfm.face_security.parsing import LandmarkParser

    analyzer, parser = FaceAnalyzer(), LandmarkParser()
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos.rglob("*.jpg"))]
    analyzer.faces(frames[0])  # warm up
    spent = dict.fromkeys(("face mesh", "segmentation", "align", "parse", "png"), 0.0)
    for frame in frames:
        t = time.perf_counter()
        face = analyzer.faces(frame)[0]
        spent["face mesh"] += time.perf_counter() - t
        t = time.perf_counter()
        person = analyzer.person(frame)
        spent["segmentation"] += time.perf_counter() - t
        t = time.perf_counter()
        aligned = align_face(frame, face, person, size)
        spent["align"] += time.perf_counter() - t
        t = time.perf_counter()
        parsing = parser(aligned.image, aligned.landmarks, aligned.person)
        spent["parse"] += time.perf_counter() - t
        t = time.perf_counter()
        for array in (aligned.image, np.asarray(parsing, np.uint8)):
            Image.fromarray(array).save(io.BytesIO(), format="PNG", compress_level=1)  # as faces.py
        spent["png"] += time.perf_counter() - t
    analyzer.close()
    return {k: 1000 * v / len(frames) for k, v in spent.items()}


def main() -> None:
    from domainfm.sample_data import sample_path

    photos = sample_path("face_security/london_faces")
    OUT.mkdir(parents=True, exist_ok=True)
    archive = OUT / "photos"
    for copy in ("a", "b", "c"):
        for expression in ("neutral", "smiling"):
            shutil.copytree(photos / expression, archive / copy / expression, dirs_exist_ok=True)
    rates = whole_runs(archive, 224)
    per_stage = stages(photos, 224)
    print("\n| workers | faces/s | faces/s per core |\n|---|---|---|")
    for workers, rate in rates.items():
        print(f"| {workers} | {rate:.1f} | {rate / workers:.1f} |")
    total = sum(per_stage.values())
    print("\n| stage (1 process, 224 px) | ms per face | share |\n|---|---|---|")
    for name, ms in per_stage.items():
        print(f"| {name} | {ms:.1f} | {ms / total:.0%} |")
    print(f"| total | {total:.1f} | |")
    (OUT / "results.json").write_text(json.dumps({"faces_per_s": rates, "ms_per_face": per_stage}, indent=1))


if __name__ == "__main__":
    main()
