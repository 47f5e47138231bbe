"""Whole-slide images -> tissue contours, an overlay PNG and tile coordinates at a chosen MPP, one slide or a batch.

Per slide, under ``out``: ``patches/<slide>.h5`` (TRIDENT/CLAM layout, see :mod:`domainfm.pathology.h5io`),
``contours_geojson/<slide>.geojson`` (opens in QuPath) and ``overlays/<slide>.png``. The ``.h5`` is written last and
atomically, so its presence means the slide is done; a rerun skips it, and one made with other parameters is
reported instead of being reused. A batch ends with ``summary.json`` and a readable summary.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from domainfm.common.jobs import run_jobs, worker_count
from domainfm.errors import ConfigError, DataError
from domainfm.pathology.geojson import read_geojson, write_geojson
from domainfm.pathology.h5io import atomic_output, changed_keys, read_coords, read_params, write_h5
from domainfm.pathology.overlay import MAX_SIDE, draw_overlay
from domainfm.pathology.slide import SLIDE_EXTENSIONS, Slide, open_slide, slide_name
from domainfm.pathology.tissue import TissueParams, detect_tissue, mask_to_polygons, rasterize, tile_tissue_fraction
from domainfm.reports.text import skipped_lines
from PIL import Image


@dataclass(frozen=True)
class TilingParams:
    """The tile grid. ``tile_px`` is the tile side in pixels at ``target_mpp`` (default 256 px at 0.5 um/px = 20x,
    UNI's pretraining setting); ``tile_um`` (if set) gives it in micrometres instead. ``overlap`` is in pixels at
    the target MPP. ``min_tissue``: the fraction of a tile that must be tissue (TRIDENT's default 0 keeps any tile
    touching tissue; 0.3 drops weak edge tiles that cost pretraining steps)."""

    target_mpp: float = 0.5
    tile_px: int = 256
    tile_um: float | None = None
    overlap: int = 0
    min_tissue: float = 0.3

    @property
    def size_px(self) -> int:
        return max(1, round(self.tile_um / self.target_mpp)) if self.tile_um else int(self.tile_px)

    def validate(self) -> None:
        if self.target_mpp <= 0:
            raise ConfigError(f"tiling.target_mpp={self.target_mpp} must be > 0 (0.5 um/px is about 20x)")
        if not 0 <= self.overlap < self.size_px:
            raise ConfigError(f"tiling.overlap={self.overlap} must be >= 0 and below the tile size {self.size_px} px")
        if not 0 <= self.min_tissue <= 1:
            raise ConfigError(f"tiling.min_tissue={self.min_tissue} must be a fraction in [0, 1]")

    def to_dict(self) -> dict:
        return {**asdict(self), "size_px": self.size_px}


@dataclass(frozen=True)
class SlideJob:
    """One slide to tile: its file, an MPP fallback (``data.mpp`` / the list's column) and an optional GeoJSON of
    hand-drawn tissue that replaces detection."""

    path: Path
    mpp: float | None = None
    geojson: Path | None = None

    @property
    def name(self) -> str:
        return slide_name(self.path)


@dataclass
class SlideResult:
    name: str
    path: str
    status: str  # tiled | done | failed
    tiles: int = 0
    error: str | None = None
    seconds: float = 0.0
    stale: list[str] = field(default_factory=list)  # an earlier run's outputs of a slide that failed now, moved


@dataclass
class TilingSummary:
    out_dir: str
    slides: list[SlideResult] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.slides)

    @property
    def tiles(self) -> int:
        return sum(r.tiles for r in self.slides)

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.slides if r.status == "failed"]

    @property
    def no_tissue(self) -> list[str]:
        return [r.name for r in self.slides if r.status != "failed" and r.tiles == 0]

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "params": self.params,
            "seconds": self.seconds,
            "tiles": self.tiles,
            "slides": [asdict(r) for r in self.slides],
        }

    def render(self) -> str:
        tiling = self.params.get("tiling", {})
        lines = [
            f"out            {self.out_dir}  (patches/*.h5, contours_geojson/, overlays/*.png)",
            f"slides         {len(self.slides)}: {self.count('tiled')} tiled, {self.count('done')} already done, "
            f"{len(self.failed)} skipped",
            f"tiles          {self.tiles:,} of {tiling.get('size_px')} px at {tiling.get('target_mpp')} um/px "
            f"(overlap {tiling.get('overlap')} px, min tissue {tiling.get('min_tissue')})",
            f"time           {self.seconds:.1f} s",
        ]
        if self.no_tissue:
            lines.append(f"no tissue      {len(self.no_tissue)}: {', '.join(self.no_tissue[:10])}")
        stale = [r.name for r in self.failed if r.stale]
        if stale:
            where = Path(self.out_dir) / "stale"
            lines.append(f"stale outputs  {len(stale)} failed slide(s) had earlier tiles, moved to {where}: {stale[0]}")
        return "\n".join(lines + skipped_lines([r.error for r in self.failed]))


# ---------------------------------------------------------------------------------------------- finding slides
def find_slides(
    root: str | Path, extensions: Sequence[str] = SLIDE_EXTENSIONS, exclude: Path | None = None
) -> list[Path]:
    """Slide files under ``root`` (recursive, sorted). A DICOM series folder counts once; the JPEG pieces beside a
    Hamamatsu ``.vms``/``.vmu`` index are not slides of their own."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data.root={root} does not exist: point data.root at a folder of slides")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())
    files = [p for p in files if not p.name.startswith(".")]
    if exclude is not None:
        exclude = exclude.resolve()
        files = [p for p in files if exclude not in p.resolve().parents]
    vms_dirs = {p.parent for p in files if p.suffix.lower() in (".vms", ".vmu")}
    seen_dicom: set[Path] = set()
    slides = []
    for p in files:
        if p.parent in vms_dirs and p.suffix.lower() not in (".vms", ".vmu"):
            continue
        if p.suffix.lower() == ".dcm":
            if p.parent in seen_dicom:
                continue
            seen_dicom.add(p.parent)
        slides.append(p)
    if not slides:
        raise DataError(f"data.root={root} holds no slides ({', '.join(exts)}): point data.root at your slides")
    return slides


