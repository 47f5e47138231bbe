"""domainfm.three_d: point clouds (FPS/kNN grouping), Point-MAE / I2P-MAE, radiance grids, NeRF-MAE."""

from domainfm.extras import require_domain

require_domain(__file__)
