"""Index a dump of DICOM series (and NIfTI / NRRD volumes) once: a manifest of series and, optionally, a decoded
cache of canonical volumes at a target spacing, so the archive is decoded once.

Layout of ``out``::

    manifest.csv          one row per series: id, modality, body_part, shape, spacing, orientation, slices,
                          status (ok | warning | failed), reason, volume (cache file, relative)
    series/<id>.json      the row and the series' files (relative to data.root) with frame numbers: resume + read
    volumes/<id>.nii.gz   the cache (``index.cache=true``): RAS, ``index.spacing`` voxels, float32 / int16
                          (``index.format=nii``: uncompressed, read lazily slice by slice)
    summary.json          counts per status, skipped objects per kind, unreadable files (relative paths)

Series ids are :func:`~domainfm.medical.dicom.series_id` (a hash of SeriesInstanceUID; for NIfTI / NRRD, of the
path relative to data.root): no patient name, id, birth date, accession number, institution, physician, date or
UID is written anywhere (the NIfTI cache carries only voxels and the affine). File paths are written relative to
data.root, as they are in the dump. Headers are read in ``workers`` processes, then series are assembled in
parallel; a rerun skips the series whose ``series/<id>.json`` was written with the same parameters (atomic
writes: nothing already written is lost by a kill)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from domainfm.common.jobs import run_jobs, worker_count
from domainfm.engine.checkpoint import atomic_write_bytes
from domainfm.errors import DataError
from domainfm.medical.dicom import Skipped, read_series, read_slices, series_geometry
from domainfm.medical.readers import NIFTI, NRRD, read_volume
from domainfm.medical.volume import Volume

MANIFEST_COLUMNS = ["id", "modality", "body_part", "shape", "spacing", "orientation", "slices", "status", "reason",
                    "volume"]  # fmt: skip


@dataclass
class IndexParams:
    cache: bool = False  # write volumes/<id>.nii.gz
    spacing: list[float] | None = None  # cache voxel size (mm); None: as acquired
    resample: bool = False  # gaps / irregular spacing / tilt -> regular orthogonal grid (else: warned, read as is)
    frame: int | None = None  # 4D NIfTI: the frame to take (None: such files fail with the reason)
    format: str = "nii.gz"  # cache files: nii.gz (small) | nii (uncompressed: slices and patches read lazily)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IndexSummary:
    out: str
    params: dict
    rows: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)  # "relative/path: reason"
    done_before: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    def to_dict(self) -> dict:
        return {"out": self.out, "params": self.params, "series": len(self.rows),
                "status": {s: self.count(s) for s in ("ok", "warning", "failed")}, "done_before": self.done_before,
                "skipped_objects": dict(self.skipped), "unreadable": self.unreadable,
                "seconds": round(self.seconds, 2)}  # fmt: skip

    def render(self) -> str:
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())) or "none"
        lines = [
            f"out            {self.out}",
            f"series         {len(self.rows)}: {self.count('ok')} ok, {self.count('warning')} with warnings, "
            f"{self.count('failed')} not assembled ({self.done_before} indexed before)",
            f"skipped        {skipped}",
            f"time           {self.seconds:.1f} s",
        ]
        lines += [f"  {r['id']} {r['status']}: {r['reason']}" for r in self.rows if r["status"] != "ok"]
        lines += [f"  unreadable {u}" for u in self.unreadable]
        return "\n".join(lines)


def list_inputs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Files under ``root`` (a folder, a DICOMDIR, or one file), the output folder excluded, sorted."""
    from domainfm.medical.dicom import dicomdir_files

    if root.is_file():
        return dicomdir_files(root) if root.name.upper() == "DICOMDIR" else [root]
    skip = exclude.resolve() if exclude is not None else None
    return sorted(p for p in root.rglob("*") if p.is_file() and (skip is None or skip not in p.resolve().parents))


def _headers(paths: list[str]) -> list:
    return [read_slices(p) for p in paths]


def _volume_id(root: Path, path: Path) -> str:
    return hashlib.sha256(str(path.relative_to(root)).encode()).hexdigest()[:16]


def _fmt(values) -> str:
    return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)


