"""Tiling benchmark: the streaming tile dataset against a raw ``openslide.read_region`` loop over the same
coordinates (tiles/s, ratio, CPU efficiency; in process, through DataLoader workers, with reading threads), and
peak memory while tiling and streaming synthetic pyramidal slides of growing size (it must stay flat: the reads
are block by block, never a whole level).

    .venv/bin/python benchmarks/tiling.py [--rounds 9] [--passes 2] [--slides 10000@0.5 40000@0.5 20000@2]
                                          [--memory-only]

Throughput runs twice on the real CMU-1-Small-Region.svs: with OpenSlide's tile cache holding the whole slide
(a read is a copy out of the cache) and with no cache anywhere (every read decodes, as when streaming an archive).
Synthetic slides (``side@mpp``): a real H&E region (../shared/data/pathology/TCGA-HE-7130_1000px.png) tiled
inside an ellipse on glass, levels 1/4/16/64, JPEG tiles, written tile by tile and deleted afterwards. The last
default ones span 20 and 40 mm, beyond the 16 mm where the tissue thumbnail reaches ``tissue.max_side``.
Prints markdown tables; the figures are ratios within one run (absolute speeds depend on the machine).
"""

from __future__ import annotations

import argparse
import itertools
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
class Forever:
    """An endless sampler over ``n`` indices in order: a benchmark's loaders never wait for a new epoch."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return itertools.cycle(range(self.n))


class RawTiles:
    """The raw loop's call as a dataset (for loader workers): ``read_region(...).convert("RGB")`` per index."""

    def __init__(self, slide: Path, coords: list[tuple[int, int]], size: int, cached: bool):
        self.slide, self.coords, self.size, self.cached, self.handle = slide, coords, size, cached, None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> np.ndarray:
        import openslide

        if self.handle is None:
            self.handle = openslide.OpenSlide(str(self.slide))
            if not self.cached:
                self.handle.set_cache(openslide.OpenSlideCache(0))
        return np.asarray(self.handle.read_region(self.coords[i], 0, (self.size, self.size)).convert("RGB"))


def count_only(samples: list) -> int:
    """A collate that drops the images: the workers' reading cost without the batches' trip to the main process."""
    return len(samples)


