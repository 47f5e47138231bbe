"""Rebuild ``remote_sensing/sample_data/sentinel2_29RKH_crop`` from ``../shared/data``: the north-east 25.2 km x 25.2 km
of the Sentinel-2 L2A tile 29RKH (the rio-tiler-pds fixture, 10x downsampled: 100 / 200 / 600 m), every band file
and the SCL layer cut on one box aligned to the 600 m grid, georeferencing kept, DEFLATE-compressed.

    .venv/bin/python tools/make_s2_crop.py
"""

from pathlib import Path

import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
TILE = REPO.parent / "shared" / "data" / "remote_sensing" / "sentinel2_l2a_29RKH"
OUT = REPO / "remote_sensing" / "sample_data" / "sentinel2_29RKH_crop"
BOX_M = (846 * 100, 0, 252 * 100, 252 * 100)  # x offset, y offset, width, height in metres from the tile's corner
NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        with rasterio.open(TILE / f"{name}.tif") as src:
            res = src.res[0]
            x, y, w, h = (int(round(v / res)) for v in BOX_M)
            window = Window(x, y, w, h)
            data = src.read(window=window)
            profile = {**src.profile, "driver": "GTiff", "width": w, "height": h, "compress": "deflate",
                       "predictor": 2, "transform": src.window_transform(window), "tiled": False}  # fmt: skip
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            with rasterio.open(OUT / f"{name}.tif", "w", **profile) as dst:
                dst.write(data)
        print(name, data.shape, (OUT / f"{name}.tif").stat().st_size)


if __name__ == "__main__":
    main()
