"""domainfm.face_security: face detection and alignment, region parsing, CRFR-P masking, FSFM."""

from domainfm.extras import require_domain

require_domain(__file__)
