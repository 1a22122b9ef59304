"""Mask images: which pixels of an image may hold keypoints (COLMAP's ``--ImageReader.mask_path``).

A mask folder mirrors the image folder the way COLMAP expects: the mask of image ``a/b.jpg`` is
``MASK_DIR/a/b.jpg.png`` (the full image name plus ``.png``). A mask is a grayscale image of the
same size as the (EXIF-oriented) image; **zero pixels are masked out**, any other value keeps the
pixel. An image without a mask file keeps all its keypoints (as in COLMAP).

:func:`filter_by_mask` drops the keypoints (and their descriptors and scores) that fall on masked
pixels; it works for every extractor (ALIKED, SIFT, DINOv2 patches), on features already mapped to
the original image resolution. A keypoint at continuous position (x, y) (COLMAP convention: the
top-left image corner is (0, 0)) is looked up at pixel (floor(y), floor(x)).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import ImageReadError, InputError

logger = logging.getLogger(__name__)

MASK_SUFFIX = ".png"


def mask_path(mask_dir: Path, image_name: str) -> Path:
    """Where the mask of `image_name` lives: ``mask_dir/<image_name>.png`` (COLMAP's naming)."""
    return Path(mask_dir) / f"{image_name}{MASK_SUFFIX}"


def load_mask(mask_dir: Path, image_name: str, image_shape: tuple[int, ...]) -> np.ndarray | None:
    """The bool (H, W) mask of `image_name` (True: keypoints allowed), or None if it has none.

    `image_shape` is the shape of the decoded, EXIF-oriented image ((H, W) or (H, W, C)). A mask
    of another size but the same aspect ratio (within 1%) is resized with nearest-neighbour
    interpolation; a transposed or otherwise mismatched mask, or an unreadable mask file, is an
    InputError naming the file.
    """
    import cv2

    path = mask_path(mask_dir, image_name)
    if not path.is_file():
        return None
    data = np.frombuffer(path.read_bytes(), np.uint8)
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if raw is None:
        raise ImageReadError(path, "the mask is not a decodable image")
    if raw.ndim == 3:  # colour or alpha: a pixel is kept when any channel is non-zero
        raw = raw.max(axis=2)
    h, w = int(image_shape[0]), int(image_shape[1])
    mh, mw = raw.shape[:2]
    if (mh, mw) != (h, w):
        if (mh, mw) == (w, h) and h != w:
            raise InputError(
                f"mask {path} is {mw}x{mh} px but image {image_name!r} is {w}x{h} px: the mask "
                "looks rotated (was it made before the image's EXIF orientation was applied?)"
            )
        if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise InputError(
                f"mask {path} is {mw}x{mh} px but image {image_name!r} is {w}x{h} px; a mask "
                "must have the image's size (or at least its aspect ratio)"
            )
        raw = cv2.resize(raw, (w, h), interpolation=cv2.INTER_NEAREST)
    return raw > 0


def keypoints_in_mask(keypoints: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bool (N,): which keypoints (COLMAP convention, mask resolution) lie on kept pixels.

    Keypoints outside the image are clamped to the nearest border pixel.
    """
    if len(keypoints) == 0:
        return np.zeros((0,), bool)
    h, w = mask.shape[:2]
    cols = np.clip(np.floor(keypoints[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.floor(keypoints[:, 1]).astype(np.int64), 0, h - 1)
    return mask[rows, cols]


def filter_by_mask(
    features: dict[str, np.ndarray], mask: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Features without the keypoints on masked (False) pixels; `mask` None keeps everything.

    Every array of `features` whose first dimension is the number of keypoints is filtered
    (keypoints, descriptors, scores, and any extra per-keypoint array); the order is kept.
    """
    if mask is None:
        return features
    kpts = np.asarray(features["keypoints"]).reshape(-1, 2)
    keep = keypoints_in_mask(kpts, mask)
    n = len(kpts)
    out = {}
    for k, v in features.items():
        v = np.asarray(v)
        out[k] = v[keep] if v.ndim >= 1 and len(v) == n else v
    return out