def read_slide_list(csv_path: str | Path, root: str | Path | None = None) -> list[SlideJob]:
    """Slides from a CSV with a ``path`` (or ``slide``/``wsi``) column, relative to ``root`` (default: the CSV's
    folder), and an optional ``mpp`` column (used when a slide's metadata has no MPP)."""
    csv_path = Path(csv_path)
    base = Path(root) if root is not None and Path(root).is_dir() else csv_path.parent
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise DataError(f"data.csv={csv_path} cannot be read ({err})") from err
    column = next((c for c in ("path", "slide", "wsi") if rows and c in rows[0]), None)
    if column is None:
        raise DataError(f"data.csv={csv_path} needs a 'path' column (and optionally 'mpp'); found {list(rows[:1])}")
    jobs = []
    for row in rows:
        path = Path(row[column])
        mpp = (row.get("mpp") or "").strip()
        try:
            jobs.append(SlideJob(path if path.is_absolute() else base / path, float(mpp) if mpp else None))
        except ValueError as err:
            raise DataError(f"data.csv={csv_path}: mpp {mpp!r} of {path} is not a number") from err
    return jobs


def _check_unique(jobs: Iterable[SlideJob]) -> None:
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.name in seen:
            raise DataError(f"two slides are both named {job.name!r} ({seen[job.name]}, {job.path}); rename one")
        seen[job.name] = job.path


# ---------------------------------------------------------------------------------------------- one slide
def slide_params(job: SlideJob, tiling: TilingParams, tissue: TissueParams) -> dict:
    """What determines a slide's outputs, stored in its ``.h5`` and compared on reruns; the MPP is compared
    separately (:func:`changed_mpp`): a fallback MPP matters only to slides that used it."""
    geojson = hashlib.sha1(job.geojson.read_bytes()).hexdigest() if job.geojson else None
    return {
        "tiling": tiling.to_dict(),
        "tissue": tissue.to_dict(),
        "tissue_geojson_sha1": geojson,
        "slide_bytes": job.path.stat().st_size if job.path.exists() else None,
    }


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "h5": out_dir / "patches" / f"{name}.h5",
        "geojson": out_dir / "contours_geojson" / f"{name}.geojson",
        "overlay": out_dir / "overlays" / f"{name}.png",
    }


def set_aside_outputs(out_dir: str | Path, name: str) -> list[str]:
    """A slide that fails now must not leave the outputs of an earlier run beside the new ones (they would be read
    as this run's tiles): move them to ``<out>/stale/`` (kept, never deleted) and return where they went."""
    moved = []
    for kind, path in output_paths(out_dir, name).items():
        if path.exists():
            dest = Path(out_dir) / "stale" / kind / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            path.replace(dest)
            moved.append(str(dest))
    return moved


