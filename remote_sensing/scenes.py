"""Scenes of multiband rasters: find them in an archive and read windows of all their bands on one pixel grid.

A scene is one of:

- a folder (or a file-name prefix inside a folder) of one file per band, named ``..._B01.tif`` / ``B8A.tif`` (the
  Sentinel-2 and BigEarthNet layouts), with an optional ``SCL`` scene-classification file as its mask;
- Landsat 8/9 Collection 2 Level-2 per-band files (``<product id>_SR_B1.TIF`` .. ``_SR_B7.TIF``, ``_ST_B10.TIF``)
  with ``_QA_PIXEL.TIF`` as a bit-flag mask (``mask_kind="landsat_qa"``; SR scale 2.75e-5 recorded);
- a STAC item JSON (a ``Feature`` with ``assets``): the assets with ``eo:bands`` are its bands, ``scl`` its mask;
  asset files are found at their ``href`` or, for remote hrefs, by file name next to the JSON;
- one multiband GeoTIFF/COG (bands named by their descriptions, else ``band_1 ..``).

Bands at different resolutions are resampled on the fly (rasterio ``WarpedVRT``, bilinear; the mask nearest) to one
grid: the finest band's, or ``gsd`` metres. Files that disagree in CRS or extent are a one-line error naming them.
Values are the files' own (digital numbers with the file's scale/offset); STAC ``raster:bands`` scales are recorded
(``Scene.scales``) for the normalisation, not applied.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from domainfm.errors import DataError
from domainfm.remote_sensing.bands import LANDSAT89, LANDSAT_SR_SCALE, SENTINEL2, s2_sort_key

RASTER_EXTENSIONS = (".tif", ".tiff")
_BAND_FILE = re.compile(r"^(?P<prefix>.*?)[_-]?(?P<band>B(?:0[1-9]|1[0-2]|8A))\.tiff?$", re.IGNORECASE)
_MASK_FILE = re.compile(r"^(?P<prefix>.*?)[_-]?SCL\.tiff?$", re.IGNORECASE)
# Landsat 8/9 Collection 2 Level-2: <product id>_SR_B1.TIF .. _SR_B7.TIF, _ST_B10.TIF, _QA_PIXEL.TIF
_LANDSAT_BAND = re.compile(r"^(?P<prefix>L[CO]0[89]_.*?)_(?P<band>SR_B[1-7]|ST_B10)\.tiff?$", re.IGNORECASE)
_LANDSAT_QA = re.compile(r"^(?P<prefix>L[CO]0[89]_.*?)_QA_PIXEL\.tiff?$", re.IGNORECASE)
_OTHER_PRODUCTS = re.compile(r"(^|[_-])(TCI|AOT|WVP|visual|thumbnail)\.", re.IGNORECASE)


@dataclass
class BandSource:
    name: str
    path: str
    index: int = 1  # 1-based band index in ``path``
    wavelength_nm: float | None = None
    gsd_m: float | None = None


@dataclass
class Scene:
    name: str
    bands: list[BandSource]
    mask: str | None = None  # a Sentinel-2 SCL raster, or a Landsat QA_PIXEL raster (mask_kind)
    scales: dict[str, float] = field(default_factory=dict)  # band -> multiplier to physical units (STAC)
    source: str = ""
    mask_kind: str = "scl"  # scl: classes; landsat_qa: Collection 2 QA_PIXEL bit flags

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(**{**d, "bands": [BandSource(**b) for b in d["bands"]]})


# ---------------------------------------------------------------------------------------------- finding scenes
def find_scenes(root: str | Path, exclude: Path | None = None) -> list[Scene]:
    """Every scene under ``root`` (a folder searched recursively, a STAC item JSON, or one raster file). File paths
    are absolute, so a chip index written from them reads from any working directory."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"data.root={root} does not exist")
    if root.is_file():
        if root.suffix.lower() == ".json":
            return [scene_from_stac(root)]
        return [_multiband_or_unreadable(root)]
    scenes: list[Scene] = []
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file()} | {root})
    for folder in folders:
        if exclude is not None and (folder == exclude or exclude in folder.parents):
            continue
        scenes += _folder_scenes(folder)
    names = [s.name for s in scenes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{root}: scenes with the same name in different folders ({', '.join(dupes[:3])}); rename them")
    return scenes


def _folder_scenes(folder: Path) -> list[Scene]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for item in (p for p in files if p.suffix.lower() == ".json"):
        if _is_stac_item(item):
            return [scene_from_stac(item)]
    rasters = [p for p in files if p.suffix.lower() in RASTER_EXTENSIONS]
    landsat = _landsat_scenes(rasters, folder)
    if landsat:
        return landsat
    groups = _band_groups(rasters, _BAND_FILE, _MASK_FILE)
    scenes = []
    for prefix, g in sorted(groups.items()):
        if not g["bands"]:
            continue
        bands = [_s2_band(name, path) for name, path in sorted(g["bands"].items(), key=lambda kv: s2_sort_key(kv[0]))]
        name = prefix.rstrip("_-") or folder.name
        scenes.append(Scene(name, bands, str(g["mask"]) if g["mask"] else None, source=str(folder)))
    if not groups:  # no per-band files: every other raster is a multiband scene
        scenes += [_multiband_or_unreadable(p) for p in rasters if not _OTHER_PRODUCTS.search(p.name)]
    return scenes


def _band_groups(rasters: list[Path], band_file: re.Pattern, mask_file: re.Pattern) -> dict[str, dict]:
    """``{prefix: {"bands": {BAND: path}, "mask": path | None}}`` of the files matching the two patterns."""
    groups: dict[str, dict] = {}
    for p in rasters:
        if m := band_file.match(p.name):
            groups.setdefault(m["prefix"], {"bands": {}, "mask": None})["bands"][m["band"].upper()] = p
        elif m := mask_file.match(p.name):
            groups.setdefault(m["prefix"], {"bands": {}, "mask": None})["mask"] = p
    return groups


def _landsat_scenes(rasters: list[Path], folder: Path) -> list[Scene]:
    """Landsat 8/9 Collection 2 Level-2 per-band files with their QA_PIXEL band as the mask."""
    groups = _band_groups(rasters, _LANDSAT_BAND, _LANDSAT_QA)
    scenes = []
    order = list(LANDSAT89)
    for prefix, g in sorted(groups.items()):
        if not g["bands"]:
            continue
        names = sorted(g["bands"], key=order.index)
        bands = [BandSource(n, str(g["bands"][n]), 1, LANDSAT89[n].wavelength_nm, LANDSAT89[n].gsd_m) for n in names]
        scales = {n: LANDSAT_SR_SCALE for n in names if n.startswith("SR_")}
        mask = str(g["mask"]) if g["mask"] else None
        scenes.append(Scene(prefix, bands, mask, scales, source=str(folder), mask_kind="landsat_qa"))
    return scenes


def _s2_band(name: str, path: Path, index: int = 1) -> BandSource:
    known = SENTINEL2.get(name)
    return BandSource(name, str(path), index, known.wavelength_nm if known else None, known.gsd_m if known else None)


def _is_stac_item(path: Path) -> bool:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("type") == "Feature" and isinstance(d.get("assets"), dict)


def scene_from_stac(path: str | Path) -> Scene:
    """A STAC item's band assets (``eo:bands``, one band each) and its ``scl`` asset, as local files."""
    path = Path(path)
    try:
        item = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable STAC item JSON ({err})") from err
    bands, scales, mask = [], {}, None
    for key, asset in item.get("assets", {}).items():
        href = asset.get("href", "")
        if not href.lower().split("?")[0].endswith(RASTER_EXTENSIONS):
            continue
        local = _local_file(href, path.parent)
        if key.lower() == "scl":
            mask = str(local) if local else None
            continue
        eo = asset.get("eo:bands") or []
        if len(eo) != 1 or local is None:
            continue
        name = _band_name(Path(urlparse(href).path).name, eo[0])
        wl = eo[0].get("center_wavelength")
        gsd = asset.get("gsd") or (SENTINEL2[name].gsd_m if name in SENTINEL2 else None)
        bands.append(BandSource(name, str(local), 1, round(wl * 1000, 1) if wl else None, gsd))
        scale = (asset.get("raster:bands") or [{}])[0].get("scale")
        if scale is not None:
            scales[name] = float(scale)
    if not bands:
        raise DataError(f"{path}: no band asset of the STAC item is a local raster (looked next to the JSON)")
    bands.sort(key=lambda b: s2_sort_key(b.name))
    return Scene(str(item.get("id") or path.stem), bands, mask, scales, source=str(path))


def _band_name(file_name: str, eo: dict) -> str:
    m = _BAND_FILE.match(file_name)
    return m["band"].upper() if m else str(eo.get("name") or file_name)


def _local_file(href: str, folder: Path) -> Path | None:
    parsed = urlparse(href)
    candidates = [Path(parsed.path)] if parsed.scheme in ("", "file") else []
    for c in [*candidates, Path(Path(parsed.path).name)]:
        c = c if c.is_absolute() else folder / c
        if c.is_file():
            return c
    return None


def _multiband_or_unreadable(path: Path) -> Scene:
    """The multiband scene, or for a file that does not open a one-band stand-in whose reading fails (so the
    archive's other scenes go on and this one is reported, not lost in the search)."""
    try:
        return scene_from_multiband(path)
    except DataError:
        return Scene(path.stem, [BandSource("band_1", str(path))], source=str(path))


def scene_from_multiband(path: str | Path) -> Scene:
    """One raster with all bands; band names from the file's band descriptions, else ``band_<i>``."""
    import rasterio

    path = Path(path)
    try:
        with rasterio.open(path) as ds:
            names = [d if d else f"band_{i + 1}" for i, d in enumerate(ds.descriptions)]
            gsd = float(abs(ds.res[0]))
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"{path}: not a readable raster ({' '.join(str(err).split())[:200]})") from err
    bands = [BandSource(n, str(path), i + 1, None, gsd) for i, n in enumerate(names)]
    return Scene(path.stem, bands, None, source=str(path))


