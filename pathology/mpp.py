"""Microns per pixel (MPP) of a slide: the metadata fallback chain, then the user's override, else a clear error.

The chain follows TRIDENT (``OpenSlideWSI._fetch_mpp``): ``openslide.mpp-x`` (OpenSlide's own reading of the
vendor metadata), then vendor keys (``aperio.MPP``, MIRAX ``MICROMETER_PER_PIXEL_X``, ``hamamatsu.XResolution``),
then the TIFF resolution tags (``XResolution`` with ``ResolutionUnit`` centimeter or inch). Unlike TRIDENT, a value
outside ``PLAUSIBLE_MPP`` is ignored: many generic TIFF/PNG writers store a 72 or 300 dpi default, which would read
as 352.8 or 84.7 um/px.
"""

from __future__ import annotations

from collections.abc import Mapping

from domainfm.errors import DataError

PLAUSIBLE_MPP = (0.05, 20.0)  # um/px: 0.05 is beyond any scanner's 100x; 20 is coarser than a 0.5x overview
MPP_KEYS = (
    "openslide.mpp-x",
    "aperio.MPP",
    "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X",
    "openslide.mirax.MPP",
    "hamamatsu.XResolution",
)
_UNIT_UM = {"centimeter": 10_000.0, "cm": 10_000.0, "inch": 25_400.0, "in": 25_400.0}


def plausible(mpp: float | None) -> bool:
    return mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def mpp_from_resolution(x_resolution: float | None, unit: str | None) -> float | None:
    """MPP from a TIFF-style resolution (pixels per ``unit``), or None for a missing/unknown unit or a zero value."""
    if not x_resolution or not unit:
        return None
    scale = _UNIT_UM.get(str(unit).strip().lower())
    return None if scale is None else scale / float(x_resolution)


def mpp_from_properties(properties: Mapping[str, str]) -> tuple[float | None, str | None]:
    """``(mpp, key it came from)`` from OpenSlide-style properties, or ``(None, None)``."""
    for key in MPP_KEYS:
        try:
            value = float(properties[key])
        except (KeyError, TypeError, ValueError):
            continue
        if plausible(value):
            return round(value, 4), key
    try:
        x_resolution = float(properties.get("tiff.XResolution") or 0)
        value = mpp_from_resolution(x_resolution, properties.get("tiff.ResolutionUnit"))
    except ValueError:
        value = None
    if plausible(value):
        return round(value, 4), "tiff.XResolution"
    return None, None


def resolve_mpp(name: str, found: float | None, found_source: str | None, override: float | None) -> tuple[float, str]:
    """The slide's MPP and where it came from: the metadata (``found``), else ``override`` (``data.mpp=`` or the
    list's ``mpp`` column), else a :class:`DataError` that names the slide and both ways to give it."""
    if found is not None:
        return float(found), str(found_source)
    if override is not None:
        value = float(override)
        if value <= 0:
            raise DataError(f"{name}: MPP override {override} must be a positive number of micrometres per pixel")
        return value, "override"
    raise DataError(
        f"{name}: no microns-per-pixel in the slide's metadata; give it with data.mpp=<um/px> "
        f"(all slides without one) or an 'mpp' column in the slide list data.csv=<file.csv>"
    )


def magnification(mpp: float, objective_power: str | float | None = None) -> int:
    """Nominal objective magnification, binned from the MPP as TRIDENT does (<0.16: 80x, <0.2: 60x, <0.3: 40x,
    <0.6: 20x, <1.2: 10x, <2.4: 5x), else the slide's objective power, else ``round(10 / mpp)``."""
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < limit:
            return mag
    try:
        return int(float(objective_power))
    except (TypeError, ValueError):
        return max(1, round(10.0 / mpp))
