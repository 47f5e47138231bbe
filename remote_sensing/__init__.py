"""domainfm.remote_sensing: multiband GeoTIFF chips, band statistics and normalisation, RS-M-CLIP."""

from domainfm.extras import require_domain

require_domain(__file__)

from domainfm.remote_sensing.model import SpectralBackbone, normalization_of  # noqa: E402
from domainfm.remote_sensing.normalization import BandNormalization, select_bands  # noqa: E402

__all__ = ["BandNormalization", "SpectralBackbone", "normalization_of", "select_bands"]
