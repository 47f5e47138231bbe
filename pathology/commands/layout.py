"""``domainfm layout format=trident|clam data.coords=<domainfm tile output> out=<dir>``: the tile coordinates (and,
with ``data.features``, the patch features) rewritten in TRIDENT's or CLAM's own layout, so their tools read them
unchanged (:mod:`domainfm.pathology.interop`); CLAM's needs the slides (``data.root``) for their pyramid levels."""

from __future__ import annotations

from pathlib import Path

from domainfm.errors import ConfigError
from domainfm.pathology.interop import write_clam_layout, write_trident_layout
from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig) -> Path:
    for key in ("format", "data.coords", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required: domainfm layout format=trident|clam data.coords=<tiles> out=<dir>")
    out = Path(cfg.out).expanduser()
    features = cfg.data.get("features")
    if cfg.format == "trident":
        folders = write_trident_layout(cfg.data.coords, out, features, encoder=str(cfg.encoder))
        print(f"TRIDENT layout: {', '.join(str(f) for f in folders)} (patches/<slide>_patches.h5"
              + (f", features_{cfg.encoder}/<slide>.h5)" if features else ")"))  # fmt: skip
    elif cfg.format == "clam":
        if not cfg.data.get("root"):
            raise ConfigError("format=clam needs data.root=<the slides>: CLAM reads each tile at a pyramid level")
        write_clam_layout(cfg.data.coords, cfg.data.root, out, features)
        print(f"CLAM layout: {out}/patches/<slide>.h5" + (", h5_files/, pt_files/" if features else ""))
    else:
        raise ConfigError(f"format={cfg.format!r}; choose trident or clam")
    return out
