"""Tiling benchmark: the streaming tile dataset against a raw ``openslide.read_region`` loop over the same
coordinates (tiles/s, ratio), and peak memory while tiling and streaming synthetic pyramidal slides of growing size
(it must stay flat: the reads are block by block, never a whole level).

    .venv/bin/python benchmarks/tiling.py [--rounds 7] [--passes 2] [--slides 10000@0.5 40000@0.5 20000@2]

Synthetic slides (``side@mpp``): a real H&E region (../shared/data/pathology/TCGA-HE-7130_1000px.png) tiled
inside an ellipse on glass, levels 1/4/16/64, JPEG tiles, written tile by tile and deleted afterwards. The last
default ones span 20 and 40 mm, beyond the 16 mm where the tissue thumbnail reaches ``tissue.max_side``.
Prints markdown tables; the figures are ratios within one run (absolute speeds depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "pathology"
CMU = SHARED / "CMU-1-Small-Region.svs"
TEXTURE = SHARED / "TCGA-HE-7130_1000px.png"


# ------------------------------------------------------------------------------------------- synthetic slides
def synthetic_reader(width: int, height: int):
    """A RegionFn: H&E texture inside an ellipse covering ~60% of the slide, glass outside; any level, any block."""
    from PIL import Image

    texture = np.asarray(Image.open(TEXTURE).convert("RGB"))
    levels: dict[float, np.ndarray] = {}
    cx, cy, ax, ay = width / 2, height / 2, width * 0.45, height * 0.42

    def read(x0: int, y0: int, w: int, h: int, ds: float) -> np.ndarray:
        if ds not in levels:
            side = max(8, round(texture.shape[0] / ds))
            levels[ds] = np.asarray(Image.fromarray(texture).resize((side, side), Image.Resampling.BOX))
        tex = levels[ds]
        lx, ly = round(x0 / ds), round(y0 / ds)
        rows = (ly + np.arange(h)) % tex.shape[0]
        cols = (lx + np.arange(w)) % tex.shape[1]
        block = tex[rows[:, None], cols[None, :]]
        ys = (y0 + np.arange(h)[:, None] * ds - cy) / ay
        xs = (x0 + np.arange(w)[None, :] * ds - cx) / ax
        return np.where((xs**2 + ys**2 <= 1)[..., None], block, np.uint8(242))

    return read


def write_synthetic(path: Path, side: int, mpp: float = 0.5) -> float:
    from domainfm.pathology.pyramid import write_pyramidal_tiff

    t0 = time.perf_counter()
    write_pyramidal_tiff(path, side, side, synthetic_reader(side, side), mpp=mpp, downsamples=(1, 4, 16, 64))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- child processes
def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would carry the parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, slide: str, out: str, n: int) -> None:
    """Runs in a fresh process; prints JSON with its peak RSS (MiB) and timings."""
    t0 = time.perf_counter()
    if mode == "import-tiling":
        import domainfm.pathology.tiling  # noqa: F401 - what the tile mode loads

        result = {}
    elif mode == "import-dataset":
        import domainfm.pathology.datasets  # noqa: F401 - what the stream mode loads (with torch)

        result = {}
    elif mode == "tile":
        from domainfm.pathology.tiling import tile_slide

        result = {"tiles": tile_slide(slide, out).tiles}
    else:  # stream n tiles spread over the slide through the dataset
        from domainfm.pathology.datasets import SlideTileDataset

        ds = SlideTileDataset(out, [slide])
        step = max(1, len(ds) // n)
        for i in range(0, len(ds), step):
            ds[i]
        result = {"tiles": len(range(0, len(ds), step))}
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def run_child(mode: str, slide: Path | str = "", out: Path | str = "", n: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(slide), str(out), str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- throughput
def throughput(slide: Path, out: Path, rounds: int, passes: int) -> list[tuple[str, float, float]]:
    """In-process readers are timed call by call, interleaved with the raw loop on the same tile (paired: the load
    of a shared machine hits both alike); loaders are timed per round, right after a raw pass of the same length."""
    import openslide
    import torch
    from domainfm.data.collate import collate_samples
    from domainfm.pathology.datasets import SlideTileDataset
    from domainfm.pathology.slide import open_slide
    from domainfm.pathology.tiling import TilingParams, tile_slide
    from torch.utils.data import DataLoader

    tile_slide(slide, out, TilingParams(min_tissue=0.0))
    ds = SlideTileDataset(out, [slide])
    ds_u8 = SlideTileDataset(out, [slide], uint8=True)
    coords = [tuple(int(v) for v in c) for c in ds.slides[0].coords]
    size0, size = ds.slides[0].size0, ds.slides[0].size
    assert size0 == size, "the CMU tiles are read at level 0 without resampling, like the raw loop"
    handle = openslide.OpenSlide(str(slide))
    reader = open_slide(slide)
    n = len(coords) * passes
    torch.set_num_threads(1)

    calls = {
        "raw": lambda i, x, y: np.asarray(handle.read_region((x, y), 0, (size0, size0)).convert("RGB")),
        "read_tile": lambda i, x, y: reader.read_tile(x, y, size0, size),
        "u8_items": lambda i, x, y: ds_u8[i],
        "items": lambda i, x, y: ds[i],
    }
    spent = {k: 0 for k in calls}
    for _ in range(rounds * passes):
        for i, (x, y) in enumerate(coords):
            for key, call in calls.items():
                t0 = time.perf_counter_ns()
                call(i, x, y)
                spent[key] += time.perf_counter_ns() - t0
    per_s = {k: rounds * n / (v / 1e9) for k, v in spent.items()}

    def raw_pass() -> float:
        t0 = time.perf_counter()
        for _ in range(passes):
            for i, (x, y) in enumerate(coords):
                calls["raw"](i, x, y)
        return n / (time.perf_counter() - t0)

    def loader(workers: int, collate=collate_samples, data=ds):
        def rate() -> float:
            # one stream of all passes (plus a warm-up batch), so that the workers never wait for a new epoch
            order = list(range(len(data))) * (passes + 1)
            dl = DataLoader(data, batch_size=32, sampler=order, num_workers=workers, collate_fn=collate)
            batches = iter(dl)
            next(batches)  # worker start-up is not tile reading
            t0, seen = time.perf_counter(), 0
            for batch in batches:
                seen += batch if isinstance(batch, int) else len(batch["meta"])
                if seen >= n:
                    break
            return seen / (time.perf_counter() - t0)

        return rate

    loaders = {
        "loader1": loader(1),
        "loader2": loader(2),
        "reads1": loader(1, count_only),
        "u8": loader(1, data=ds_u8),
    }
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    ratios: dict[str, list[float]] = {k: [] for k in loaders}
    for _ in range(rounds):
        for key, fn in loaders.items():
            base = raw_pass()
            rates[key].append(fn())
            ratios[key].append(rates[key][-1] / base)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    return [
        ("raw `read_region` + RGB loop, 1 process", per_s["raw"], 1.0),
        ("`Slide.read_tile` (the dataset's reader)", per_s["read_tile"], per_s["read_tile"] / per_s["raw"]),
        ("SlideTileDataset items, uint8", per_s["u8_items"], per_s["u8_items"] / per_s["raw"]),
        ("SlideTileDataset items, float in [0, 1] (the default)", per_s["items"], per_s["items"] / per_s["raw"]),
        ("DataLoader, 1 worker, batch 32, float items", med["loader1"], ratio["loader1"]),
        ("DataLoader, 2 workers, batch 32, float items (ratio per worker)", med["loader2"], ratio["loader2"] / 2),
        ("DataLoader, 1 worker, uint8 items (as extract_slide_features)", med["u8"], ratio["u8"]),
        ("DataLoader, 1 worker, images dropped in the worker (reads only)", med["reads1"], ratio["reads1"]),
    ]


def count_only(samples: list) -> int:
    """A collate that drops the images: the worker's reading cost without the batch's trip to the main process."""
    return len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--slides", nargs="+", default=["10000@0.5", "40000@0.5", "20000@2"], help="side@mpp")
    parser.add_argument("--stream", type=int, default=2000, help="tiles streamed from each synthetic slide")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, slide, out, n = args.child
        child(mode, slide, out, int(n))
        return
    work = Path(tempfile.mkdtemp(prefix="domainfm-tiling-bench-", dir=args.workdir))
    try:
        rows = throughput(CMU, work / "cmu", args.rounds, args.passes)
        print(f"\nThroughput on {CMU.name}, 256 px tiles at 0.5 um/px ({args.rounds} rounds, medians):\n")
        print("| reader | tiles/s | ratio to raw (median of per-round ratios) |")
        print("|---|---|---|")
        for name, rate, ratio in rows:
            print(f"| {name} | {rate:.0f} | {ratio:.2f} |")

        base = {mode: run_child(f"import-{mode}")["peak_rss_mib"] for mode in ("tiling", "dataset")}
        mem_rows = []
        for spec in args.slides:
            side, mpp = int(spec.split("@")[0]), float(spec.split("@")[1])
            slide = work / f"synthetic_{side}_{mpp}.tif"
            written = write_synthetic(slide, side, mpp)
            tiled = run_child("tile", slide, work / f"out_{spec}")
            streamed = run_child("stream", slide, work / f"out_{spec}", args.stream)
            slide.unlink()
            mem_rows.append(
                (f"{side:,} x {side:,} at {mpp} um/px ({side * mpp / 1000:.0f} mm)", written, tiled, streamed)
            )
        print(
            f"\nPeak RSS of a fresh process per step (its imports alone: tiling {base['tiling']:.0f} MiB, "
            f"dataset with torch {base['dataset']:.0f} MiB):\n"
        )
        print("| slide | write s | tiles | tile_slide s | tile_slide peak RSS | streamed | peak RSS |")
        print("|---|---|---|---|---|---|---|")
        for name, written, tiled, streamed in mem_rows:
            print(
                f"| {name} | {written:.1f} | {tiled['tiles']:,} | "
                f"{tiled['seconds']:.1f} | {tiled['peak_rss_mib']:.0f} MiB | {streamed['tiles']:,} tiles | "
                f"{streamed['peak_rss_mib']:.0f} MiB |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
