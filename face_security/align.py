"""Face detection, landmarks and alignment with the models MediaPipe ships in its wheel (offline).

:class:`FaceAnalyzer` runs MediaPipe's face mesh (478 points with the iris refinement; its own BlazeFace detector
inside) and selfie segmentation on an RGB frame. :func:`align_face` maps five mesh points (eye centres, nose
tip, mouth corners) onto the ArcFace 5-point template by a similarity transform (least squares, Umeyama), with
the template shrunk by ``margin`` about the crop centre so the crop holds ``margin`` times the template's face
(1.3: FSFM/FaceForensics++'s box x 1.3), and warps the image, the landmarks and the person mask together.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from domainfm.face_security.parsing import LEFT_EYE, RIGHT_EYE
from skimage.transform import SimilarityTransform

# ArcFace's 5-point template on a 112 x 112 crop (insightface): image-left eye, image-right eye, nose, mouth corners
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 1, 61, 291


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The template's five points from a 478-point mesh ``(478, 2)``: eye centres (mean of each eye outline), nose
    tip, mouth corners, in image order (image-left first)."""
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    return np.stack([pts[RIGHT_EYE].mean(0), pts[LEFT_EYE].mean(0), pts[NOSE_TIP], pts[MOUTH_LEFT], pts[MOUTH_RIGHT]])


def template(size: int, margin: float) -> np.ndarray:
    """The ArcFace template scaled to ``size`` px and shrunk by ``margin`` about the crop centre."""
    return ((ARCFACE_TEMPLATE - 56.0) / margin + 56.0) * (size / 112.0)


@dataclass
class Face:
    """One face in a frame: mesh landmarks ``(478, 2)`` in frame pixels."""

    landmarks: np.ndarray


@dataclass
class AlignedFace:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (478, 2) in crop pixels
    person: np.ndarray  # (S, S) float person probability
    matrix: np.ndarray  # (2, 3) frame -> crop


def align_face(frame: np.ndarray, face: Face, person: np.ndarray, size: int = 224, margin: float = 1.3) -> AlignedFace:
    """Warp ``frame`` (H, W, 3) so the face's five points meet the template (see the module docstring)."""
    tform = SimilarityTransform.from_estimate(five_points(face.landmarks), template(size, margin))
    matrix = tform.params[:2].astype(np.float64)
    image = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpAffine(person.astype(np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR)
    landmarks = face.landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    return AlignedFace(image, landmarks, mask, matrix)


class FaceAnalyzer:
    """MediaPipe face mesh (refined, 478 points) + selfie segmentation on RGB uint8 frames; offline.

    One instance per process (MediaPipe graphs are not shared across processes); ``close()`` frees them."""

    def __init__(self, max_faces: int = 1, min_confidence: float = 0.5):
        import mediapipe as mp

        self.mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
        )
        self.segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def faces(self, frame: np.ndarray) -> list[Face]:
        h, w = frame.shape[:2]
        result = self.mesh.process(np.ascontiguousarray(frame))
        out = []
        for lm in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h) for p in lm.landmark], dtype=np.float64)
            out.append(Face(pts))
        return out

    def person(self, frame: np.ndarray) -> np.ndarray:
        mask = self.segmenter.process(np.ascontiguousarray(frame)).segmentation_mask
        return np.asarray(mask, dtype=np.float32)

    def close(self) -> None:
        self.mesh.close()
        self.segmenter.close()
