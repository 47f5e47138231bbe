"""domainfm.pathology: whole-slide images, tissue detection, tiling, stain augmentation, UNI, Madeleine."""

from domainfm.extras import require_domain

require_domain(__file__)
