"""Chips of scenes as an index of windows (no copies of the rasters): ``domainfm chips data.root=<scenes> out=<dir>``.

Per scene: a grid of ``size`` px windows (``size_m`` metres at the scene grid's GSD), ``stride`` apart (or, with
``mode="random"``, ``count`` windows drawn uniformly, reproducibly per scene), on the grid of
:class:`~domainfm.remote_sensing.scenes.SceneReader`; a window is kept when at most ``max_invalid`` of its
pixels are invalid: Sentinel-2 SCL classes in ``invalid_classes`` (no data, defective, cloud shadow, clouds,
cirrus by default), Landsat 8/9 QA_PIXEL bits in ``qa_invalid_bits`` (fill, dilated cloud, cirrus, cloud, cloud
shadow by default) or, without either, the first band's nodata. Each kept chip records its valid fraction and its
majority valid SCL class (a weak land-cover label: vegetation, not vegetated, water, snow ...).

Outputs under ``out``: ``scenes/<scene>.json`` (bands with wavelengths and files, the grid, the parameters),
``index/<scene>.csv`` (row, col, size, valid, scl_class), ``chips.csv`` (all scenes), ``summary.json``, and with
``write`` a copy of every kept chip under ``files/<scene>/<row>_<col>.npy|tif``. Done scenes
are skipped on a rerun (resume); scenes done with other parameters are an error unless ``overwrite``. An unreadable
scene is skipped, counted and named; nothing already written is lost.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from domainfm.common.jobs import run_jobs, worker_count
from domainfm.engine.checkpoint import atomic_write_bytes
from domainfm.errors import ConfigError, DataError
from domainfm.remote_sensing.bands import QA_INVALID_BITS, SCL_CLASSES, SCL_INVALID
from domainfm.remote_sensing.scenes import Scene, SceneReader, find_scenes

INDEX_COLUMNS = ("row", "col", "size", "valid", "scl_class")


@dataclass
class ChipParams:
    size: int | None = 64  # chip side in pixels of the scene grid
    size_m: float | None = None  # or in metres (wins over size)
    stride: int | None = None  # pixels between chip origins (default: size, no overlap)
    gsd: float | None = None  # metres per pixel of the grid (default: the scene's finest band)
    max_invalid: float = 0.1  # largest fraction of invalid (cloud, shadow, nodata) pixels in a kept chip
    invalid_classes: list[int] = field(default_factory=lambda: list(SCL_INVALID))
    qa_invalid_bits: list[int] = field(default_factory=lambda: list(QA_INVALID_BITS))  # Landsat QA_PIXEL
    mode: str = "grid"  # grid: every stride px; random: `count` uniformly drawn windows per scene
    count: int | None = None  # random mode: windows drawn per scene (before the validity filter)
    seed: int = 0  # random mode: the draw of a scene depends on this and the scene's name only
    write: str | None = None  # also copy each kept chip: npy ((C, H, W) float32) or tif (GeoTIFF with CRS)

    def validate(self) -> None:
        if self.size_m is None and (self.size is None or self.size < 1):
            raise ConfigError(f"chips.size={self.size}: give a chip side of at least 1 px, or chips.size_m=<metres>")
        if self.size_m is not None and self.size_m <= 0:
            raise ConfigError(f"chips.size_m={self.size_m}: must be > 0")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"chips.stride={self.stride}: must be >= 1 px")
        if self.mode not in ("grid", "random"):
            raise ConfigError(f"chips.mode={self.mode!r}: use grid or random")
        if self.mode == "random" and (self.count is None or self.count < 1):
            raise ConfigError("chips.mode=random needs chips.count=<windows per scene> (at least 1)")
        if self.write not in (None, "npy", "tif"):
            raise ConfigError(f"chips.write={self.write!r}: use null (an index only), npy or tif")
        if not 0 <= self.max_invalid <= 1:
            raise ConfigError(f"chips.max_invalid={self.max_invalid}: a fraction in [0, 1]")

    def size_px(self, gsd: float) -> int:
        return max(1, round(self.size_m / gsd)) if self.size_m is not None else int(self.size)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SceneResult:
    name: str
    source: str
    status: str  # "chipped" | "done" | "failed"
    chips: int = 0
    candidates: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ChipsSummary:
    out: str
    params: dict
    scenes: list[SceneResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chips(self) -> int:
        return sum(s.chips for s in self.scenes)

    @property
    def failed(self) -> list[SceneResult]:
        return [s for s in self.scenes if s.status == "failed"]

    def to_dict(self) -> dict:
        return {"out": self.out, "params": self.params, "chips": self.chips, "seconds": round(self.seconds, 2),
                "scenes": [asdict(s) for s in self.scenes]}  # fmt: skip

    def render(self) -> str:
        by = {k: sum(s.status == k for s in self.scenes) for k in ("chipped", "done", "failed")}
        candidates = sum(s.candidates for s in self.scenes if s.status == "chipped")
        kept = sum(s.chips for s in self.scenes if s.status == "chipped")
        lines = [
            f"out            {self.out}",
            f"scenes         {len(self.scenes)}: {by['chipped']} chipped, {by['done']} already done, "
            f"{by['failed']} skipped (unreadable)",
            f"chips          {self.chips}"
            + (
                f" ({kept} of {candidates} windows kept in this run; the rest had more than "
                f"{self.params['max_invalid']:.0%} cloud/shadow/nodata)"
                if by["chipped"]
                else ""
            ),
            f"time           {self.seconds:.1f} s",
        ]
        lines += [f"  skipped {s.name}: {s.error}" for s in self.failed]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- one scene
def chip_windows(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """``(n, 2)`` (row, col) origins of the windows that fit inside the grid."""
    rows, cols = np.arange(0, height - size + 1, stride), np.arange(0, width - size + 1, stride)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def random_windows(height: int, width: int, size: int, count: int, seed: int, scene: str) -> np.ndarray:
    """``(count, 2)`` origins drawn uniformly among the windows that fit, sorted; reproducible per scene (seeded
    by ``seed`` and the scene's name, so adding scenes to an archive leaves the others' chips unchanged)."""
    if height < size or width < size:
        return np.zeros((0, 2), np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
    origins = np.stack([rng.integers(0, height - size + 1, count), rng.integers(0, width - size + 1, count)], -1)
    return origins[np.lexsort((origins[:, 1], origins[:, 0]))]


def window_stats(invalid: np.ndarray, classes: np.ndarray | None, origins: np.ndarray, size: int):
    """Valid fraction and majority valid SCL class (-1: none, or no SCL) of each window."""
    valid = np.empty(len(origins))
    majority = np.full(len(origins), -1, np.int64)
    for i, (r, c) in enumerate(origins):
        bad = invalid[r : r + size, c : c + size]
        valid[i] = 1.0 - bad.mean()
        if classes is not None and valid[i] > 0:
            counts = np.bincount(classes[r : r + size, c : c + size][~bad], minlength=len(SCL_CLASSES))
            majority[i] = int(np.argmax(counts))
    return valid, majority


def chip_scene(scene: Scene, out_dir: str | Path, params: ChipParams) -> SceneResult:
    """Index the chips of one scene (writes ``scenes/<name>.json`` and ``index/<name>.csv``)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with SceneReader(scene, gsd=params.gsd) as reader:
        grid = reader.grid
        size = params.size_px(grid.gsd)
        if params.mode == "random":
            origins = random_windows(grid.height, grid.width, size, int(params.count), params.seed, scene.name)
        else:
            origins = chip_windows(grid.height, grid.width, size, params.stride or size)
        classes = reader.read_mask()
        if classes is not None and scene.mask_kind == "landsat_qa":  # bit flags: no classes, invalid by bits
            flags = sum(1 << b for b in params.qa_invalid_bits)
            invalid, classes = (classes.astype(np.int64) & flags) != 0, None
        elif classes is not None:
            invalid = np.isin(classes, params.invalid_classes)
        else:
            invalid = reader.read_nodata()
        valid, majority = window_stats(invalid, classes, origins, size)
        keep = valid >= 1.0 - params.max_invalid - 1e-9
        if params.write:
            write_chip_files(reader, origins[keep], size, out_dir / "files" / scene.name, params.write)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(INDEX_COLUMNS)
    for (r, c), v, m in zip(origins[keep], valid[keep], majority[keep]):
        writer.writerow((int(r), int(c), size, f"{v:.4f}", int(m)))
    info = {"scene": scene.to_dict(), "grid": grid.to_dict(), "params": params.to_dict(), "chip_px": size}
    atomic_write_bytes(buf.getvalue().encode(), out_dir / "index" / f"{scene.name}.csv")
    atomic_write_bytes(json.dumps(info, indent=2).encode(), out_dir / "scenes" / f"{scene.name}.json")
    return SceneResult(
        scene.name, scene.source, "chipped", int(keep.sum()), len(origins), None, time.perf_counter() - t0
    )


