"""Band metadata: Sentinel-2 MSI bands (name, centre wavelength, native ground sampling distance) and the L2A Scene
Classification Layer (SCL) classes.

Sentinel-2 values from ESA's MSI spectral response (S2A centre wavelengths, as in the Earth Search STAC items'
``eo:bands``); the band order is SSL4EO-S12's / torchgeo's (B8A after B08). L2A products have no B10 (cirrus, used
only in L1C), so an L2A scene carries 12 bands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Band:
    name: str
    wavelength_nm: float | None = None  # centre wavelength
    gsd_m: float | None = None  # native ground sampling distance

    def to_dict(self) -> dict:
        return asdict(self)


SENTINEL2 = {
    b.name: b
    for b in (
        Band("B01", 443, 60),
        Band("B02", 490, 10),
        Band("B03", 560, 10),
        Band("B04", 665, 10),
        Band("B05", 704, 20),
        Band("B06", 740, 20),
        Band("B07", 783, 20),
        Band("B08", 842, 10),
        Band("B8A", 865, 20),
        Band("B09", 945, 60),
        Band("B10", 1375, 60),
        Band("B11", 1610, 20),
        Band("B12", 2190, 20),
    )
}
S2_ORDER = list(SENTINEL2)  # B01 .. B08, B8A, B09 .. B12

# Landsat 8/9 OLI/TIRS Collection 2 Level-2 (USGS Landsat 8-9 C2 L2 Science Product Guide): surface reflectance
# SR_B1..SR_B7 (reflectance = DN * 2.75e-5 - 0.2, i.e. scale 2.75e-5 with offset -7272.73 DN), ST_B10 surface
# temperature (kelvin = DN * 0.00341802 + 149.0; 100 m native, delivered at 30 m).
LANDSAT89 = {
    b.name: b
    for b in (
        Band("SR_B1", 443, 30),
        Band("SR_B2", 482, 30),
        Band("SR_B3", 561.5, 30),
        Band("SR_B4", 654.5, 30),
        Band("SR_B5", 865, 30),
        Band("SR_B6", 1608.5, 30),
        Band("SR_B7", 2200.5, 30),
        Band("ST_B10", 10895, 30),
    )
}
LANDSAT_SR_SCALE = 2.75e-5
# QA_PIXEL bits (Collection 2): 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water
QA_PIXEL_BITS = {0: "fill", 1: "dilated_cloud", 2: "cirrus", 3: "cloud", 4: "cloud_shadow", 5: "snow", 6: "clear",
                 7: "water"}  # fmt: skip
QA_INVALID_BITS = (0, 1, 2, 3, 4)  # fill, clouds (dilated, cirrus, cloud) and cloud shadow

# L2A scene classification (ESA Sen2Cor): class index -> name
SCL_CLASSES = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
# pixels that hold no usable surface reflectance by default: no data, defective, cloud shadow, clouds, cirrus
SCL_INVALID = (0, 1, 3, 8, 9, 10)


def s2_sort_key(name: str) -> int:
    """Position of a Sentinel-2 band name in :data:`S2_ORDER` (unknown names last)."""
    return S2_ORDER.index(name) if name in SENTINEL2 else len(S2_ORDER)