def _assemble(job: dict, out_dir: str, params: dict) -> dict:
    """One series (or volume file) -> its manifest row, writing the cache; failures come back as the row."""
    out, p = Path(out_dir), IndexParams(**params)
    row = {"id": job["id"], "modality": job.get("modality", ""), "body_part": job.get("body_part", ""),
           "shape": "", "spacing": "", "orientation": "", "slices": job.get("count", 1), "status": "ok",
           "reason": "", "volume": ""}  # fmt: skip
    try:
        if job["kind"] == "dicom":
            if p.cache:
                volume, geometry = read_series(job["slices"], job["id"], resample=p.resample)
            else:  # the manifest only: geometry from the headers, no pixels decoded
                geometry = series_geometry(job["slices"], job["id"])
                first = geometry.slices[0]
                shape = (first.cols, first.rows, len(geometry.slices))
                volume = Volume(np.broadcast_to(np.zeros((), np.int8), shape), geometry.affine).canonical()
            if geometry.warnings:
                resampled = " (resampled to a regular grid)" if p.cache and p.resample else ""
                row["status"], row["reason"] = "warning", "; ".join(geometry.warnings) + resampled
        else:
            volume = read_volume(job["path"], frame=p.frame)
        if p.spacing and p.cache:  # the cache's voxel size (no voxels to resample without a cache)
            from domainfm.medical.resample import resample_to_spacing

            volume = resample_to_spacing(volume, p.spacing)
        row["shape"], row["spacing"] = _fmt(volume.shape), _fmt([round(s, 4) for s in volume.spacing])
        row["orientation"] = volume.orientation
        if p.cache:
            row["volume"] = f"volumes/{job['id']}.{p.format}"
            write_nifti(volume, out / row["volume"], compress=p.format == "nii.gz")
    except (DataError, OSError, ValueError, RuntimeError, MemoryError, AttributeError, KeyError) as err:
        message = str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}"
        message = message.removeprefix(f"{job['id']}: ")  # the row names the series
        if job.get("path"):  # a volume file: named relative to data.root, as in the rest of the outputs
            message = message.replace(str(job["path"]), job["files"][0])
        row["status"], row["reason"], row["volume"] = "failed", " ".join(message.split())[:300], ""
    record = {"row": row, "params": params, "files": job["files"]}
    atomic_write_bytes(json.dumps(record).encode(), out / "series" / f"{job['id']}.json")
    return row


def write_nifti(volume, path: Path, compress: bool = True) -> None:
    """Voxels + affine only (empty description, no extensions): nothing but geometry leaves the dump."""
    import nibabel as nib

    img = nib.Nifti1Image(volume.array, volume.affine)
    img.header.set_xyzt_units("mm")
    buffer = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buffer})
    img.to_file_map(file_map)
    data = buffer.getvalue()
    atomic_write_bytes(gzip.compress(data, compresslevel=1) if compress else data, path)


def index_archive(
    root: str | Path,
    out_dir: str | Path,
    params: IndexParams | None = None,
    workers: int | str = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> IndexSummary:
    """Index ``root`` into ``out_dir``; see the module docstring."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    root, out = Path(root), Path(out_dir)
    params = params or IndexParams()
    if not root.exists():
        raise DataError(f"data.root={root}: no such folder or file")
    base = root.parent if root.is_file() else root
    files = list_inputs(root, exclude=out)
    if not files:
        raise DataError(f"data.root={root}: no files")
    summary = IndexSummary(str(out), params.to_dict())
    volumes = [f for f in files if f.name.lower().endswith(NIFTI + NRRD)]
    dicom = [str(f) for f in files if not f.name.lower().endswith(NIFTI + NRRD)]
    chunks = [dicom[i : i + 64] for i in range(0, len(dicom), 64)]
    n = worker_count(workers, len(chunks) or 1)
    bar = tqdm(total=len(dicom), disable=not progress, desc="headers", unit="file")
    by_series: dict[str, list] = {}

    def take(results: list) -> None:
        for got in results:
            if isinstance(got, Skipped):
                summary.skipped[got.kind] += 1
                if got.kind == "unreadable":
                    summary.unreadable.append(f"{Path(got.path).relative_to(base)}: {got.reason}")
            else:
                for s in got:
                    by_series.setdefault(s.series, []).append(s)
        bar.update(len(results))

    try:
        run_jobs(_headers, chunks, (), n, take)
    finally:
        bar.close()
    jobs = []
    for sid, slices in sorted(by_series.items()):
        rel = sorted({str(Path(s.path).relative_to(base)) for s in slices})
        jobs.append({"kind": "dicom", "id": sid, "slices": slices, "count": len(slices), "files": rel,
                     "modality": slices[0].modality, "body_part": slices[0].body_part})  # fmt: skip
    for f in volumes:
        jobs.append({"kind": "file", "id": _volume_id(base, f), "path": str(f), "files": [str(f.relative_to(base))]})
    todo = []
    for job in jobs:
        record_path = out / "series" / f"{job['id']}.json"
        if record_path.is_file() and not overwrite:
            record = json.loads(record_path.read_text())
            if record.get("params") == params.to_dict():
                summary.rows.append(record["row"])
                summary.done_before += 1
                continue
        todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), disable=not progress, desc="series", unit="series")

    def record_row(row: dict) -> None:
        summary.rows.append(row)
        bar.update(1)

    try:
        run_jobs(_assemble, todo, (str(out), params.to_dict()), worker_count(workers, len(todo) or 1), record_row)
    finally:
        bar.close()
    summary.rows.sort(key=lambda r: r["id"])
    write_manifest(summary.rows, out / "manifest.csv")
    summary.seconds = time.perf_counter() - t0
    atomic_write_bytes(json.dumps(summary.to_dict(), indent=2).encode(), out / "summary.json")
    return summary


def write_manifest(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(buffer.getvalue().encode(), path)
