"""Face region parsing maps (LaPa classes) from the 478-point MediaPipe face mesh and a person mask.

The classes and their indices are LaPa's (Liu et al. 2020), the label set FSFM parses its pretraining faces with
(facer's ``farl/lapa/448`` parser): 0 background, 1 skin, 2 right brow, 3 left brow, 4 right eye, 5 left eye,
6 nose, 7 upper lip, 8 inner mouth, 9 lower lip, 10 hair ("left"/"right" are the subject's).

:class:`LandmarkParser` draws them by rules, with no learned parser: skin = the face-oval polygon; brows, eyes,
nose, lips and inner mouth = mesh polygons painted over the skin; hair = person pixels (selfie segmentation)
outside the face oval, above the jaw angles and within one face width of the face, unless their colour is the
face's skin colour (forehead above the mesh, ears: skin); everything else (neck,
clothes, scene) is background, as in LaPa. Users who own a real face-parsing model pass any callable with the
:class:`FaceParser` signature instead.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

LAPA_CLASSES = (
    "background",
    "skin",
    "right_brow",
    "left_brow",
    "right_eye",
    "left_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)
LAPA = {name: i for i, name in enumerate(LAPA_CLASSES)}

# Ordered outlines over the MediaPipe face-mesh vertices (image-left = the subject's right).
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # fmt: skip
RIGHT_BROW = [46, 53, 52, 65, 55, 107, 66, 105, 63, 70]
LEFT_BROW = [276, 283, 282, 295, 285, 336, 296, 334, 293, 300]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
NOSE = [168, 193, 245, 188, 174, 198, 209, 129, 64, 240, 97, 2, 326, 460, 294, 358, 429, 420, 399, 412, 465, 417]
LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
JAW_ANGLES = (172, 397)


class FaceParser(Protocol):
    """``parser(image, landmarks, person) -> (H, W) uint8 LaPa map``: ``image`` (H, W, 3) uint8 RGB, ``landmarks``
    (478, 2) pixel coordinates in that image, ``person`` (H, W) float in [0, 1] (selfie segmentation)."""

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, person: np.ndarray) -> np.ndarray: ...


def _fill(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], int(value), lineType=cv2.LINE_8, shift=4)


class LandmarkParser:
    """Rule-based LaPa parsing from the face mesh and the person mask (see the module docstring)."""

    def __init__(self, person_threshold: float = 0.5, hair_reach: float = 1.0, skin_distance: float = 2.0):
        self.person_threshold, self.hair_reach, self.skin_distance = person_threshold, hair_reach, skin_distance

    def _skin_like(self, image: np.ndarray, skin: np.ndarray) -> np.ndarray:
        """Pixels within ``skin_distance`` (Mahalanobis, CIELAB) of the colour of the face's own skin."""
        lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
        ref = lab[skin.ravel()]
        if len(ref) < 10:
            return np.zeros(skin.shape, bool)
        mean, cov = ref.mean(0), np.cov(ref.T) + np.eye(3)
        d = lab - mean
        dist2 = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
        return (dist2 <= self.skin_distance**2).reshape(skin.shape)

    def _skin_beside(self, image: np.ndarray, skin: np.ndarray, around: np.ndarray) -> np.ndarray:
        """Skin-coloured pixels of ``around`` in solid regions (opened 5 x 5) that touch the face's skin."""
        like = (self._skin_like(image, skin) & around).astype(np.uint8)
        like = cv2.morphologyEx(like, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        _, labels = cv2.connectedComponents((like | skin).astype(np.uint8), connectivity=4)
        touching = np.unique(labels[skin])
        return (like == 1) & np.isin(labels, touching[touching > 0])

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, person: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
        out = np.zeros((h, w), np.uint8)
        oval = np.zeros((h, w), np.uint8)
        _fill(oval, pts[FACE_OVAL], 1)
        # hair: person pixels outside the face, above the jaw angles, within reach of the face's sides
        x0, x1 = pts[FACE_OVAL, 0].min(), pts[FACE_OVAL, 0].max()
        reach = self.hair_reach * (x1 - x0)
        ys, xs = np.mgrid[0:h, 0:w]
        jaw_y = pts[list(JAW_ANGLES), 1].mean()
        near = (ys <= jaw_y) & (xs >= x0 - reach) & (xs <= x1 + reach)
        around = (person >= self.person_threshold) & (oval == 0) & near
        out[around] = LAPA["hair"]
        out[oval == 1] = LAPA["skin"]
        out[self._skin_beside(image, oval == 1, around)] = LAPA["skin"]  # forehead above the mesh, ears
        for polygon, name in (
            (NOSE, "nose"),
            (RIGHT_BROW, "right_brow"),
            (LEFT_BROW, "left_brow"),
            (RIGHT_EYE, "right_eye"),
            (LEFT_EYE, "left_eye"),
        ):
            _fill(out, pts[polygon], LAPA[name])
        _fill(out, np.concatenate([pts[LIPS_OUTER_UPPER], pts[LIPS_INNER_UPPER[::-1]]]), LAPA["upper_lip"])
        _fill(out, np.concatenate([pts[LIPS_OUTER_LOWER], pts[LIPS_INNER_LOWER[::-1]]]), LAPA["lower_lip"])
        _fill(out, np.concatenate([pts[LIPS_INNER_UPPER], pts[LIPS_INNER_LOWER[::-1]]]), LAPA["inner_mouth"])
        return out


# one colour per class for overlays (background transparent)
PALETTE = np.array(
    [[0, 0, 0], [255, 204, 153], [102, 51, 0], [153, 76, 0], [0, 153, 255], [0, 102, 204], [255, 102, 102],
     [204, 0, 102], [51, 0, 51], [255, 0, 127], [102, 204, 0]], np.uint8)  # fmt: skip


def overlay(image: np.ndarray, parsing: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the parsing map's classes blended in (background left as is)."""
    out = ((1 - alpha) * image + alpha * PALETTE[parsing]).astype(np.uint8)
    out[parsing == 0] = image[parsing == 0]
    return out