# ---------------------------------------------------------------------------------------------- reading windows
@dataclass
class Grid:
    crs: str
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f)
    width: int
    height: int
    gsd: float

    def to_dict(self) -> dict:
        return asdict(self)


class SceneReader:
    """Windows of all bands of a scene on one grid. ``read(row, col, size)`` gives ``(C, size, size)`` float32."""

    def __init__(self, scene: Scene, gsd: float | None = None, bands: list[str] | None = None):
        import rasterio
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.scene = scene
        wanted = bands or scene.band_names
        missing = [b for b in wanted if b not in scene.band_names]
        if missing:
            raise DataError(f"scene {scene.name}: no band {missing[0]}; it has {', '.join(scene.band_names)}")
        self.bands = [next(b for b in scene.bands if b.name == n) for n in wanted]
        self._files: dict[str, rasterio.DatasetReader] = {}
        try:
            for path in dict.fromkeys([b.path for b in self.bands] + ([scene.mask] if scene.mask else [])):
                self._files[path] = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            self.close()
            raise DataError(f"scene {scene.name}: unreadable raster ({' '.join(str(err).split())[:200]})") from err
        finest = min(self._files.values(), key=lambda ds: abs(ds.res[0]))
        self._check_alignment(finest)
        if gsd is None:  # the finest band's own grid (pixels may be non-square)
            transform, width, height = finest.transform, finest.width, finest.height
            res = float(np.mean(np.abs(finest.res)))
        else:
            res = float(gsd)
            left, bottom, right, top = finest.bounds
            width, height = round((right - left) / res), round((top - bottom) / res)
            transform = Affine(res, 0.0, left, 0.0, -res, top)
        self.grid = Grid(finest.crs.to_string(), tuple(transform)[:6], width, height, res)
        common = {"crs": finest.crs, "transform": transform, "width": width, "height": height}
        self._sources = {}
        for path, ds in self._files.items():
            if ds.transform == transform and (ds.width, ds.height) == (width, height):
                self._sources[path] = ds  # on the grid already: read the file itself
            else:
                method = Resampling.nearest if path == scene.mask else Resampling.bilinear
                self._sources[path] = WarpedVRT(ds, resampling=method, **common)

    def _check_alignment(self, ref) -> None:
        for path, ds in self._files.items():
            if ds.crs != ref.crs:
                raise DataError(f"scene {self.scene.name}: {path} is in {ds.crs}, {ref.name} in {ref.crs}")
            tol = max(abs(ds.res[0]), abs(ref.res[0]))
            if any(abs(a - b) > tol for a, b in zip(ds.bounds, ref.bounds)):
                raise DataError(
                    f"scene {self.scene.name}: {path} covers {tuple(round(v) for v in ds.bounds)}, "
                    f"{ref.name} {tuple(round(v) for v in ref.bounds)}: bands of one scene must cover the same extent"
                )

    def read(self, row: int, col: int, size: int, out_size: int | None = None) -> np.ndarray:
        """Bands in order, ``(C, out_size, out_size)`` float32, for the grid window at ``(row, col)`` of ``size`` px."""
        from rasterio.windows import Window

        window, shape = Window(col, row, size, size), (out_size or size,) * 2
        out = np.empty((len(self.bands), *shape), np.float32)
        for i, b in enumerate(self.bands):
            out[i] = self._sources[b.path].read(b.index, window=window, out_shape=shape)
        return out

    def read_mask(self, row: int = 0, col: int = 0, size: int | None = None, out_shape=None) -> np.ndarray | None:
        """The SCL classes on the grid (whole scene when ``size`` is None), nearest neighbour; None without SCL."""
        if self.scene.mask is None:
            return None
        return self._read_one(self._sources[self.scene.mask], 1, row, col, size, out_shape)

    def read_nodata(self, row: int = 0, col: int = 0, size: int | None = None, out_shape=None) -> np.ndarray:
        """True where the first band is the file's nodata value (all False when the file declares none)."""
        b = self.bands[0]
        vrt = self._sources[b.path]
        values = self._read_one(vrt, b.index, row, col, size, out_shape)
        nodata = self._files[b.path].nodata
        return np.zeros(values.shape, bool) if nodata is None else values == nodata

    def _read_one(self, vrt, index: int, row: int, col: int, size: int | None, out_shape) -> np.ndarray:
        from rasterio.windows import Window

        window = None if size is None else Window(col, row, size, size)
        return vrt.read(index, window=window, out_shape=out_shape)

    def close(self) -> None:
        for v in getattr(self, "_sources", {}).values():
            if v not in self._files.values():
                v.close()
        for ds in self._files.values():
            ds.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