def write_chip_files(reader: SceneReader, origins: np.ndarray, size: int, folder: Path, fmt: str) -> None:
    """``<folder>/<row>_<col>.npy|tif``: each chip's bands on the scene grid, float32 (GeoTIFF: CRS, the chip's
    transform, band names as descriptions). Each file is written atomically; a rerun rewrites the scene's files."""
    import os

    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    grid = Affine(*reader.grid.transform)
    names = [b.name for b in reader.bands]
    for r, c in origins:
        chip = reader.read(int(r), int(c), size)
        path = folder / f"{int(r)}_{int(c)}.{fmt}"
        tmp = path.with_name(f".{path.name}.tmp")
        if fmt == "npy":
            with tmp.open("wb") as f:
                np.save(f, chip)
        else:
            profile = {"driver": "GTiff", "width": size, "height": size, "count": len(names), "dtype": "float32",
                       "crs": reader.grid.crs, "transform": grid @ Affine.translation(int(c), int(r))}  # fmt: skip
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(chip)
                dst.descriptions = tuple(names)
        os.replace(tmp, path)


def _run(scene: Scene, out_dir: str, params: ChipParams) -> SceneResult:
    """Worker entry: a bad scene comes back as a one-line error instead of raising."""
    t0 = time.perf_counter()
    try:
        return chip_scene(scene, out_dir, params)
    except (DataError, OSError, ValueError, RuntimeError, MemoryError) as err:
        message = " ".join((str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}").split())
        return SceneResult(scene.name, scene.source, "failed", error=message[:300], seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- an archive
def chip_scenes(
    root: str | Path,
    out_dir: str | Path,
    params: ChipParams | None = None,
    workers: int | str = "auto",
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> ChipsSummary:
    """Chip every scene under ``root`` in ``workers`` processes; see the module docstring."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    params = params or ChipParams()
    params.validate()
    out_dir = Path(out_dir)
    scenes = find_scenes(root, exclude=out_dir.resolve())
    if not scenes:
        raise DataError(f"data.root={root}: no scene found (per-band B01..B12 files, STAC items or GeoTIFFs)")
    summary = ChipsSummary(str(out_dir), params.to_dict())
    todo = _skip_done(scenes, out_dir, params, overwrite, summary)
    n = worker_count(workers, len(todo))
    bar = tqdm(total=len(scenes), initial=len(scenes) - len(todo), disable=not progress, desc="chips", unit="scene")

    def record(result: SceneResult) -> None:
        if result.status == "failed" and strict:
            raise DataError(f"{result.error} (data.strict=true stops at the first unreadable scene)")
        summary.scenes.append(result)
        bar.update(1)
        bar.set_postfix(chips=summary.chips)

    try:
        run_jobs(_run, todo, (str(out_dir), params), n, record)
    finally:
        bar.close()
    order = {s.name: i for i, s in enumerate(scenes)}
    summary.scenes.sort(key=lambda r: order.get(r.name, len(order)))
    write_chip_list(out_dir, [s.name for s in summary.scenes if s.status != "failed"])
    summary.seconds = time.perf_counter() - t0
    atomic_write_bytes(json.dumps(summary.to_dict(), indent=2).encode(), out_dir / "summary.json")
    return summary


def _skip_done(
    scenes: list[Scene], out_dir: Path, params: ChipParams, overwrite: bool, summary: ChipsSummary
) -> list[Scene]:
    todo, stale = [], []
    for scene in scenes:
        info_path, index = out_dir / "scenes" / f"{scene.name}.json", out_dir / "index" / f"{scene.name}.csv"
        if not (info_path.is_file() and index.is_file()):
            todo.append(scene)
            continue
        old = json.loads(info_path.read_text())["params"]
        changed = [k for k, v in params.to_dict().items() if old.get(k) != v]
        if not changed:
            n = sum(1 for _ in index.open()) - 1
            summary.scenes.append(SceneResult(scene.name, scene.source, "done", n))
        elif overwrite:
            todo.append(scene)
        else:
            stale.append((scene, changed))
    if stale:
        scene, keys = stale[0]
        raise DataError(
            f"out={out_dir} holds chips of {len(stale)} scene(s) made with other parameters "
            f"(e.g. {scene.name}: {', '.join(keys)} changed); use a new out= or overwrite=true"
        )
    return todo


def write_chip_list(out_dir: Path, names: list[str]) -> Path:
    """``chips.csv``: every chip of the named scenes, with its scene name and SCL class name."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(("scene", *INDEX_COLUMNS, "scl_name"))
    for name in names:
        with (out_dir / "index" / f"{name}.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                cls = int(row["scl_class"])
                writer.writerow((name, *(row[k] for k in INDEX_COLUMNS), SCL_CLASSES.get(cls, "") if cls >= 0 else ""))
    path = out_dir / "chips.csv"
    atomic_write_bytes(buf.getvalue().encode(), path)
    return path
