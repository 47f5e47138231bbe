"""Tissue contours as GeoJSON in level-0 pixel coordinates (QuPath: File > Import objects, or drag the file in).

Written by hand with shapely's ``mapping``/``shape``; each polygon is a QuPath annotation classified "Tissue".
Reading accepts a FeatureCollection, a list of Features (QuPath's export), a Feature or a bare geometry.
"""

from __future__ import annotations

import json
from pathlib import Path

from domainfm.errors import DataError

TISSUE_CLASS = {"name": "Tissue", "color": [0, 170, 0]}


def polygons_to_geojson(polygons: list) -> dict:
    from shapely.geometry import mapping

    features = []
    for poly in polygons:
        geometry = mapping(poly if poly.is_valid else poly.buffer(0))
        features.append(
            {
                "type": "Feature",
                "geometry": _rounded(geometry),
                "properties": {"objectType": "annotation", "classification": TISSUE_CLASS},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _rounded(geometry: dict) -> dict:
    def walk(value):
        if isinstance(value, (list, tuple)):
            if value and isinstance(value[0], (int, float)):
                return [round(float(v), 1) for v in value]
            return [walk(v) for v in value]
        return value

    return {"type": geometry["type"], "coordinates": walk(geometry["coordinates"])}


def write_geojson(polygons: list, path: str | Path) -> None:
    Path(path).write_text(json.dumps(polygons_to_geojson(polygons)))


def read_geojson(path: str | Path) -> list:
    """Polygons (shapely, level-0 pixels) of a GeoJSON file; a :class:`DataError` naming the file if it holds none."""
    from shapely.geometry import shape

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable GeoJSON file ({err}); export the annotations again") from err
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features", [])
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    polygons = []
    for item in items:
        geometry = item.get("geometry", item) if isinstance(item, dict) else None
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        geom = shape(geometry)
        geom = geom if geom.is_valid else geom.buffer(0)
        polygons.extend(getattr(geom, "geoms", [geom]))
    if not polygons:
        raise DataError(f"{path}: holds no Polygon/MultiPolygon; draw the tissue as polygons and export GeoJSON")
    return polygons
