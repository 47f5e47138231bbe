"""domainfm.pathology: whole-slide images, tissue detection, tiling, stain augmentation, UNI, Madeleine."""

from domainfm.extras import require_extra

require_extra("pathology", ["openslide", "h5py", "tifffile"])
