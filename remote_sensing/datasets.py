"""Chips as a dataset: windows read from the scenes on demand (an archive is never loaded whole)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from domainfm.errors import DataError
from domainfm.remote_sensing.bands import SENTINEL2
from domainfm.remote_sensing.normalization import BandNormalization
from domainfm.remote_sensing.scenes import Scene, SceneReader
from torch.utils.data import Dataset


class ChipDataset(Dataset):
    """The chips listed by ``domainfm chips`` (``<chips>/chips.csv``). Sample: ``{"image": (C, H, W) float32 in
    the files' units, "meta": {"scene", "row", "col"}}``, plus ``"label"`` (the chip's majority SCL class) when
    ``labels=True``; ``scenes`` keeps the chips of those scenes only. ``bands`` selects and orders bands by name
    (default: the first scene's); every scene must have them. Scene files are opened lazily, once per worker.

    ``normalization``: ``None`` (file values), a convention (``scale``, ``meanstd``, ``percentile``: the numbers
    from ``<root>/band_stats.json``, ``scale`` / ``offset`` as in :mod:`~domainfm.remote_sensing.normalization`), a
    dict or a :class:`BandNormalization` (e.g. the one a backbone was trained with: its bands are then read,
    in its order). :meth:`preprocess_info` is what ``domainfm pretrain`` writes into the export."""

    def __init__(
        self,
        root: str | Path,
        bands: list[str] | None = None,
        min_valid: float | None = None,
        labels: bool = False,
        out_size: int | None = None,
        scenes: list[str] | None = None,
        normalization: str | dict | BandNormalization | None = None,
        scale: float | None = None,
        offset: float = 0.0,
    ):
        self.root = Path(root).expanduser()
        table = self.root / "chips.csv"
        if not table.is_file():
            raise DataError(f"{self.root} has no chips.csv: write it with domainfm chips data.root=<scenes> out={root}")
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if scenes is not None:
            rows = [r for r in rows if r["scene"] in set(scenes)]
        if min_valid is not None:
            rows = [r for r in rows if float(r["valid"]) >= min_valid]
        if labels:
            rows = [r for r in rows if int(r["scl_class"]) >= 0]
        if not rows:
            raise DataError(f"{table}: no chip left (min_valid={min_valid}, labels={labels})")
        self.rows = [(r["scene"], int(r["row"]), int(r["col"]), int(r["size"]), int(r["scl_class"])) for r in rows]
        self.infos = {
            n: json.loads((self.root / "scenes" / f"{n}.json").read_text()) for n in {r[0] for r in self.rows}
        }
        first = self.infos[self.rows[0][0]]
        if isinstance(normalization, dict):
            normalization = BandNormalization.from_dict(normalization)
        if isinstance(normalization, BandNormalization):  # the weights' bands, in their order
            if bands:
                normalization.check_bands(bands, "data.dataset.bands")
            bands = normalization.bands
        self.bands = list(bands) if bands else [b["name"] for b in first["scene"]["bands"]]
        for name, info in self.infos.items():
            have = [b["name"] for b in info["scene"]["bands"]]
            missing = [b for b in self.bands if b not in have]
            if missing:
                raise DataError(
                    f"scene {name} has no band {', '.join(missing)} (it has {', '.join(have)}): "
                    "select bands every scene has with data.dataset.bands=[...]"
                )
        self.labels, self.out_size = labels, out_size
        self.in_chans = len(self.bands)
        if isinstance(normalization, str):
            scale = self.file_scale() if scale is None else scale
            normalization = BandNormalization.from_chips(self.root, self.bands, normalization, scale, offset)
        self.normalization: BandNormalization | None = normalization
        self._readers: dict[str, SceneReader] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def reader(self, scene: str) -> SceneReader:
        if scene not in self._readers:
            info = self.infos[scene]
            # the grid the chips were indexed on: the finest band's own (gsd null; pixels may be non-square) or
            # the one asked for with chips.gsd
            gsd = info.get("params", {}).get("gsd")
            self._readers[scene] = SceneReader(Scene.from_dict(info["scene"]), gsd, self.bands)
        return self._readers[scene]

    def __getitem__(self, i: int) -> dict:
        scene, row, col, size, cls = self.rows[i]
        image = self.reader(scene).read(row, col, size, self.out_size)
        image = torch.from_numpy(self.normalization(image) if self.normalization else image.astype(np.float32))
        sample = {"image": image, "meta": {"scene": scene, "row": row, "col": col}}
        if self.labels:
            sample["label"] = cls
        return sample

    def __getstate__(self) -> dict:  # readers hold open files: each worker opens its own
        return {**self.__dict__, "_readers": {}}

    def file_scale(self) -> float:
        """File values -> reflectance: the scenes' STAC ``raster:bands`` scale when they agree, else 1 / 10000."""
        found = {info["scene"].get("scales", {}).get(b) for info in self.infos.values() for b in self.bands}
        return float(found.pop()) if len(found) == 1 and None not in found else 1e-4

    def describe(self, i: int) -> str:
        scene, row, col, size, _ = self.rows[i]
        return f"{scene} chip at row {row}, col {col} ({size} px)"

    def classes(self) -> np.ndarray:
        return np.array([r[4] for r in self.rows])

    def preprocess_info(self, img_size: int | None = None) -> dict:
        """Band names and centre wavelengths, the grid's GSD, the chip side (px and m), the GSD the model input
        is seen at, and the normalisation: what ``domainfm pretrain`` records in the export."""
        first = self.infos[self.rows[0][0]]
        gsd, chip_px = float(first["grid"]["gsd"]), int(self.rows[0][3])
        wavelengths = {b["name"]: b.get("wavelength_nm") for b in first["scene"]["bands"]}
        info = {
            "bands": list(self.bands),
            "wavelengths_nm": [
                wavelengths.get(b) or getattr(SENTINEL2.get(b), "wavelength_nm", None) for b in self.bands
            ],
            "gsd_m": gsd,
            "chip_px": chip_px,
            "chip_m": chip_px * gsd,
        }
        side = self.out_size or img_size
        if side:
            info["input_gsd_m"] = chip_px * gsd / int(side)
        if self.normalization is not None:
            info["normalization"] = self.normalization.to_dict()
        rgb = ["B04", "B03", "B02"]
        info["display_channels"] = [self.bands.index(b) for b in rgb] if set(rgb) <= set(self.bands) else None
        info["display_stretch"] = True  # figures: true colour with a 2-98 % stretch
        return info
