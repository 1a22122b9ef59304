"""DINOv2 patch features: one keypoint and descriptor per patch (see docs/patch_matcher.md).

The extraction half of the patch matcher, a dense alternative to ALIKED + LightGlue; the
matching half is ``patch_matcher.py``.

**Extraction** (:class:`PatchExtractor`, settings :class:`PatchFeaturesConfig`). An image is
resized so its long side is ``resolution`` pixels with both sides multiples of 14 (the same
preprocessing as retrieval) and run through DINOv2 once. The output of block ``layer`` (after the
final norm) is a grid of patch tokens, one per 14 x 14 patch, optionally bilinearly upsampled
``upsample`` times per side. Keypoints are the centres of the grid cells, mapped to the pixel
frame of the given image (COLMAP convention: the top-left image corner is (0, 0), so the first
patch centre is at (7, 7) in the DINOv2 input); descriptors are the L2-normalised tokens; scores
are 1, or the foreground score when ``foreground=pca``. The keypoints of an image depend only on
its size and the settings, never on the image it is matched with, so COLMAP tracks work. They are
listed in row-major grid order (after foreground filtering).

**Foreground** (:func:`pca_foreground`). The first principal component of an image's patch
tokens usually separates the object from the background, but the sign of a principal component
is arbitrary: taken as the solver returns it, it picks the background as often as the object.
We fix it with a rule that does not flip between images: *the image border is mostly
background*. The component is standardised (zero mean, unit variance over the patches) and
negated if more than half of the border patches are positive (ties: if the border mean is
positive). Patches whose standardised component exceeds ``foreground_threshold`` are foreground.

The backbone comes from :func:`~reconstruct.models.dinov2.load_model` (loaded once per process);
torch and timm are imported when needed; nothing is loaded or downloaded at import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import option
from . import dinov2
from .dinov2 import Backbone, DinoModel, preprocess, target_size

logger = logging.getLogger(__name__)

PATCH_SIZE = dinov2.PATCH_SIZE


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class PatchFeaturesConfig:
    """DINOv2 patch features (`keypoints.patch.*`, used when keypoints.extractor=dinov2_patch)."""

    backbone: Backbone = option(
        "vits14",
        "DINOv2 backbone; vits14 is 3x faster than vitb14 on CPU (vitb14 shares retrieval's file)",
    )
    resolution: int = option(
        518, "long side given to DINOv2, pixels, a multiple of 14 (518: 37 patches)"
    )
    layer: int = option(
        -1, "transformer block whose output (after the final norm) gives descriptors; -1: last"
    )
    upsample: int = option(
        1, "grid cells per patch side: 1 = a keypoint per 14 px patch, 2 = every 7 px (bilinear)"
    )
    foreground: Literal["none", "pca"] = option(
        "none", "none: keep every patch; pca: keep patches on the foreground side of the 1st PC"
    )
    foreground_threshold: float = option(
        0.0, "pca: keep patches whose standardised 1st PC (border side negative) exceeds this"
    )
    weights: Path | None = option(
        None,
        "weights file (official Meta .pth or timm .safetensors); default: cache, then download",
        hashed=False,
    )
    download: bool = option(
        True, "download missing weights into the cache (RECONSTRUCT_CACHE)", hashed=False
    )

    def __post_init__(self) -> None:
        dinov2.check_resolution(self.resolution)
        if not 1 <= self.upsample <= 4:
            raise ValueError(f"upsample must be 1, 2, 3 or 4, got {self.upsample}")


# ----------------------------------------------------------------------------- PCA, foreground


def l2_normalize(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows of `x` scaled to unit length (zero rows stay zero), as `dtype`."""
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def principal_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-`k` principal components of the rows of `x` (N, D).

    Returns (projections (N, k), components (k, D), mean (D,)), float64. Each component's sign is
    made deterministic (its largest-magnitude loading is positive), but it carries no meaning:
    :func:`pca_foreground` fixes the sign that matters with its border rule.
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    centred = x - mean
    k = max(0, min(k, *centred.shape))
    if k == 0:
        return np.zeros((len(x), 0)), np.zeros((0, x.shape[1])), mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:k]
    flip = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(flip == 0, 1.0, flip)[:, None]
    return centred @ comps.T, comps, mean


