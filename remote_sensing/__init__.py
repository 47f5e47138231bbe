"""domainfm.remote_sensing: multiband GeoTIFF chips, band statistics and normalisation, RS-M-CLIP."""

from domainfm.extras import require_domain

require_domain(__file__)
