"""Keypoint confirmation: do two pictures show the same pixels, up to crop, scale and flips?

Searching with many crop probes finds more crops, and more chances for two unrelated pictures
to land within the PDQ threshold of each other. A link found that way is only made when ORB
keypoints of the two pictures agree on one affine transform that is a plausible copy: equal
scale on both axes (a resize, not a different viewpoint) and many inliers, most of the
matches. Two photos of the same scene from different positions fail this; a cropped,
recompressed copy passes, and so does one with a caption, banner, logo or watermark added,
whose keypoints on the text find no partner and leave the picture's to agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from workers.images import DEFAULT_MAX_PIXELS, decode_for_analysis

#: Shorter side the pictures are compared at: enough keypoints, a few tens of milliseconds.
COMPARE_SIDE = 480
_FEATURES = 1500
#: Lowe's ratio test: the best match must be clearly better than the second best.
_RATIO = 0.75
_RANSAC_PX = 4.0
MIN_FEATURES = 100
#: A copy is resized, not stretched: the transform's two axis scales agree within a few
#: percent, and most matches fit it. Both bounds lie midway between what the choosing half of
#: `qarina eval dupes`'s photos showed: its 220 copies (edited and cropped) had axis ratios of
#: 0.996 or more and shares of 0.80 or more; its pair of the corpus's desk shots (one scene
#: from two positions, 48 inliers) 0.934 and 0.53. On the held-out half the copies had 0.993
#: and 0.83 or more, its desk pair 0.847 and 0.46; the four desk pairs across the halves
#: (up to 169 inliers) had at most 0.944 and 0.55, and half of the six passed the former
#: bounds (0.85 and 0.3).
_MIN_SCALE_RATIO = 0.965
_MIN_SHARE = 0.65


@dataclass(frozen=True)
class KeypointCheck:
    """The verdict and the figures behind it (kept with the link as its evidence)."""

    agrees: bool
    inliers: int
    matches: int
    scale_ratio: float
    #: Keypoints found in the poorer of the two pictures: under `MIN_FEATURES` a picture has
    #: too little texture for keypoints to judge, and the verdict says nothing.
    features: int = 0

    @property
    def conclusive(self) -> bool:
        return self.agrees or self.features >= MIN_FEATURES


def _grey(image: Image.Image) -> npt.NDArray[np.uint8]:
    scale = COMPARE_SIDE / max(1, min(image.size))
    if scale < 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.BILINEAR,
        )
    return np.asarray(image.convert("L"), dtype=np.uint8)


def confirm_copy(
    first: Image.Image,
    second: Image.Image,
    *,
    min_inliers: int = 40,
    min_share: float = _MIN_SHARE,
) -> KeypointCheck:
    """Whether `second` is a copy of `first` (or the reverse) under a crop, resize or flip.

    `min_inliers` keypoint pairs, at least `min_share` of the ratio-test matches, must agree
    on one affine transform whose two axis scales differ by under 3.5%.
    """
    orb = cv2.ORB.create(nfeatures=_FEATURES)
    points_a, descriptors_a = orb.detectAndCompute(_grey(first), None)
    points_b, descriptors_b = orb.detectAndCompute(_grey(second), None)
    features = min(len(points_a), len(points_b))
    if descriptors_a is None or descriptors_b is None or features < 8:
        return KeypointCheck(False, 0, 0, 0.0, features)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [
        pair[0]
        for pair in matcher.knnMatch(descriptors_a, descriptors_b, k=2)
        if len(pair) == 2 and pair[0].distance < _RATIO * pair[1].distance
    ]
    if len(good) < 8:
        return KeypointCheck(False, 0, len(good), 0.0, features)
    source = np.array([points_a[m.queryIdx].pt for m in good], dtype=np.float32)
    target = np.array([points_b[m.trainIdx].pt for m in good], dtype=np.float32)
    transform, mask = cv2.estimateAffine2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PX
    )
    if transform is None or mask is None:
        return KeypointCheck(False, 0, len(good), 0.0, features)
    inliers = int(mask.sum())
    singular = np.linalg.svd(transform[:, :2], compute_uv=False)
    scale_ratio = float(singular[1] / singular[0]) if singular[0] > 0 else 0.0
    agrees = (
        inliers >= min_inliers
        and inliers >= min_share * len(good)
        and scale_ratio >= _MIN_SCALE_RATIO
    )
    return KeypointCheck(agrees, inliers, len(good), round(scale_ratio, 3), features)


def confirm_files(first: Path, second: Path) -> KeypointCheck:
    """`confirm_copy` of two picture files, opened upright at the size they are compared at.

    Raises:
        StageError: when either picture no longer decodes (the reason says why).
    """
    return confirm_copy(open_for_keypoints(first), open_for_keypoints(second))


def open_for_keypoints(path: Path) -> Image.Image:
    """A picture upright, at least `COMPARE_SIDE` on its shorter side where it has it: what
    keypoints are compared at, for a stored file and for a still a matcher checks alike."""
    return decode_for_analysis(path, min_side=COMPARE_SIDE, max_pixels=DEFAULT_MAX_PIXELS).image