def grid(width: int, height: int, size0: int, step0: int) -> np.ndarray:
    """Top-left corners (level 0) of a regular grid whose tiles start inside the slide, row by row."""
    ys, xs = np.meshgrid(np.arange(0, height, step0), np.arange(0, width, step0), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def tile_slide(
    job: SlideJob | str | Path,
    out_dir: str | Path,
    tiling: TilingParams | None = None,
    tissue: TissueParams | None = None,
) -> SlideResult:
    """Detect tissue, lay the grid and write the slide's ``.h5``, GeoJSON and overlay. Raises :class:`DataError`
    for an unreadable slide or a missing MPP."""
    job = job if isinstance(job, SlideJob) else SlideJob(Path(job))
    tiling, tissue = tiling or TilingParams(), tissue or TissueParams()
    t0 = time.perf_counter()
    tiling.validate()
    params = slide_params(job, tiling, tissue)
    paths = output_paths(out_dir, job.name)
    with open_slide(job.path, mpp=job.mpp) as slide:
        width, height = slide.dimensions
        scale = slide.level0_scale(tiling.target_mpp)
        size0 = max(1, round(tiling.size_px * scale))
        step0 = max(1, size0 - round(tiling.overlap * scale))
        thumb, seg = _thumbnails(slide, tissue.seg_mpp, tissue.max_side)
        seg_scale = (width / seg.shape[1], height / seg.shape[0])
        if job.geojson is not None:
            polygons = read_geojson(job.geojson)
            mask = rasterize(polygons, seg.shape[:2], seg_scale)
        else:
            mask = detect_tissue(seg, slide.mpp * seg_scale[0], tissue)
            polygons = mask_to_polygons(mask, seg_scale)
        coords = grid(width, height, size0, step0)
        fraction = tile_tissue_fraction(mask, coords, size0, seg_scale)
        keep = (fraction >= tiling.min_tissue) & (fraction > 0)
        coords, fraction = coords[keep], fraction[keep]
        attrs = {
            "patch_size": tiling.size_px,
            "patch_size_level0": size0,
            "level0_magnification": slide.magnification,
            "target_magnification": max(1, round(10.0 / tiling.target_mpp)),
            "target_mpp": float(tiling.target_mpp),
            "overlap": int(tiling.overlap),
            "level0_width": width,
            "level0_height": height,
            "level0_mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "name": job.name,
            "savetodir": str(out_dir),  # TRIDENT's attribute: the job folder
        }
    with atomic_output(paths["geojson"]) as tmp:
        write_geojson(polygons, tmp)
    caption = f"{job.name}  {len(coords)} tiles  {tiling.size_px} px @ {tiling.target_mpp} um/px"
    thumb_scale = (width / thumb.shape[1], height / thumb.shape[0])
    with atomic_output(paths["overlay"]) as tmp:
        draw_overlay(thumb, thumb_scale, polygons, coords, size0, caption, tmp)
    datasets = {"coords": coords, "tissue_fraction": fraction.astype(np.float32)}
    write_h5(paths["h5"], datasets, attrs, params)
    return SlideResult(job.name, str(job.path), "tiled", int(len(coords)), seconds=time.perf_counter() - t0)


def _thumbnails(slide: Slide, seg_mpp: float, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """One read from the pyramid: the overlay thumbnail (longest side about :data:`MAX_SIDE`, never finer than
    level 0) and the segmentation thumbnail at ``seg_mpp`` (coarser when its longest side would pass ``max_side``;
    resized from the overlay thumbnail when that is finer)."""
    long_um = max(slide.dimensions) * slide.mpp
    seg_mpp = max(seg_mpp, long_um / max_side)
    read_mpp = min(seg_mpp, max(slide.mpp, long_um / MAX_SIDE))
    thumb = slide.thumbnail(read_mpp)
    if math.isclose(read_mpp, seg_mpp):
        return thumb, thumb
    width, height = slide.dimensions
    size = (max(1, round(width * slide.mpp / seg_mpp)), max(1, round(height * slide.mpp / seg_mpp)))
    seg = np.asarray(Image.fromarray(thumb).resize(size, Image.Resampling.BOX))
    return thumb, seg


def _run_job(job: SlideJob, out_dir: str, tiling: TilingParams, tissue: TissueParams) -> SlideResult:
    """Worker entry: never raises for a bad slide; the failure comes back as a one-line ``error``."""
    t0 = time.perf_counter()
    try:
        return tile_slide(job, out_dir, tiling, tissue)
    except (DataError, OSError, ValueError, RuntimeError, MemoryError) as err:
        message = str(err) if isinstance(err, DataError) else f"{job.path}: {type(err).__name__}: {err}"
        message = " ".join(message.split())
        return SlideResult(job.name, str(job.path), "failed", error=message[:300], seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- a batch
def tile_slides(
    slides: str | Path | Sequence[str | Path | SlideJob],
    out_dir: str | Path,
    tiling: TilingParams | None = None,
    tissue: TissueParams | None = None,
    mpp: float | None = None,
    csv_path: str | Path | None = None,
    geojson_dir: str | Path | None = None,
    extensions: Sequence[str] | None = None,
    workers: int | str = "auto",
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> TilingSummary:
    """Tile every slide of a folder, a file, a list or a CSV (``csv_path``), in ``workers`` processes.

    ``mpp`` is the fallback MPP for slides without one (a CSV ``mpp`` column wins over it). ``geojson_dir``
    holds hand-drawn tissue as ``<slide>.geojson`` that replaces detection for those slides. Done slides are
    skipped; slides done with other parameters raise a :class:`DataError` listing what changed, unless
    ``overwrite``. Unreadable slides are skipped and listed (``strict`` raises on the first instead).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    tiling, tissue = tiling or TilingParams(), tissue or TissueParams()
    tiling.validate()
    out_dir = Path(out_dir)
    jobs = _jobs(slides, out_dir, mpp, csv_path, geojson_dir, extensions or SLIDE_EXTENSIONS)
    summary = TilingSummary(str(out_dir), params={"tiling": tiling.to_dict(), "tissue": tissue.to_dict()})
    todo = _skip_done(jobs, out_dir, tiling, tissue, overwrite, summary)
    n_workers = worker_count(workers, len(todo))
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), disable=not progress, desc="tile", unit="slide")
    bar.set_postfix(tiles=summary.tiles)

    def record(result: SlideResult) -> None:
        if result.status == "failed":
            result.stale = set_aside_outputs(out_dir, result.name)
        if result.status == "failed" and strict:
            raise DataError(f"{result.error} (data.strict=true stops at the first unreadable slide)")
        summary.slides.append(result)
        bar.update(1)
        bar.set_postfix(tiles=summary.tiles)

    try:
        run_jobs(_run_job, todo, (str(out_dir), tiling, tissue), n_workers, record)
    finally:
        bar.close()
    order = {job.name: i for i, job in enumerate(jobs)}
    summary.slides.sort(key=lambda r: order.get(r.name, len(order)))
    summary.seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def _jobs(
    slides: Any,
    out_dir: Path,
    mpp: float | None,
    csv_path: str | Path | None,
    geojson_dir: str | Path | None,
    extensions: Sequence[str],
) -> list[SlideJob]:
    if csv_path is not None:
        jobs = read_slide_list(csv_path, slides if isinstance(slides, (str, Path)) else None)
        jobs = [SlideJob(j.path, j.mpp if j.mpp is not None else mpp) for j in jobs]
    elif isinstance(slides, (str, Path)):
        jobs = [SlideJob(p, mpp) for p in find_slides(slides, extensions, exclude=out_dir)]
    else:
        jobs = [s if isinstance(s, SlideJob) else SlideJob(Path(s), mpp) for s in slides]
    if geojson_dir is not None:
        folder = Path(geojson_dir)
        if not folder.is_dir():
            raise DataError(f"tissue.geojson_dir={folder} is not a folder of <slide>.geojson files")
        jobs = [SlideJob(j.path, j.mpp, _or_none(folder / f"{j.name}.geojson")) for j in jobs]
    _check_unique(jobs)
    return jobs


def _or_none(path: Path) -> Path | None:
    return path if path.is_file() else None


def _skip_done(
    jobs: list[SlideJob],
    out_dir: Path,
    tiling: TilingParams,
    tissue: TissueParams,
    overwrite: bool,
    summary: TilingSummary,
) -> list[SlideJob]:
    """Jobs still to run; done ones go into ``summary``. Outputs made with other parameters are an error (naming
    the first slide and what changed) unless ``overwrite``."""
    todo, stale = [], []
    for job in jobs:
        h5 = output_paths(out_dir, job.name)["h5"]
        if not h5.exists():
            todo.append(job)
            continue
        old = read_params(h5)
        changed = None if old is None else changed_keys(old, slide_params(job, tiling, tissue)) + changed_mpp(job, h5)
        if changed == []:
            summary.slides.append(SlideResult(job.name, str(job.path), "done", len(read_coords(h5)[0])))
        elif overwrite or changed is None:
            todo.append(job)
        else:
            stale.append((job, changed))
    if stale:
        job, keys = stale[0]
        raise DataError(
            f"out={out_dir} holds tiles of {len(stale)} slide(s) made with other parameters "
            f"(e.g. {job.name}: {', '.join(keys[:6])} changed); use a new out= or overwrite=true"
        )
    return todo


def changed_mpp(job: SlideJob, h5: Path) -> list[str]:
    """``["mpp"]`` when the slide was tiled with a fallback MPP (``data.mpp`` / the list's column) other than the
    one given now; an MPP read from the slide's metadata does not depend on the fallback."""
    _, attrs = read_coords(h5)
    if attrs.get("mpp_source") == "override" and job.mpp != attrs.get("level0_mpp"):
        return ["mpp"]
    return []
