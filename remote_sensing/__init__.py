"""domainfm.remote_sensing: multiband GeoTIFF chips, band statistics and normalisation, RS-M-CLIP."""

from domainfm.extras import require_extra

require_extra("remote-sensing", ["rasterio"])
