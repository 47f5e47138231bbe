"""Open any slide: OpenSlide for whole-slide formats, tifffile/Pillow for plain single-level TIFF/PNG/JPEG regions.

Every read returns ``H x W x 3`` uint8 RGB, white where nothing was scanned. Label and macro images
(``associated_images``) are never touched, and slide properties are never logged: they can carry patient names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openslide
from domainfm.errors import DataError
from domainfm.pathology.mpp import magnification, mpp_from_properties, mpp_from_resolution, plausible, resolve_mpp
from PIL import Image

# OpenSlide formats (https://openslide.org/formats/) and plain images read through tifffile/Pillow.
WSI_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".dcm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SLIDE_EXTENSIONS = tuple(dict.fromkeys(WSI_EXTENSIONS + IMAGE_EXTENSIONS))
LEVEL_TOLERANCE = 0.01  # a pyramid level within 1% of the wanted downsample is used as is (TRIDENT: 0.01)
MAX_IMAGE_PIXELS = 1 << 28  # plain images are held in memory (768 MB RGB at most); larger ones must be tiled
_BLOCK = 1024  # largest side of one read while streaming a thumbnail (4 MiB of RGBA)

Size = int | Sequence[int]


def _pair(size: Size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


class _OpenSlideReader:
    backend = "openslide"

    def __init__(self, path: Path):
        self.handle = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple(self.handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self.handle.level_downsamples)
        props = self.handle.properties
        # slides whose scanned area is not the whole rectangle (MIRAX, VMS, Leica, ...) announce their bounds
        self.sparse = openslide.PROPERTY_NAME_BOUNDS_X in props
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.objective_power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.found_mpp, self.found_source = mpp_from_properties(props)

    def read_image(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """The region as an opaque RGBA image (OpenSlide's own, no copy)."""
        region = self.handle.read_region(location, level, size)
        if self._maybe_transparent(location, level, size) and region.getextrema()[3][0] < 255:
            # outside the scanned area: composite on white (OpenSlide returns transparent black there)
            canvas = Image.new("RGBA", region.size, (255, 255, 255, 255))
            canvas.alpha_composite(region)
            region = canvas
        return region

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return rgb_array(self.read_image(location, level, size))

    def _maybe_transparent(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> bool:
        """Whether the region can hold unscanned pixels: it passes the slide's edge, or the slide is sparse."""
        (x, y), (w, h), ds = location, size, self.level_downsamples[level]
        width, height = self.level_dimensions[0]
        return self.sparse or x < 0 or y < 0 or x + w * ds > width or y + h * ds > height

    def set_cache(self, cache: openslide.OpenSlideCache) -> None:
        self.handle.set_cache(cache)

    def close(self) -> None:
        self.handle.close()


class _WsiDicomReader:
    """DICOM WSI through wsidicom, for series OpenSlide refuses: the VOLUME instances only (label, overview and
    thumbnail instances are never opened; headers are read to tell them apart, and no header field is kept)."""

    backend = "wsidicom"
    vendor = "dicom"
    objective_power = None
    sparse = False

    def __init__(self, path: Path):
        import pydicom
        from wsidicom import WsiDicom

        folder = path if path.is_dir() else path.parent
        volumes = []
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            try:
                header = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["ImageType"])
            except Exception:  # noqa: BLE001 - not DICOM: not part of the slide
                continue
            flavor = list(header.get("ImageType", []))[2:3]
            if flavor == ["VOLUME"]:
                volumes.append(f)
        if not volumes:
            raise DataError(f"{folder}: no DICOM whole-slide VOLUME instance (ImageType value 3)")
        self.handle = WsiDicom.open(volumes)
        levels = list(self.handle.levels)
        self._levels = [lv.level for lv in levels]
        self.level_dimensions = tuple((int(lv.size.width), int(lv.size.height)) for lv in levels)
        width0 = self.level_dimensions[0][0]
        self.level_downsamples = tuple(width0 / w for w, _ in self.level_dimensions)
        mpp = float(levels[0].mpp.width)
        self.found_mpp, self.found_source = (mpp, "dicom.PixelSpacing") if plausible(mpp) else (None, None)

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide's contract: ``location`` in level-0 pixels, white outside the image."""
        ds = self.level_downsamples[level]
        width, height = self.level_dimensions[level]
        x, y = round(location[0] / ds), round(location[1] / ds)
        out = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size[0], width), min(y + size[1], height)
        if x1 > x0 and y1 > y0:
            region = self.handle.read_region((x0, y0), self._levels[level], (x1 - x0, y1 - y0))
            out[y0 - y : y1 - y, x0 - x : x1 - x] = np.asarray(region.convert("RGB"))
        return out

    def read_image(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        return Image.fromarray(self.read(location, level, size))

    def set_cache(self, cache: openslide.OpenSlideCache) -> None:
        pass

    def close(self) -> None:
        self.handle.close()


class _ImageReader:
    """A plain image held in memory (regions, tiles, small scans): one level."""

    backend = "image"
    vendor = None
    objective_power = None

    def __init__(self, path: Path):
        self.found_mpp, self.found_source = None, None
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                self._check_size(path, page.shape[0] * page.shape[1])
                array = page.asarray()
                x_res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
                if x_res is not None and unit is not None:
                    num, den = x_res.value
                    unit_name = {2: "inch", 3: "centimeter"}.get(int(unit.value))
                    self._found(mpp_from_resolution(num / den if den else 0, unit_name), "tiff.XResolution")
            array = _to_rgb(array, path)
        else:
            with Image.open(path) as im:
                self._check_size(path, im.width * im.height)
                dpi = im.info.get("dpi")
                if dpi:
                    self._found(mpp_from_resolution(float(dpi[0]), "inch"), "dpi")
                array = np.asarray(im.convert("RGB"))
        self.array = np.ascontiguousarray(array)
        self.level_dimensions = ((self.array.shape[1], self.array.shape[0]),)
        self.level_downsamples = (1.0,)

    @staticmethod
    def _check_size(path: Path, pixels: int) -> None:
        if pixels > MAX_IMAGE_PIXELS:
            raise DataError(f"{path}: a {pixels / 1e6:.0f}-megapixel plain image; convert it to a tiled pyramidal TIFF")

    def _found(self, mpp: float | None, source: str) -> None:
        if plausible(mpp):
            self.found_mpp, self.found_source = round(mpp, 4), source

    def read_image(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        return Image.fromarray(self.read(location, level, size))

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        (x, y), (w, h) = location, size
        height, width = self.array.shape[:2]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.array[y0:y1, x0:x1]
        return out

    def set_cache(self, cache: openslide.OpenSlideCache) -> None:
        """Held in memory already: nothing to cache."""

    def close(self) -> None:
        self.array = np.zeros((0, 0, 3), dtype=np.uint8)


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DataError(f"{path}: image of shape {array.shape} is not RGB; save it as an 8-bit RGB TIFF/PNG")
    if array.dtype != np.uint8:
        scale = 255.0 / max(1.0, float(np.iinfo(array.dtype).max if array.dtype.kind in "iu" else array.max()))
        array = np.clip(array.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    return array[..., :3]


class Slide:
    """A whole-slide image or a plain image region.

    ``mpp`` is resolved when first used: the metadata chain (:mod:`domainfm.pathology.mpp`), else the ``mpp``
    given here (``data.mpp=`` / the list's ``mpp`` column), else a :class:`DataError` naming the slide.
    Reading tiles by level-0 coordinates never needs the MPP.
    """

    def __init__(self, path: str | Path, mpp: float | None = None):
        self.path = Path(path)
        self.name = slide_name(self.path)
        self._mpp_override = mpp
        self._mpp: tuple[float, str] | None = None
        if not self.path.exists():
            raise DataError(f"{self.path}: no such slide")
        try:
            fmt = openslide.OpenSlide.detect_format(str(self.path))
        except openslide.OpenSlideError:
            fmt = None
        try:
            if self.path.suffix.lower() == ".dcm":
                self._reader = _open_dicom(self.path, fmt)
            elif fmt is not None:
                self._reader = _OpenSlideReader(self.path)
            elif self.path.suffix.lower() in IMAGE_EXTENSIONS:
                self._reader = _ImageReader(self.path)
            elif _tiff_magic(self.path):  # a TIFF-based slide (svs, ndpi, scn, bif) OpenSlide cannot read
                raise DataError(
                    f"{self.path}: truncated or corrupt slide (a TIFF whose structure OpenSlide cannot read); "
                    "copy it again from the scanner or archive, or remove it"
                )
            else:
                raise DataError(
                    f"{self.path}: not a slide format OpenSlide reads (svs, ndpi, mrxs, scn, vms, bif, tiled TIFF, "
                    "DICOM) nor a plain TIFF/PNG/JPEG; convert it to a tiled pyramidal TIFF"
                )
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - openslide/tifffile/Pillow raise many types for broken files
            raise DataError(f"{self.path}: unreadable slide ({_one_line(err)}); re-export or remove it") from err
        self.backend: str = self._reader.backend
        self.vendor: str | None = self._reader.vendor
        self.level_dimensions: tuple[tuple[int, int], ...] = self._reader.level_dimensions
        self.level_downsamples: tuple[float, ...] = self._reader.level_downsamples

    # ------------------------------------------------------------------ metadata
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float:
        """Level-0 micrometres per pixel."""
        return self._resolve_mpp()[0]

    @property
    def mpp_source(self) -> str:
        """Where the MPP came from: a metadata key, ``override``."""
        return self._resolve_mpp()[1]

    @property
    def magnification(self) -> int:
        """Nominal level-0 objective magnification (from the MPP, as TRIDENT bins it)."""
        return magnification(self.mpp, self._reader.objective_power)

    def _resolve_mpp(self) -> tuple[float, str]:
        if self._mpp is None:
            self._mpp = resolve_mpp(
                str(self.path), self._reader.found_mpp, self._reader.found_source, self._mpp_override
            )
        return self._mpp

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (within :data:`LEVEL_TOLERANCE`)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + LEVEL_TOLERANCE):
                best = level
        return best

    # ------------------------------------------------------------------ reading
    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray:
        """``size`` pixels of ``level`` whose top-left is ``location`` in level-0 pixels, as ``H x W x 3`` uint8."""
        return self._read(location, level, _pair(size))

    def _read(
        self, location: tuple[int, int], level: int, size: tuple[int, int], resize: tuple[int, int] | None = None
    ) -> np.ndarray:
        """The region as ``H x W x 3`` uint8 (possibly read-only), resampled to ``resize = (width, height)``."""
        try:
            location = (int(location[0]), int(location[1]))
            if resize is None or resize == size:
                return self._reader.read(location, level, size)
            return rgb_array(_resize(self._reader.read_image(location, level, size), resize))
        except Exception as err:  # noqa: BLE001 - a corrupt tile surfaces as OpenSlideError/OSError/ValueError
            raise DataError(f"{self.path}: unreadable region at {tuple(location)} ({_one_line(err)})") from err

    def read_tile(self, x0: int, y0: int, size0: Size, out_size: Size) -> np.ndarray:
        """The level-0 box ``(x0, y0, size0)`` resampled to ``out_size`` pixels, read from the best pyramid level.

        ``H x W x 3`` uint8, possibly read-only (``np.array`` it to write)."""
        (w0, h0), (w, h) = _pair(size0), _pair(out_size)
        level = self.best_level(min(w0 / w, h0 / h))
        ds = self.level_downsamples[level]
        return self._read((x0, y0), level, (max(1, round(w0 / ds)), max(1, round(h0 / ds))), (w, h))

    def read_region_at_mpp(self, x0: int, y0: int, size_px: Size, target_mpp: float) -> np.ndarray:
        """``size_px`` pixels at ``target_mpp`` um/px whose top-left is ``(x0, y0)`` in level-0 pixels."""
        w, h = _pair(size_px)
        scale = self.level0_scale(target_mpp)
        return self.read_tile(x0, y0, (round(w * scale), round(h * scale)), (w, h))

    def level0_scale(self, target_mpp: float) -> float:
        """Level-0 pixels per pixel at ``target_mpp``; snapped to 1 within :data:`LEVEL_TOLERANCE` (so a 0.499
        um/px slide read at 0.5 um/px is not resampled)."""
        scale = target_mpp / self.mpp
        return 1.0 if abs(scale - 1.0) <= LEVEL_TOLERANCE else scale

    def set_cache(self, cache: openslide.OpenSlideCache) -> None:
        """Share OpenSlide's decoded-tile cache with other slides (``openslide.OpenSlideCache(bytes)``; 0 bytes
        decodes every read). Each slide otherwise keeps its own 32 MiB cache."""
        self._reader.set_cache(cache)

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` um/px, from the best pyramid level, read block by block (memory stays flat
        for any slide size). Never the vendor's associated thumbnail/label/macro images."""
        width, height = self.dimensions
        ds = max(mpp / self.mpp, 1e-9)
        out_w, out_h = max(1, round(width / ds)), max(1, round(height / ds))
        level = self.best_level(ds)
        per_out = ds / self.level_downsamples[level]  # level pixels per output pixel
        block = max(1, math.floor(_BLOCK / max(per_out, 1.0)))
        canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for oy in range(0, out_h, block):
            for ox in range(0, out_w, block):
                bw, bh = min(block, out_w - ox), min(block, out_h - oy)
                x0, y0 = round(ox * ds), round(oy * ds)
                x1, y1 = min(width, round((ox + bw) * ds)), min(height, round((oy + bh) * ds))
                lw = max(1, round((x1 - x0) / self.level_downsamples[level]))
                lh = max(1, round((y1 - y0) / self.level_downsamples[level]))
                canvas[oy : oy + bh, ox : ox + bw] = self._read((x0, y0), level, (lw, lh), (bw, bh))
        return canvas

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self._mpp[0]} um/px" if self._mpp else "mpp unresolved"
        return f"Slide({self.name}, {self.dimensions[0]}x{self.dimensions[1]}, {self.level_count} levels, {mpp})"


def _open_dicom(path: Path, fmt: str | None) -> _OpenSlideReader | _WsiDicomReader:
    """OpenSlide's DICOM driver, else wsidicom (OpenSlide 4.0.1 refuses some valid series); both failing is one
    error naming both reasons."""
    try:
        if fmt is None:
            raise openslide.OpenSlideUnsupportedFormatError("not recognised")
        return _OpenSlideReader(path)
    except openslide.OpenSlideError as first:
        try:
            return _WsiDicomReader(path)
        except ImportError:
            raise DataError(f"{path}: OpenSlide cannot read it ({_one_line(first)}); pip install wsidicom") from first
        except Exception as second:  # noqa: BLE001 - wsidicom raises its own error types
            raise DataError(
                f"{path}: neither OpenSlide ({_one_line(first)}) nor wsidicom ({_one_line(second)}) reads this DICOM "
                "series; check that its folder holds one slide's VOLUME instances"
            ) from second


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide (OpenSlide formats, DICOM WSI, plain TIFF/PNG/JPEG); a :class:`DataError` naming the file if
    it cannot be read. ``mpp`` is the fallback used when the metadata has none."""
    return Slide(path, mpp=mpp)


def slide_name(path: str | Path) -> str:
    """The slide's name in outputs: the file stem, or the folder name for a DICOM series folder."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    return path.stem


def rgb_array(image: Image.Image) -> np.ndarray:
    """An RGB or RGBA image as ``H x W x 3`` uint8 (alpha dropped), read-only: Pillow packs it in one pass, about
    3x faster than ``np.asarray(image.convert("RGB"))``, which converts and then packs."""
    return np.frombuffer(image.tobytes("raw", "RGB"), np.uint8).reshape(image.height, image.width, 3)


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's bilinear resampling (antialiased when shrinking) to ``size = (width, height)``, as RGB (an opaque
    RGBA image is converted first: Pillow would resample RGBA premultiplied, twice the passes for the same pixels)."""
    return image.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:200] if text else type(err).__name__


def _tiff_magic(path: Path) -> bool:
    """The file starts like a TIFF or BigTIFF (``II*\\0``, ``MM\\0*``, ``II+\\0``, ``MM\\0+``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
