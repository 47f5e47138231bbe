"""domainfm.medical: DICOM series, NIfTI and NRRD volumes, spacing and orientation, windowing, LVM-Med."""

from domainfm.extras import require_domain

require_domain(__file__)
