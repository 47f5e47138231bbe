"""domainfm.medical: DICOM series, NIfTI and NRRD volumes, spacing and orientation, windowing, LVM-Med."""

from domainfm.extras import require_extra

require_extra("medical", ["pydicom", "nibabel", "monai", "torchio"])