def border_mask(height: int, width: int) -> np.ndarray:
    """bool (H, W): the outer ring of cells of a grid."""
    border = np.zeros((height, width), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return border


def orient_by_border(first_pc: np.ndarray) -> np.ndarray:
    """`first_pc` (H, W), zero-mean, negated if needed so that the border is mostly negative.

    Negated when more than half of the border cells are positive; on a tie, when the border
    mean is positive. Negating the input never changes the result (up to exact ties of both).
    """
    values = first_pc[border_mask(*first_pc.shape)]
    positive, negative = int((values > 0).sum()), int((values < 0).sum())
    if positive > negative or (positive == negative and values.mean() > 0):
        return -first_pc
    return first_pc


def pca_foreground(tokens: np.ndarray, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Foreground of a patch grid from its first principal component.

    `tokens` is (H, W, D). Returns (mask bool (H, W), first_pc float32 (H, W)) where first_pc is
    the projection on the first principal component, standardised (zero mean, unit variance)
    and oriented so the image border is mostly negative (:func:`orient_by_border`); the mask is
    ``first_pc > threshold``. A grid with no variance has first_pc 0 everywhere.
    """
    h, w, d = tokens.shape
    proj, _, _ = principal_components(tokens.reshape(h * w, d), 1)
    if proj.shape[1] == 0:
        pc = np.zeros((h, w))
    else:
        pc = proj[:, 0].reshape(h, w)
        std = pc.std()
        pc = pc / std if std > 1e-12 * max(1.0, float(np.abs(tokens).max())) else np.zeros_like(pc)
    pc = orient_by_border(pc).astype(np.float32)
    return pc > threshold, pc


def pca_rgb(tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """First three principal components of a (H, W, D) grid as float32 RGB (H, W, 3) in [0, 1].

    With `mask`, the components are fitted on the masked cells only and the others are black
    (the usual DINOv2 picture). Each channel is min-max scaled.
    """
    h, w, d = tokens.shape
    flat = tokens.reshape(h * w, d)
    keep = np.ones(h * w, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    rgb = np.zeros((h * w, 3), np.float32)
    if keep.sum() >= 2:
        proj, comps, mean = principal_components(flat[keep], 3)
        lo, hi = proj.min(axis=0), proj.max(axis=0)
        scaled = (proj - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
        rgb[keep, : scaled.shape[1]] = scaled
    return rgb.reshape(h, w, 3)


# ----------------------------------------------------------------------------- model, grid

SETTING = "keypoints.patch"
"""The settings prefix named in model errors."""
ALTERNATIVE = "use ALIKED + LightGlue, which needs no DINOv2: --set matching.matcher=lightglue"
"""The way around DINOv2, named in model errors."""


def resolve_patch_weights(config: PatchFeaturesConfig) -> tuple[Path, str]:
    """(weights path, SHA-256) for `config`: explicit file, cache, download, or a typed error."""
    return dinov2.weights_of(config, setting=SETTING, alternative=ALTERNATIVE)


def load_patch_model(config: PatchFeaturesConfig, device: Any = "cpu") -> DinoModel:
    """The DINOv2 backbone of `config` (loaded once per process, see dinov2.load_model)."""
    return dinov2.load_model(config, device=device, setting=SETTING, alternative=ALTERNATIVE)


@dataclass(frozen=True)
class PatchGrid:
    """Patch tokens of one image and where the grid lies in that image."""

    tokens: np.ndarray  # float32 (H, W, D), raw (not normalised), one per grid cell
    image_size: tuple[int, int]  # (width, height) of the image the grid was computed from
    input_size: tuple[int, int]  # (width, height) given to DINOv2 (multiples of 14)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.tokens.shape[0]), int(self.tokens.shape[1])

    @property
    def cell_size(self) -> tuple[float, float]:
        """(width, height) of one grid cell in image pixels."""
        h, w = self.shape
        return self.image_size[0] / w, self.image_size[1] / h

    def to_pixels(self, grid_xy: np.ndarray) -> np.ndarray:
        """Grid-unit (x, y) positions (cell (r, c) spans [c, c+1) x [r, r+1)) -> image pixels
        (COLMAP convention), float32."""
        sx, sy = self.cell_size
        return (np.asarray(grid_xy, np.float64) * [sx, sy]).astype(np.float32).reshape(-1, 2)

    def centres(self) -> np.ndarray:
        """float32 (H * W, 2) cell centres in image pixels, row-major."""
        h, w = self.shape
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return self.to_pixels(np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1))

    def cells_of(self, keypoints: np.ndarray) -> np.ndarray:
        """int64 (N, 2) (row, col) of the cells holding `keypoints` (image pixels)."""
        sx, sy = self.cell_size
        kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
        h, w = self.shape
        cols = np.clip(np.floor(kp[:, 0] / sx), 0, w - 1).astype(np.int64)
        rows = np.clip(np.floor(kp[:, 1] / sy), 0, h - 1).astype(np.int64)
        return np.stack([rows, cols], axis=1)

    def upsampled(self, factor: int) -> PatchGrid:
        """The grid with `factor` x `factor` cells per cell, tokens bilinearly interpolated at
        the new cell centres (align_corners=False: the new centres lie on the old grid's
        continuous frame)."""
        if factor == 1:
            return self
        import torch
        from torch.nn.functional import interpolate

        x = torch.from_numpy(np.ascontiguousarray(self.tokens.transpose(2, 0, 1)))[None]
        up = interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        tokens = up[0].numpy().transpose(1, 2, 0)
        return PatchGrid(np.ascontiguousarray(tokens, np.float32), self.image_size, self.input_size)


# ----------------------------------------------------------------------------- extractor


class PatchExtractor:
    """DINOv2 patch features following the extractor interface of keypoints.py.

    Loads the model once (or takes `model`, e.g. a randomly initialised one for tests and
    plumbing demos). ``extractor(image)`` returns keypoints, descriptors and scores in the pixel
    frame of `image`; :meth:`grid` returns the raw patch grid (for pictures and refinement).
    """

    def __init__(
        self, config: PatchFeaturesConfig, device: Any = "cpu", *, model: DinoModel | None = None
    ) -> None:
        import torch

        self.torch = torch
        self.config = config
        self.model = model if model is not None else load_patch_model(config, device)
        self.device = self.model.device
        if self.model.backbone != config.backbone:
            raise ValueError(f"model is {self.model.backbone}, config asks {config.backbone}")

    @property
    def weights_id(self) -> str:
        return self.model.weights_id

    def grid(self, image: np.ndarray) -> PatchGrid:
        """The patch-level grid (one token per 14 x 14 patch) of an RGB uint8 image."""
        torch = self.torch
        height, width = image.shape[:2]
        w, h = target_size(width, height, self.config.resolution)
        x = torch.from_numpy(preprocess(image, self.config.resolution))[None].to(self.device)
        with torch.inference_mode():
            (out,) = self.model.module.forward_intermediates(
                x,
                indices=[self.config.layer],
                norm=True,
                stop_early=True,
                intermediates_only=True,
                output_fmt="NLC",
            )
        tokens = out[0].float().cpu().numpy().reshape(h // PATCH_SIZE, w // PATCH_SIZE, -1)
        return PatchGrid(np.ascontiguousarray(tokens, np.float32), (width, height), (w, h))

    def features(self, grid: PatchGrid) -> dict[str, np.ndarray]:
        """Keypoints (cell centres), L2-normalised descriptors and scores of a patch grid,
        foreground-filtered and upsampled as configured."""
        s = self.config.upsample
        if self.config.foreground == "pca":
            mask, pc = pca_foreground(grid.tokens, self.config.foreground_threshold)
            mask = np.repeat(np.repeat(mask, s, 0), s, 1).reshape(-1)
            scores = np.repeat(np.repeat(pc, s, 0), s, 1).reshape(-1)
        else:
            mask = None
            scores = None
        dense = grid.upsampled(s)
        kpts = dense.centres()
        desc = l2_normalize(dense.tokens.reshape(len(kpts), -1))
        if scores is None:
            scores = np.ones(len(kpts), np.float32)
        if mask is not None:
            kpts, desc, scores = kpts[mask], desc[mask], scores[mask]
        return {
            "keypoints": np.ascontiguousarray(kpts, np.float32).reshape(-1, 2),
            "descriptors": np.ascontiguousarray(desc, np.float32),
            "scores": np.ascontiguousarray(scores, np.float32),
        }

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Features of an RGB uint8 image, keypoints in its pixel frame (COLMAP convention)."""
        return self.features(self.grid(image))
