"""Chip-reading throughput: domainfm's ChipDataset against torchgeo's RasterDataset + RandomGeoSampler.

What is measured, on the same Sentinel-2 L2A tile of Cloud-Optimised GeoTIFFs (12 bands B01..B12 + B8A at
100 / 200 / 600 m, EPSG:32629, uint16; default ``../shared/data/remote_sensing/sentinel2_l2a_29RKH``):

* domainfm: ``chip_scenes(tile, tmp, ChipParams(size=64, max_invalid=1.0, invalid_classes=[0]))`` indexes the
  64 px windows of the 100 m grid, then ``ChipDataset(tmp)`` reads ``--chips`` seeded random items, each a
  ``(12, 64, 64)`` float32 image (bands bilinear-resampled onto the 100 m grid by rasterio WarpedVRT).
* torchgeo: a ``RasterDataset`` subclass over the same 12 band files (``separate_files=True``, ``res=100``;
  torchgeo resamples the 200 m / 600 m bands itself, bilinear, through ``rasterio.merge``) sampled by
  ``RandomGeoSampler(size=64)`` (pixel units by default: 64 px = 6400 m at res 100), ``length=--chips``, and
  collated with ``torchgeo.datasets.stack_samples``.

Both go through a ``torch.utils.data.DataLoader`` with batch_size 32 and num_workers 0 and 2. Each configuration
runs in a fresh child process (so page cache aside, no state and no memory peak is shared), the two libraries
alternating and their order swapped every round; the median over ``--repeats`` rounds is reported. Per
configuration: chips/s over the whole epoch (iterator creation, worker start and file opening included), steady
chips/s (the first ``max(1, workers)`` batches left out), the peak RSS growth of the main process above its
level once the dataset is built, the summed RSS peak of main + workers (shared pages counted in each), and the
largest worker's peak RSS. Every batch is checked to be ``(B, 12, 64, 64)`` float32, and a few domainfm chips are
compared pixel for pixel with torchgeo reads of the same bounds. The files are small, so they sit in the page
cache after the first read: this measures the decode / resample / collate path, not the disk.

torchgeo is not a domainfm dependency and 0.10.1 declares Python >= 3.12; it is installed beside the venv:

    .venv/bin/pip install --target .bench/torchgeo --no-deps --ignore-requires-python torchgeo==0.10.1
    .venv/bin/pip install --target .bench/torchgeo --no-deps geopandas pandas pyogrio pyproj

and ``def convolution_arithmetic[T: (float, Timedelta)](`` in ``.bench/torchgeo/torchgeo/samplers/utils.py`` (the
one Python 3.12-only syntax it has; annotations only) is rewritten with plain ``float | Timedelta`` annotations.

Rerun (from the repository root; results in ``.bench/rs_chip_throughput/results.json``):

    PYTHONPATH=.bench/torchgeo .venv/bin/python benchmarks/rs_chip_throughput.py
    PYTHONPATH=.bench/torchgeo .venv/bin/python benchmarks/rs_chip_throughput.py --smoke   # 64 chips, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCHGEO_DIR = REPO / ".bench" / "torchgeo"
OUT_DIR = REPO / ".bench" / "rs_chip_throughput"
DEFAULT_TILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "remote_sensing" / "sentinel2_l2a_29RKH"
CHIP_PX, N_BANDS, GSD = 64, 12, 100.0
LIBS = ("domainfm", "torchgeo")


# ---------------------------------------------------------------------------------------------- torchgeo side
def import_torchgeo():
    try:
        import torchgeo  # noqa: F401
    except ImportError:
        if TORCHGEO_DIR.is_dir() and str(TORCHGEO_DIR) not in sys.path:
            sys.path.insert(0, str(TORCHGEO_DIR))
    try:
        import torchgeo
        import torchgeo.datasets
        import torchgeo.samplers
    except ImportError as err:
        raise SystemExit(f"torchgeo is not importable ({err}): install it as this module's docstring says") from err
    return torchgeo


def torchgeo_dataset(tile: Path, bands: list[str]):
    """A RasterDataset over ``<tile>/<band>.tif`` (the tile's files have no Sentinel-2 product names, so
    ``torchgeo.datasets.Sentinel2``'s ``T*_*_{band}*`` glob does not find them); same pattern as Sentinel2."""
    from torchgeo.datasets import RasterDataset

    class S2Bands(RasterDataset):
        filename_glob = "{}.tif"
        filename_regex = r"^(?P<band>B[018][\dA])\.tif$"
        separate_files = True
        all_bands = tuple(bands)
        rgb_bands = ("B04", "B03", "B02")

        def __init__(self, paths, bands=None, res=GSD, **kwargs):
            bands = bands or self.all_bands
            self.filename_glob = self.filename_glob.format(bands[0])
            super().__init__(paths, res=res, bands=bands, **kwargs)

    return S2Bands(str(tile), bands=bands, res=GSD)


# ---------------------------------------------------------------------------------------------- memory
class RssPeak:
    """Peak RSS of this process (and the summed RSS of it and its children) above a baseline, sampled."""

    def __init__(self, interval: float = 0.02):
        try:
            import psutil
        except ImportError:
            psutil = None
        self.psutil, self.interval = psutil, interval
        self.proc = psutil.Process() if psutil else None
        self.base = self._main()
        self.peak_main, self.peak_total = self.base, self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True) if psutil else None

    def _main(self) -> int:
        if self.proc is not None:
            return self.proc.memory_info().rss
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    def _sample(self) -> None:
        main = self._main()
        total = main
        if self.proc is not None:
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(self.psutil.Error):
                    total += child.memory_info().rss
        self.peak_main, self.peak_total = max(self.peak_main, main), max(self.peak_total, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()  # without psutil, _main() is ru_maxrss: the process's lifetime peak (imports included)

    def result(self) -> dict:
        mb = 1 / 2**20
        return {
            "rss_base_mb": round(self.base * mb, 1),
            "peak_rss_growth_mb": round((self.peak_main - self.base) * mb, 1),
            "peak_total_rss_growth_mb": round((self.peak_total - self.base) * mb, 1) if self.proc else None,
            "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        }


# ---------------------------------------------------------------------------------------------- one configuration
def build_loader(lib: str, chip_dir: Path, tile: Path, chips: int, workers: int, batch_size: int, seed: int):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    if lib == "domainfm":
        from domainfm.remote_sensing.datasets import ChipDataset

        ds = ChipDataset(chip_dir)
        indices = np.random.default_rng(seed).integers(0, len(ds), chips).tolist()
        return DataLoader(ds, batch_size=batch_size, sampler=indices, num_workers=workers)
    import_torchgeo()
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import RandomGeoSampler

    ds = torchgeo_dataset(tile, child_bands(chip_dir))
    sampler = RandomGeoSampler(ds, size=CHIP_PX, length=chips, generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=stack_samples)


def child_bands(chip_dir: Path) -> list[str]:
    info = json.loads(next((chip_dir / "scenes").glob("*.json")).read_text())
    return [b["name"] for b in info["scene"]["bands"]]


def run_config(cfg: dict) -> dict:
    """Read one epoch of ``cfg["chips"]`` chips with one library and one worker count (in a child process)."""
    import torch

    t0 = time.perf_counter()
    loader = build_loader(
        cfg["lib"],
        Path(cfg["chip_dir"]),
        Path(cfg["tile"]),
        cfg["chips"],
        cfg["workers"],
        cfg["batch_size"],
        cfg["seed"],
    )
    setup_s = time.perf_counter() - t0
    n, stamps, shapes, bad = 0, [], set(), 0
    with RssPeak() as mem:
        start = time.perf_counter()
        for batch in loader:
            image = batch["image"]
            n += image.shape[0]
            stamps.append((time.perf_counter(), image.shape[0]))
            shapes.add(tuple(image.shape[1:]))
            if image.dtype != torch.float32 or tuple(image.shape[1:]) != (N_BANDS, CHIP_PX, CHIP_PX):
                bad += 1
        end = time.perf_counter()
    skip = max(1, cfg["workers"])
    steady = None
    if len(stamps) > skip:
        t_first, steady_n = stamps[skip - 1][0], sum(k for _, k in stamps[skip:])
        steady = steady_n / max(end - t_first, 1e-9)
    return {
        **{k: cfg[k] for k in ("lib", "workers", "chips", "batch_size", "round")},
        "read": n,
        "seconds": round(end - start, 4),
        "chips_per_s": round(n / (end - start), 1),
        "steady_chips_per_s": round(steady, 1) if steady else None,
        "first_batch_s": round(stamps[0][0] - start, 4) if stamps else None,
        "setup_s": round(setup_s, 4),
        "chip_shapes": sorted(list(s) for s in shapes),
        "bad_batches": bad,
        "sample_keys": sorted(batch.keys()) if stamps else [],
        **mem.result(),
    }


def agreement(chip_dir: Path, tile: Path, n: int, seed: int) -> dict:
    """Pixel comparison of ``n`` domainfm chips with torchgeo reads of the same bounds (in a child process)."""
    import numpy as np
    from domainfm.remote_sensing.datasets import ChipDataset

    import_torchgeo()
    ds = ChipDataset(chip_dir)
    tg = torchgeo_dataset(tile, ds.bands)
    grid = ds.infos[ds.rows[0][0]]["grid"]
    x0, y0, gsd = grid["transform"][2], grid["transform"][5], grid["gsd"]
    worst = np.zeros(len(ds.bands))
    exact = np.zeros(len(ds.bands))
    for i in np.random.default_rng(seed).integers(0, len(ds), n).tolist():
        _, row, col, size, _ = ds.rows[i]
        a = ds[i]["image"].numpy()
        left, top = x0 + col * gsd, y0 - row * gsd
        b = tg[slice(left, left + size * gsd), slice(top - size * gsd, top)]["image"].numpy()
        if a.shape != b.shape:
            return {"chips": n, "error": f"shapes differ: domainfm {a.shape}, torchgeo {b.shape}"}
        diff = np.abs(a - b).reshape(len(ds.bands), -1)
        worst = np.maximum(worst, diff.max(1))
        exact += (diff == 0).mean(1) / n
    return {
        "chips": n,
        "bands": ds.bands,
        "max_abs_diff": [round(float(v), 2) for v in worst],
        "identical_fraction": [round(float(v), 4) for v in exact],
    }


# ---------------------------------------------------------------------------------------------- driver
def child(payload: dict, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(payload)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"child {payload} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def summarise(runs: list[dict], workers: list[int]) -> list[dict]:
    table = []
    for w in workers:
        row = {"workers": w}
        for lib in LIBS:
            mine = [r for r in runs if r["lib"] == lib and r["workers"] == w]
            for key in (
                "chips_per_s",
                "steady_chips_per_s",
                "peak_rss_growth_mb",
                "peak_total_rss_growth_mb",
                "worker_peak_rss_mb",
            ):
                row[f"{lib}_{key}"] = median(mine, key)
        d, t = row["domainfm_chips_per_s"], row["torchgeo_chips_per_s"]
        row["ratio"] = round(d / t, 2) if d and t else None
        ds, ts = row["domainfm_steady_chips_per_s"], row["torchgeo_steady_chips_per_s"]
        row["steady_ratio"] = round(ds / ts, 2) if ds and ts else None
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    def f(v):
        return "-" if v is None else f"{v:g}"

    lines = [
        "| workers | domainfm chips/s | torchgeo chips/s | ratio d/t | steady d / t (ratio) | "
        "peak RSS growth MB d / t | main+workers RSS growth MB d / t | worker peak RSS MB d / t |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['workers']} | {f(r['domainfm_chips_per_s'])} | {f(r['torchgeo_chips_per_s'])} | {f(r['ratio'])} | "
            f"{f(r['domainfm_steady_chips_per_s'])} / {f(r['torchgeo_steady_chips_per_s'])} "
            f"({f(r['steady_ratio'])}) | "
            f"{f(r['domainfm_peak_rss_growth_mb'])} / {f(r['torchgeo_peak_rss_growth_mb'])} | "
            f"{f(r['domainfm_peak_total_rss_growth_mb'])} / {f(r['torchgeo_peak_total_rss_growth_mb'])} | "
            + (
                f"{f(r['domainfm_worker_peak_rss_mb'])} / {f(r['torchgeo_worker_peak_rss_mb'])} |"
                if r["workers"]
                else "- |"
            )
        )
    return "\n".join(lines)


def versions() -> dict:
    import rasterio
    import torch

    tg = import_torchgeo()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "torchgeo": tg.__version__,
        "torchgeo_path": str(Path(tg.__file__).parent),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", type=int, default=2000, help="chips read per configuration (default 2000)")
    p.add_argument("--smoke", action="store_true", help="64 chips, 1 round, 2 chips compared: checks the script")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the median is reported (default 3)")
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values (default 0,2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=Path, default=DEFAULT_TILE)
    p.add_argument(
        "--out",
        type=Path,
        help="results JSON (default .bench/rs_chip_throughput/results.json; results_smoke.json with --smoke)",
    )
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        payload = json.loads(args._child)
        if payload["lib"] == "agreement":
            result = agreement(Path(payload["chip_dir"]), Path(payload["tile"]), payload["n"], payload["seed"])
        else:
            result = run_config(payload)
        print(json.dumps(result))
        return 0

    if args.smoke:
        args.chips, args.repeats = 64, 1
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    out = args.out or OUT_DIR / ("results_smoke.json" if args.smoke else "results.json")
    if not args.tile.is_dir():
        raise SystemExit(f"--tile {args.tile}: no such folder")
    info = versions()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([info["torchgeo_path"].rsplit(os.sep, 1)[0], env.get("PYTHONPATH", "")])

    from domainfm.remote_sensing.chips import ChipParams, chip_scenes

    with tempfile.TemporaryDirectory(prefix="rs_chip_throughput_") as tmp:
        chip_dir = Path(tmp) / "chips"
        t0 = time.perf_counter()
        summary = chip_scenes(
            args.tile, chip_dir, ChipParams(size=CHIP_PX, max_invalid=1.0, invalid_classes=[0]), progress=False
        )
        index_s = time.perf_counter() - t0
        print(f"domainfm chip index: {summary.chips} chips of {CHIP_PX} px in {index_s:.2f} s ({args.tile})")
        runs = []
        for rnd in range(args.repeats):
            for w in workers:
                for lib in LIBS if rnd % 2 == 0 else LIBS[::-1]:
                    cfg = {
                        "lib": lib,
                        "workers": w,
                        "chips": args.chips,
                        "batch_size": args.batch_size,
                        "seed": args.seed + rnd,
                        "round": rnd,
                        "chip_dir": str(chip_dir),
                        "tile": str(args.tile),
                    }
                    r = child(cfg, env)
                    runs.append(r)
                    print(
                        f"round {rnd} workers {w} {lib:9s} {r['chips_per_s']:8.1f} chips/s "
                        f"({r['read']} in {r['seconds']:.2f} s; peak RSS +{r['peak_rss_growth_mb']} MB; "
                        f"shapes {r['chip_shapes']})",
                        flush=True,
                    )
        n_check = 2 if args.smoke else 16
        agree = child(
            {"lib": "agreement", "chip_dir": str(chip_dir), "tile": str(args.tile), "n": n_check, "seed": args.seed},
            env,
        )

    shapes_ok = all(r["bad_batches"] == 0 and r["chip_shapes"] == [[N_BANDS, CHIP_PX, CHIP_PX]] for r in runs)
    table = summarise(runs, workers)
    print()
    print(markdown(table))
    print()
    print(
        f"12-band 64x64 float32 chips from both: {'yes' if shapes_ok else 'NO'}; sample keys: "
        + "; ".join(f"{lib} {next(r['sample_keys'] for r in runs if r['lib'] == lib)}" for lib in LIBS)
    )
    if "error" in agree:
        print(f"pixel agreement: {agree['error']}")
    else:
        print(
            f"pixel agreement on {agree['chips']} chips, max |domainfm - torchgeo| per band: "
            + ", ".join(f"{b} {d:g}" for b, d in zip(agree["bands"], agree["max_abs_diff"]))
        )
    result = {
        "smoke": args.smoke,
        "settings": {
            "chips": args.chips,
            "repeats": args.repeats,
            "workers": workers,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "chip_px": CHIP_PX,
            "res_m": GSD,
            "tile": str(args.tile),
        },
        "domainfm_index": {"chips": summary.chips, "seconds": round(index_s, 3)},
        "versions": info,
        "shapes_ok": shapes_ok,
        "agreement": agree,
        "table": table,
        "runs": runs,
        "command": "PYTHONPATH=.bench/torchgeo .venv/bin/python benchmarks/rs_chip_throughput.py"
        + (" --smoke" if args.smoke else f" --chips {args.chips} --repeats {args.repeats}"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}")
    return 0 if shapes_ok else 1


if __name__ == "__main__":
    sys.exit(main())
