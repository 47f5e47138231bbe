"""Stream tiles from the slides by their coordinates (no tile image dumps).

The dataset holds paths and coordinate arrays only; each process (main, DataLoader worker, DDP rank) opens the
slides it reads on first use and keeps at most ``max_open`` of them open, so it pickles small and never shares an
OpenSlide handle across processes. The open slides of a process share one decoded-tile cache of ``cache_mib``
(OpenSlide alone gives each its own 32 MiB: up to 2 GiB per worker for 64 slides drawn at random). ``threads`` read a
loader's batch concurrently within a process. Rank sharding is the sampler's job (the core ``StreamSampler``);
:meth:`SlideTileDataset.sample_weights` makes its draws balanced across slides. ``region_px``/``region_p`` read,
for a share of the samples, a larger region around the tile at the same MPP (UNI's 256 and 512 px images).
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import torch
from domainfm.data.sampling import sample_seed
from domainfm.errors import DataError
from domainfm.pathology.h5io import read_coords
from domainfm.pathology.slide import SLIDE_EXTENSIONS, Slide, open_slide, slide_name
from domainfm.pathology.tiling import find_slides
from torch.utils.data import Dataset

SlideSource = str | Path | Sequence[str | Path] | Mapping[str, str | Path]


@dataclass
class SlideTiles:
    """One slide's tiles: level-0 top-left ``coords`` of side ``size0``, read out at ``size`` pixels."""

    name: str
    path: Path
    coords: np.ndarray
    size0: int
    size: int
    attrs: dict


def coords_files(coords: str | Path | Sequence[str | Path]) -> list[Path]:
    """The ``.h5`` files of a ``domainfm tile`` output folder, its ``patches/`` folder, or a list."""
    if isinstance(coords, (str, Path)):
        folder = Path(coords)
        if (folder / "patches").is_dir():
            folder = folder / "patches"
        if folder.is_file():
            return [folder]
        files = sorted(folder.glob("*.h5")) if folder.is_dir() else []
        if not files:
            raise DataError(f"{folder} holds no coordinate files (*.h5); run 'domainfm tile' first")
        return files
    return [Path(p) for p in coords]


def slide_paths(slides: SlideSource, extensions: Sequence[str] = SLIDE_EXTENSIONS) -> dict[str, Path]:
    """``{slide name: file}`` from a folder (searched as ``domainfm tile`` does), a list of files or a mapping."""
    if isinstance(slides, Mapping):
        return {str(k): Path(v) for k, v in slides.items()}
    if isinstance(slides, (str, Path)):
        slides = find_slides(slides, extensions)
    return {slide_name(p): Path(p) for p in slides}


def load_slide_tiles(
    coords: str | Path | Sequence[str | Path], slides: SlideSource, names: Sequence[str] | None = None
) -> list[SlideTiles]:
    """Pair every coordinate file with its slide (by name); slides without tiles are left out."""
    paths = slide_paths(slides)
    out = []
    for h5 in coords_files(coords):
        xy, attrs = read_coords(h5)
        name = str(attrs.get("name", h5.stem))
        if names is not None and name not in names:
            continue
        if name not in paths:
            raise DataError(f"{h5}: no slide named {name!r} among the slides given; point data.root at the slides")
        size0, size = int(attrs["patch_size_level0"]), int(attrs["patch_size"])
        if len(xy):
            out.append(SlideTiles(name, paths[name], xy, size0, size, attrs))
    return out