def consume(batch) -> int:
    """Tiles in a batch, after touching one value per 4 KiB page of its images, as a copy to the GPU would."""
    from domainfm.data.shared_batches import take

    if isinstance(batch, int):
        return batch
    images = take(batch)["image"]
    flat = images.permute(0, 2, 3, 1).reshape(-1) if not images.is_contiguous() else images.reshape(-1)
    flat[:: 4096 // images.element_size()].sum()
    return len(images)


def cpu_ns(pids: list[int]) -> int:
    """CPU time (ns) used so far by every thread of these processes (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    return total


class Stream:
    """A persistent DataLoader, measured over windows: its wall-clock tiles/s while the main process takes ``n``
    tiles, and its readers' CPU time per tile. Between windows the workers fill their prefetch queues and idle; a
    window first takes those ready batches (not its work), times the next ``n`` tiles, then waits until the workers
    idle again (their queues refilled), so the CPU time covers exactly the batches taken."""

    def __init__(self, data, workers: int, collate, batch_size: int = 32):
        from torch.utils.data import DataLoader

        self.workers, self.batch_size = workers, batch_size
        self.readers = max(workers, 1) * getattr(data, "threads", 1)  # what "per worker" divides by
        loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=Forever(len(data)),
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
        )
        self.batches = iter(loader)
        next(self.batches)  # worker start-up is not tile reading
        self.pids = [w.pid for w in getattr(self.batches, "_workers", [])]

    def _idle_cpu(self) -> int:
        """The workers' CPU time once it stops growing (their prefetch queues full)."""
        last = cpu_ns(self.pids)
        for _ in range(200):
            time.sleep(0.03)
            now = cpu_ns(self.pids)
            if now - last < 1_000_000:  # < 1 ms in 30 ms: blocked on a full queue
                return now
            last = now
        return last

    def rate(self, n: int) -> tuple[float, float]:
        """``(tiles/s, CPU ns per tile of the readers)``."""
        if not self.pids:  # no worker: the main process reads (threads and all)
            t0, c0, seen = time.perf_counter(), time.process_time_ns(), 0
            while seen < n:
                seen += consume(next(self.batches))
            return seen / (time.perf_counter() - t0), (time.process_time_ns() - c0) / seen
        c0 = self._idle_cpu()
        for _ in range(2 * self.workers):  # prefetch_factor (2) batches per worker piled up while idle
            consume(next(self.batches))
        t0, seen = time.perf_counter(), 0
        while seen < n:
            seen += consume(next(self.batches))
        wall = seen / (time.perf_counter() - t0)
        taken = seen + 2 * self.workers * self.batch_size  # the workers refill what was taken
        return wall, (self._idle_cpu() - c0) / taken


def throughput(slide: Path, out: Path, rounds: int, passes: int, cached: bool) -> list[tuple[str, float, float, float]]:
    """Per reader: tiles/s, the ratio to a raw ``read_region`` loop over the same coordinates in this process, and
    CPU efficiency (the raw loop's CPU time per tile over the reader's; for loaders, the workers' CPU time).

    ``cached``: OpenSlide's decoded-tile cache holds the whole (small) slide, as re-reading one region; otherwise
    no cache anywhere, every read decodes its JPEG tiles, as streaming a large archive does. In-process readers are
    timed call by call, interleaved with the raw call on the same tile (paired: the load of a shared machine hits
    both alike); each loader window is timed between two raw windows of the same length, and its ratios are to
    their mean; medians over ``rounds``. Per worker: the rate divided by the number of reading workers (threads)
    and by the raw rate; "as many workers": that ratio over the raw loop's own in as many loader workers, round by
    round (what the machine gives that many readers)."""
    import openslide
    import torch
    from domainfm.data.collate import collate_samples
    from domainfm.data.shared_batches import SharedBatches
    from domainfm.pathology.datasets import SlideTileDataset
    from domainfm.pathology.slide import open_slide
    from domainfm.pathology.tiling import TilingParams, tile_slide
    from PIL import Image

    if not (out / "patches").is_dir():
        tile_slide(slide, out, TilingParams(min_tissue=0.0))
    cache_mib = 32 if cached else 0  # the dataset default; the whole CMU slide (26 MB decoded) fits
    ds = SlideTileDataset(out, [slide], cache_mib=cache_mib)
    ds_float = SlideTileDataset(out, [slide], uint8=False, cache_mib=cache_mib)
    ds_half = SlideTileDataset(out, [slide], size=ds.slides[0].size // 2, cache_mib=cache_mib)
    coords = [tuple(int(v) for v in c) for c in ds.slides[0].coords]
    size0, size = ds.slides[0].size0, ds.slides[0].size
    assert size0 == size, "the CMU tiles are read at level 0 without resampling, like the raw loop"
    handle = openslide.OpenSlide(str(slide))
    reader = open_slide(slide)
    if not cached:
        handle.set_cache(openslide.OpenSlideCache(0))
        reader.set_cache(openslide.OpenSlideCache(0))
    n = len(coords) * passes
    torch.set_num_threads(1)

    calls = {
        "raw": lambda i, x, y: np.asarray(handle.read_region((x, y), 0, (size0, size0)).convert("RGB")),
        "read_tile": lambda i, x, y: reader.read_tile(x, y, size0, size),
        "items": lambda i, x, y: ds[i],
        "float_items": lambda i, x, y: ds_float[i],
        # the same boxes read out at half the pixels, as a 40x slide is read at 20x (Pillow's resize either way)
        "raw_half": lambda i, x, y: np.asarray(
            handle.read_region((x, y), 0, (size0, size0))
            .convert("RGB")
            .resize((size // 2, size // 2), Image.Resampling.BILINEAR, reducing_gap=3.0)
        ),
        "half_items": lambda i, x, y: ds_half[i],
    }
    for i, (x, y) in enumerate(coords):  # fill the caches (cached) / open everything (not)
        for call in calls.values():
            call(i, x, y)
    spent = {k: 0 for k in calls}
    spent_cpu = {k: 0 for k in calls}
    for _ in range(rounds * passes):
        for i, (x, y) in enumerate(coords):
            for key, call in calls.items():
                t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
                call(i, x, y)
                spent_cpu[key] += time.thread_time_ns() - c0
                spent[key] += time.perf_counter_ns() - t0
    per_s = {k: rounds * n / (v / 1e9) for k, v in spent.items()}
    cpu_eff = {k: spent_cpu["raw"] / v for k, v in spent_cpu.items()}

    def raw_window() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time_ns()
        for _ in range(passes):
            for i, (x, y) in enumerate(coords):
                calls["raw"](i, x, y)
        return n / (time.perf_counter() - t0), (time.process_time_ns() - c0) / n

    streams = {
        "loader1": Stream(ds, 1, SharedBatches()),
        "loader2": Stream(ds, 2, SharedBatches()),
        "plain1": Stream(ds, 1, collate_samples),
        "float1": Stream(ds_float, 1, SharedBatches()),
        "reads1": Stream(ds, 1, count_only),
        "reads2": Stream(ds, 2, count_only),
        "threads2": Stream(SlideTileDataset(out, [slide], cache_mib=cache_mib, threads=2), 0, collate_samples),
        "raw_w1": Stream(RawTiles(slide, coords, size0, cached), 1, count_only),
        "raw_w2": Stream(RawTiles(slide, coords, size0, cached), 2, count_only),
    }
    ratios: dict[str, list[float]] = {k: [] for k in streams}
    effs: dict[str, list[float]] = {k: [] for k in streams}
    rates: dict[str, list[float]] = {k: [] for k in streams}
    for _ in range(rounds):
        before = raw_window()
        for key, stream in streams.items():
            rate, ns_per_tile = stream.rate(n)
            after = raw_window()
            rates[key].append(rate / stream.readers)
            ratios[key].append(rate / stream.readers / ((before[0] + after[0]) / 2))
            effs[key].append((before[1] + after[1]) / 2 / ns_per_tile)
            before = after
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    eff = {k: statistics.median(v) for k, v in effs.items()}
    # against the raw loop run the same way (as many reading workers, or threads), round by round
    peer = {k: "raw_w2" if k.endswith("2") else "raw_w1" for k in streams}
    same = {k: statistics.median(a / b for a, b in zip(ratios[k], ratios[peer[k]])) for k in streams}
    rows = [
        ("raw `read_region` + RGB loop, 1 process", "raw"),
        ("`Slide.read_tile` (the dataset's reader)", "read_tile"),
        ("SlideTileDataset items (uint8, the default)", "items"),
        ("SlideTileDataset items, `uint8=False` (float in [0, 1])", "float_items"),
    ]
    out = [(name, per_s[k], per_s[k] / per_s["raw"], per_s[k] / per_s["raw"], cpu_eff[k]) for name, k in rows]
    # resampling (a 40x slide read at 20x): to the raw loop that resizes the same way
    half, half_cpu = per_s["half_items"] / per_s["raw_half"], spent_cpu["raw_half"] / spent_cpu["half_items"]
    name = "SlideTileDataset items at half size (`size=128`: 2x resampling, as 40x slides read at 20x), to raw + resize"
    out.append((name, per_s["half_items"], half, half, half_cpu))
    rows = [
        ("**DataLoader, 1 worker, batch 32** (uint8, channels-last, shared slabs)", "loader1"),
        ("**DataLoader, 2 workers, batch 32, per worker**", "loader2"),
        ("DataLoader, 1 worker, torch's collate (fresh shared memory per batch)", "plain1"),
        ("DataLoader, 1 worker, float items", "float1"),
        ("DataLoader, 1 worker, reads only (images dropped in the worker)", "reads1"),
        ("DataLoader, 2 workers, reads only, per worker", "reads2"),
        ("**DataLoader, no worker, `threads=2`, per thread** (nothing to hand over)", "threads2"),
        ("the raw loop itself in 1 loader worker (reads only)", "raw_w1"),
        ("the raw loop itself in 2 loader workers, per worker (this machine's ceiling)", "raw_w2"),
    ]
    return out + [(name, med[k], ratio[k], same[k], eff[k]) for name, k in rows]


def print_throughput(work: Path, rounds: int, passes: int) -> None:
    """The throughput table: both cache regimes side by side."""
    cached = throughput(CMU, work / "cmu", rounds, passes, cached=True)
    decoded = throughput(CMU, work / "cmu", rounds, passes, cached=False)
    print(f"\nThroughput on {CMU.name}, 256 px tiles at 0.5 um/px ({rounds} rounds, medians):\n")
    print(
        "| reader | cached: tiles/s | to raw | to raw, as many workers | CPU efficiency "
        "| every read decodes: tiles/s | to raw | as many workers | CPU eff. |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row, row_d in zip(cached, decoded):
        cells = [f"{row[1]:.0f}", *(f"{v:.2f}" for v in row[2:]), f"{row_d[1]:.0f}", *(f"{v:.2f}" for v in row_d[2:])]
        print(f"| {row[0]} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--slides", nargs="*", default=["10000@0.5", "40000@0.5", "20000@2"], help="side@mpp")
    parser.add_argument("--stream", type=int, default=2000, help="tiles streamed from each synthetic slide")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput tables")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, slide, out, n = args.child
        child(mode, slide, out, int(n))
        return
    work = Path(tempfile.mkdtemp(prefix="domainfm-tiling-bench-", dir=args.workdir))
    try:
        if not args.memory_only:
            print_throughput(work, args.rounds, args.passes)
        if not args.slides:
            return
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
