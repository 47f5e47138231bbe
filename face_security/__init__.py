"""domainfm.face_security: face detection and alignment, region parsing, CRFR-P masking, FSFM."""

from domainfm.extras import require_extra

require_extra("face", ["cv2", "skimage"], package="face_security")