def to_tensor(tile: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``3 x H x W`` float32 in [0, 1], in NumPy (single-threaded: torch's intra-op threads
    only contend with the loader workers for such small arrays)."""
    image = tile.transpose(2, 0, 1).astype(np.float32)
    image *= np.float32(1.0 / 255.0)
    return torch.from_numpy(image)


def _region_choices(
    region_px: int | Sequence[int] | None, region_p: Sequence[float] | None
) -> tuple[tuple[int, ...] | None, list[float]]:
    """``(sides, cumulative shares)`` of the ``region_px``/``region_p`` options, checked."""
    if region_px is None:
        if region_p is not None:
            raise DataError("region_p was given without region_px: give the region sides (pixels at the tiling's MPP)")
        return None, []
    sides = (int(region_px),) if isinstance(region_px, (int, float)) else tuple(int(v) for v in region_px)
    if not sides or min(sides) < 1:
        raise DataError(f"region_px must be one or more sides of at least 1 pixel, got {region_px}")
    shares = [1.0] * len(sides) if region_p is None else [float(p) for p in region_p]
    if len(shares) != len(sides) or min(shares) < 0 or sum(shares) <= 0:
        raise DataError(f"region_p must be {len(sides)} non-negative shares (one per region_px), got {region_p}")
    total = sum(shares)
    return sides, np.cumsum([p / total for p in shares]).tolist()


class SlideTileDataset(Dataset):
    """Tiles of many slides, read on demand at the tiling's target MPP.

    Item: ``{"image": 3 x S x S uint8, "meta": {"slide": name, "coords": (x, y)}}`` (``transform``, if given, maps
    the image tensor; the core views take uint8 and crop before they convert). The image is a channel-first view
    of the tile as read (``S x S x 3``): :func:`~domainfm.data.collate.collate_samples` stacks such views into a
    channels-last batch without a transpose per tile, so a loader worker hands over a quarter of the bytes of
    float tiles and the float conversion happens where the batch goes (the GPU). ``uint8=False`` gives
    float images in [0, 1] instead. ``S`` is the tiling's ``patch_size``, which must then be the same in every
    coordinate file, or ``size`` (each level-0 tile box is read out at ``size`` pixels). Tiles are ordered slide by
    slide, in each file's order.

    Regions (``region_px``, ``region_p``): each sample reads a square region of ``region_px[j]`` pixels at the
    tiling's MPP with probability ``region_p[j]`` (equal shares if not given) instead of the tile, e.g.
    ``region_px=[256, 512]``, ``region_p=[0.757, 0.243]`` for 256 px tiles: Mass-100K's share of 512 x 512 images
    (UNI, Chen et al. 2024: 75,832,905 at 256 px and 24,297,995 at 512 px, both at 20x). A region is the level-0 box
    of ``region_px[j] * patch_size_level0 / patch_size`` pixels centred on the tile, shifted where the slide allows
    to lie inside it (a region at least the tile's size, on a slide larger than the region, then holds all of the
    tile that lies in the scan), read out at ``region_px[j] * S / patch_size`` pixels (``S`` as above); a side equal
    to the tiling's ``patch_size`` reads the tile itself. ``meta`` then holds ``"region": (x0, y0, side0)`` in
    level-0 pixels. Items then differ in size: the transform must crop or resize them to one size (the multi-crop
    views do). The choice is a function of the sample's seed and index,
    ``sample_seed(torch.initial_seed(), index)``: the engine seeds torch per sample (``SeededDataset``), so it is
    reproducible, the same in every process and thread (``threads > 1`` batches equal item-by-item reads), and it
    takes no draw from the transform's random stream. Read without the engine's seeding (a plain ``DataLoader``), it
    follows the process's torch seed: each worker's changes every epoch, the main process's only when reseeded.
    """

    def __init__(
        self,
        coords: str | Path | Sequence[str | Path],
        slides: SlideSource,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        names: Sequence[str] | None = None,
        size: int | None = None,
        max_open: int = 64,
        uint8: bool = True,
        cache_mib: int = 32,
        threads: int = 1,
        region_px: int | Sequence[int] | None = None,
        region_p: Sequence[float] | None = None,
    ):
        self.slides = load_slide_tiles(coords, slides, names)
        if not self.slides:
            raise DataError(f"no tiles found for the slides in {coords}: check the tiling (min_tissue, data.root)")
        sizes = {s.size for s in self.slides}
        if size is not None:
            for tiles in self.slides:
                tiles.size = int(size)
        elif len(sizes) > 1:
            raise DataError(
                f"the coordinate files in {coords} have tiles of {sorted(sizes)} px: tile all slides alike, or give "
                "the dataset a size= to read every tile at"
            )
        self.offsets = np.cumsum([0] + [len(s.coords) for s in self.slides])
        self._starts = self.offsets.tolist()  # for bisect: ~1 us per lookup instead of NumPy's ~20
        self.region_px, self._region_cum = _region_choices(region_px, region_p)
        self.transform = transform
        self.uint8 = uint8
        self.max_open, self.cache_mib, self.threads = max_open, cache_mib, threads
        self._open: OrderedDict[int, Slide] = OrderedDict()
        self._cache: openslide.OpenSlideCache | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(slide number, tile number within it)`` of a dataset index."""
        if not 0 <= index < self._starts[-1]:
            raise IndexError(f"tile {index} out of range for {len(self)} tiles")
        s = bisect_right(self._starts, index) - 1
        return s, index - self._starts[s]

    def tile_info(self, index: int) -> tuple[SlideTiles, int, int]:
        """``(slide tiles, x, y)`` of a dataset index."""
        s, k = self.locate(index)
        x, y = self.slides[s].coords[k]
        return self.slides[s], int(x), int(y)

    def describe(self, index: int) -> str:
        tiles, x, y = self.tile_info(index)
        return f"{tiles.path} tile ({x}, {y})"

    def preprocess_info(self, img_size: int | Sequence[int]) -> dict[str, float | int]:
        """The scale the export records: the tiles' MPP and side (``tile_px`` at ``mpp``) from the coordinate files,
        and ``input_mpp``, the MPP a model input of ``img_size`` px sees when a whole tile is resized to it (a 256 px
        tile at 0.5 um/px fed at 64 px is seen at 2 um/px). Empty when the slides were tiled differently."""
        mpps = {float(s.attrs.get("target_mpp", 0) or 0) for s in self.slides}
        sides = {int(s.attrs.get("patch_size", s.size)) for s in self.slides}
        if len(mpps) != 1 or len(sides) != 1 or not next(iter(mpps)):
            return {}
        mpp, side = mpps.pop(), sides.pop()
        size = img_size if isinstance(img_size, int) else min(int(v) for v in img_size)
        return {"mpp": mpp, "tile_px": side, "input_mpp": round(mpp * side / int(size), 6)}

    def sample_weights(self) -> torch.Tensor:
        """One weight per tile, ``1 / tiles in its slide``: weighted draws (``StreamSampler(weights=...)`` or the
        Trainer's ``sample_weights``) then pick every slide equally often, whatever its size."""
        counts = np.diff(self.offsets)
        return torch.from_numpy(np.repeat(1.0 / counts, counts))

    def _own(self) -> None:
        """Handles, their cache, the lock and the threads belong to one process: a forked loader worker or an
        unpickled copy makes its own (never an OpenSlide handle shared across processes)."""
        if os.getpid() != self._pid or self._lock is None:
            self._open, self._cache, self._pool = OrderedDict(), None, None
            self._lock, self._pid = threading.Lock(), os.getpid()

    def _slide(self, s: int) -> Slide:
        if self._pid == os.getpid() and (slide := self._open.get(s)) is not None:  # the usual case, lock-free
            with suppress(KeyError):  # another thread evicted it just now: it stays valid for this read
                self._open.move_to_end(s)
            return slide
        self._own()
        with self._lock:
            if s in self._open:
                self._open.move_to_end(s)
                return self._open[s]
            if self._cache is None:
                self._cache = openslide.OpenSlideCache(self.cache_mib << 20)
            slide = open_slide(self.slides[s].path)
            slide.set_cache(self._cache)
            self._open[s] = slide
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)  # closed once no thread reads it any more (OpenSlide closes on GC)
            return slide

    def read(self, index: int) -> np.ndarray:
        """The tile (or the sample's region, with ``region_px``) as ``S x S x 3`` uint8."""
        return self._read(index)[3]

    def region_side(self, index: int) -> int | None:
        """The side (pixels at the tiling's MPP) of the region sample ``index`` reads now, None without
        ``region_px``: ``region_px[j]`` for the ``u = sample_seed(torch.initial_seed(), index) / 2**63`` that falls in
        the ``j``-th share of ``region_p``."""
        if self.region_px is None:
            return None
        if len(self.region_px) == 1:
            return self.region_px[0]
        u = sample_seed(torch.initial_seed(), index) / 2.0**63
        return self.region_px[min(bisect_right(self._region_cum, u), len(self.region_px) - 1)]

    @staticmethod
    def region_box(x: int, y: int, size0: int, side0: int, dimensions: tuple[int, int]) -> tuple[int, int]:
        """Top-left ``(x0, y0)`` of a ``side0`` level-0 box centred on the tile ``(x, y, size0)``, shifted where the
        slide (``dimensions``, level-0 width and height) allows to lie inside it."""

        def place(start: int, extent: int) -> int:
            centred = start + (size0 - side0) // 2
            return max(0, min(centred, extent - side0))

        return place(x, dimensions[0]), place(y, dimensions[1])

    def _read(self, index: int) -> tuple[SlideTiles, tuple[int, int], tuple[int, int, int] | None, np.ndarray]:
        s, k = self.locate(index)
        tiles = self.slides[s]
        x, y = tiles.coords[k].tolist()
        slide = self._slide(s)
        side = self.region_side(index)
        patch = int(tiles.attrs["patch_size"])
        if side is None or side == patch:
            box = None if side is None else (x, y, tiles.size0)
            return tiles, (x, y), box, slide.read_tile(x, y, tiles.size0, tiles.size)
        side0 = max(1, round(side * tiles.size0 / patch))
        x0, y0 = self.region_box(x, y, tiles.size0, side0, slide.dimensions)
        out = max(1, round(side * tiles.size / patch))
        return tiles, (x, y), (x0, y0, side0), slide.read_tile(x0, y0, side0, out)

    def _item(
        self, tiles: SlideTiles, xy: tuple[int, int], box: tuple[int, int, int] | None, tile: np.ndarray
    ) -> dict[str, Any]:
        # an OpenSlide read is Pillow's read-only buffer: a 0.2 MB copy keeps in-place transforms safe (a plain image's
        # read is a fresh array already); the channel-first view is made in NumPy (one torch call per tile: each costs
        # tens of us after a slide read)
        if self.uint8 and not (tile.flags.writeable and tile.flags.owndata):
            tile = tile.copy()
        image = torch.from_numpy(tile.transpose(2, 0, 1)) if self.uint8 else to_tensor(tile)
        if self.transform is not None:
            image = self.transform(image)
        meta = {"slide": tiles.name, "coords": xy}
        if box is not None:
            meta["region"] = box
        return {"image": image, "meta": meta}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(*self._read(index))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch of items (what a ``DataLoader`` asks for). With ``threads > 1`` the tiles are read concurrently
        (OpenSlide and Pillow release the GIL: one process uses several cores, with nothing to hand over between
        processes); the transform then runs on them one by one, in order, so its random draws do not depend on
        thread timing."""
        if self.threads <= 1 or len(indices) <= 1:
            return [self[i] for i in indices]
        self._own()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="slide-tiles")
        return [self._item(*read) for read in self._pool.map(self._read, indices)]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # handles, their cache, the lock and the threads stay in their process
        state.update(_open=OrderedDict(), _cache=None, _lock=None, _pool=None)
        return state
