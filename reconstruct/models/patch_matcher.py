"""DINOv2 patch matching: a dense alternative to ALIKED + LightGlue (see docs/patch_matcher.md).

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

**Matching** (:class:`PatchMatcher`, settings :class:`PatchMatchingConfig`), pure functions:

* :func:`mnn_cosine` (``method=mnn``, default): mutual nearest neighbours on cosine similarity,
  kept when the similarity is at least ``similarity_threshold``. Score: the cosine similarity.
* :func:`ratio_match` (``method=ratio``): the two nearest neighbours in image 1 of each descriptor
  of image 0 (cosine, equivalently Euclidean distance of unit vectors); kept when the nearest
  passes the similarity threshold and its distance is below ``ratio`` times the second's; then
  one-to-one (each descriptor of image 1 keeps its best-ratio match). Score: 1 - distance ratio.
* :func:`hungarian_match` (``method=hungarian``): the optimal one-to-one partial assignment
  minimising the Euclidean distance (scipy's ``linear_sum_assignment``), where pairs farther
  apart than ``sqrt(2 - 2 * similarity_threshold)`` (the distance of unit vectors at that
  cosine) stay unmatched. Score: the cosine similarity.
* :func:`joint_pca` (``pca_dim``): both images' descriptors projected on the principal
  components of their concatenation (a shared low-dimensional space), re-normalised.

**Sub-patch refinement** (:func:`refine_matches`): a local soft-argmax over the upsampled
similarity of a matched token with the other image's tokens around its match. It moves a match's
end points by a fraction of a patch, *differently for every pair*, so it cannot be written to
``features.h5`` (keypoints are fixed per image for COLMAP's tracks); it serves two-view
estimation (``scripts/compare_matchers.py --refine``). The per-image, track-safe way to go below
one keypoint per patch is ``upsample``.

torch and timm are imported when needed; nothing is loaded or downloaded at import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import option
from . import dinov2
from .dinov2 import Backbone, preprocess, target_size

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


@dataclass(frozen=True, kw_only=True)
class PatchMatchingConfig:
    """Matching of DINOv2 patch features (`matching.patch.*`, matching.matcher=dinov2_patch)."""

    method: Literal["mnn", "ratio", "hungarian"] = option(
        "mnn",
        "mnn: mutual nearest neighbours (cosine); ratio: k-NN ratio test; hungarian: optimal "
        "one-to-one assignment (Euclidean, scipy)",
    )
    similarity_threshold: float = option(
        0.5, "every method: pairs with a lower cosine similarity are never matched"
    )
    ratio: float = option(0.9, "ratio: nearest / second-nearest distance must be below this")
    pca_dim: int | None = option(
        None, "project both images' descriptors on their joint top principal components first"
    )

    def __post_init__(self) -> None:
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold is a cosine, in [-1, 1]; got {self.similarity_threshold}"
            )
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise ValueError(f"pca_dim must be at least 1 or None, got {self.pca_dim}")


# ----------------------------------------------------------------------------- PCA, foreground


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


# ----------------------------------------------------------------------------- matching


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.uint32), np.zeros((0,), np.float32)


def _unit(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sorted(i0: np.ndarray, i1: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((i1, i0))
    matches = np.stack([i0[order], i1[order]], axis=1).astype(np.uint32).reshape(-1, 2)
    return matches, np.asarray(scores, np.float32)[order]


def mnn_cosine(
    desc0: np.ndarray, desc1: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours on cosine similarity, similarity >= `threshold`.

    Descriptors are L2-normalised first. Returns uint32 (K, 2) index pairs sorted by index 0
    and float32 (K,) cosine similarities. Ties go to the lower index.
    """
    if len(desc0) == 0 or len(desc1) == 0:
        return _empty()
    sim = _unit(desc0) @ _unit(desc1).T
    nn01 = sim.argmax(axis=1)
    nn10 = sim.argmax(axis=0)
    i0 = np.arange(len(desc0))
    keep = (nn10[nn01] == i0) & (sim[i0, nn01] >= threshold)
    return _sorted(i0[keep], nn01[keep], sim[i0[keep], nn01[keep]])


def ratio_match(
    desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.9, threshold: float = -1.0
) -> tuple[np.ndarray, np.ndarray]:
    """k-NN (k = 2) ratio test from image 0 to image 1, made one-to-one.

    For each descriptor of image 0, its nearest descriptor of image 1 is kept when their cosine
    similarity is at least `threshold` and their Euclidean distance (of the L2-normalised
    descriptors) is below `ratio` times the distance to the second nearest (no second nearest:
    no ratio test, ratio 0). A descriptor of image 1 chosen by several keeps the one with the
    lowest ratio (then the nearest, then the lower index). Scores are float32 1 - ratio.
    """
    if len(desc0) == 0 or len(desc1) == 0:
        return _empty()
    # float64: sqrt(2 - 2 cos) loses precision for close pairs, the ones the ratio test is about
    sim = _unit(desc0, np.float64) @ _unit(desc1, np.float64).T
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sim, 0.0))
    i0 = np.arange(len(desc0))
    if len(desc1) >= 2:
        two = np.argpartition(dist, 1, axis=1)[:, :2]
        d2 = np.take_along_axis(dist, two, axis=1)
        first = np.argmin(d2, axis=1)
        nn = two[i0, first]
        d_first, d_second = d2[i0, first], d2[i0, 1 - first]
        r = np.where(d_second > 0, d_first / np.maximum(d_second, 1e-12), 1.0)
        keep = r < ratio
    else:
        nn = np.zeros(len(desc0), np.int64)
        r = np.zeros(len(desc0))
        keep = np.ones(len(desc0), bool)
    keep &= sim[i0, nn] >= threshold
    d = dist[i0, nn]
    i0, nn, r, d = i0[keep], nn[keep], r[keep], d[keep]
    # One-to-one: for each target, the lowest ratio wins (ties: the nearest, then index 0).
    order = np.lexsort((i0, d, r))
    _, first_of = np.unique(nn[order], return_index=True)
    chosen = order[first_of]
    return _sorted(i0[chosen], nn[chosen], 1.0 - r[chosen])


def hungarian_match(
    desc0: np.ndarray, desc1: np.ndarray, max_distance: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one partial assignment on Euclidean distance (scipy, Hungarian method).

    Minimises the summed distance of the matched pairs minus `max_distance` per pair, so every
    pair closer than `max_distance` that can be matched is, and farther pairs stay unmatched
    (equivalently: the distances are clipped at `max_distance` before assignment and the
    clipped pairs dropped). Descriptors are used as given (not re-normalised). Scores are the
    float32 cosine similarities of the matched pairs.
    """
    from scipy.optimize import linear_sum_assignment

    if len(desc0) == 0 or len(desc1) == 0:
        return _empty()
    d0 = np.asarray(desc0, np.float64)
    d1 = np.asarray(desc1, np.float64)
    sq = (d0**2).sum(1)[:, None] + (d1**2).sum(1)[None, :] - 2.0 * d0 @ d1.T
    dist = np.sqrt(np.maximum(sq, 0.0))
    rows, cols = linear_sum_assignment(np.minimum(dist, max_distance))
    keep = dist[rows, cols] < max_distance
    rows, cols = rows[keep], cols[keep]
    cos = (_unit(d0[rows]) * _unit(d1[cols])).sum(1)
    return _sorted(rows, cols, cos)


def joint_pca(desc0: np.ndarray, desc1: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Both descriptor sets projected on the top-`dim` principal components of their union.

    The components and mean are fitted on the concatenation of both sets (so the two images
    share one low-dimensional space); projections are L2-normalised, float32. `dim` is capped at
    the rank available (rows and columns of the union).
    """
    d0, d1 = np.asarray(desc0, np.float32), np.asarray(desc1, np.float32)
    both = np.concatenate([d0, d1], axis=0)
    if len(both) == 0:
        return d0, d1
    proj, _, _ = principal_components(both, dim)
    proj = _unit(proj)
    return proj[: len(d0)], proj[len(d0) :]


def max_distance_for(similarity_threshold: float) -> float:
    """Euclidean distance of two unit vectors whose cosine is `similarity_threshold`."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * similarity_threshold))


def match_descriptors(
    desc0: np.ndarray, desc1: np.ndarray, config: PatchMatchingConfig = PatchMatchingConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Match two descriptor sets as `config` says (optional joint PCA, then the method)."""
    if len(desc0) == 0 or len(desc1) == 0:
        return _empty()
    d0, d1 = _unit(desc0), _unit(desc1)
    if config.pca_dim is not None:
        d0, d1 = joint_pca(d0, d1, config.pca_dim)
    if config.method == "mnn":
        return mnn_cosine(d0, d1, config.similarity_threshold)
    if config.method == "ratio":
        return ratio_match(d0, d1, config.ratio, config.similarity_threshold)
    if config.method == "hungarian":
        return hungarian_match(d0, d1, max_distance_for(config.similarity_threshold))
    raise ValueError(f"unknown patch matching method {config.method!r}")


# ----------------------------------------------------------------------------- refinement


def refine_matches(
    tokens0: np.ndarray,
    tokens1: np.ndarray,
    cells0: np.ndarray,
    cells1: np.ndarray,
    *,
    radius: int = 1,
    upsample: int = 4,
    temperature: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-patch positions of matched grid cells by a local soft-argmax (two-view use only).

    `tokens0`, `tokens1` are (H, W, D) grids; `cells0`, `cells1` are int (K, 2) (row, col) of
    the matched cells. For each match, the similarity of cell0's token with the tokens of grid 1
    in the (2 * radius + 1)^2 window around cell1 (clipped at the border) is bilinearly upsampled
    `upsample` times, turned into weights by a softmax at `temperature`, and the weighted mean
    position is the refined position in image 1; symmetrically for image 0. Positions are
    float64 (K, 2) (x, y) in grid units, the cell (r, c) spanning [c, c + 1) x [r, r + 1), so an
    unrefined cell centre is (c + 0.5, r + 0.5). The temperature is untuned.
    """
    xy1 = _soft_argmax(tokens0, tokens1, cells0, cells1, radius, upsample, temperature)
    xy0 = _soft_argmax(tokens1, tokens0, cells1, cells0, radius, upsample, temperature)
    return xy0, xy1


def _soft_argmax(src, dst, cells_src, cells_dst, radius, upsample, temperature) -> np.ndarray:
    import torch
    from torch.nn.functional import interpolate

    h, w, d = dst.shape
    src_n = _unit(src.reshape(-1, d)).reshape(src.shape)
    dst_n = _unit(dst.reshape(-1, d)).reshape(dst.shape)
    out = np.zeros((len(cells_src), 2))
    for k, ((rs, cs), (rd, cd)) in enumerate(zip(cells_src, cells_dst, strict=True)):
        r0, r1 = max(0, rd - radius), min(h, rd + radius + 1)
        c0, c1 = max(0, cd - radius), min(w, cd + radius + 1)
        sim = dst_n[r0:r1, c0:c1] @ src_n[rs, cs]
        up = interpolate(
            torch.from_numpy(np.ascontiguousarray(sim, np.float32))[None, None],
            scale_factor=upsample,
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        weights = np.exp((up - up.max()) / temperature)
        weights /= weights.sum()
        ys = r0 + (np.arange(up.shape[0]) + 0.5) / upsample
        xs = c0 + (np.arange(up.shape[1]) + 0.5) / upsample
        out[k] = (weights.sum(0) @ xs, weights.sum(1) @ ys)
    return out


# ----------------------------------------------------------------------------- model, grid


@dataclass
class PatchModel:
    """A loaded DINOv2 backbone plus the identity of its weights (for the features hash)."""

    module: Any  # timm VisionTransformer, eval mode
    backbone: str
    device: Any
    weights_id: str  # SHA-256 of the weights file, or "random-..." for plumbing runs


def resolve_patch_weights(config: PatchFeaturesConfig) -> tuple[Path, str]:
    """(weights path, SHA-256) for `config`: explicit file, cache, download, or a typed error."""
    path = dinov2.resolve_weights(
        config.backbone,
        config.weights,
        download=config.download,
        setting="keypoints.patch",
        alternative=(
            "use ALIKED + LightGlue, which needs no DINOv2: --set matching.matcher=lightglue"
        ),
    )
    return path, dinov2.weights_sha256(path)


def load_patch_model(config: PatchFeaturesConfig, device: Any = "cpu") -> PatchModel:
    """Resolve the weights (explicit, cache, download, or ModelWeightsError) and load DINOv2."""
    path, sha = resolve_patch_weights(config)
    module = dinov2.load_backbone(config.backbone, path, device=device)
    return PatchModel(module, config.backbone, device, sha)


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
        self, config: PatchFeaturesConfig, device: Any = "cpu", *, model: PatchModel | None = None
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
        desc = _unit(dense.tokens.reshape(len(kpts), -1))
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


# ----------------------------------------------------------------------------- matcher


class PatchMatcher:
    """Matcher interface of matching.py for DINOv2 patch descriptors (numpy, any device)."""

    def __init__(self, config: PatchMatchingConfig, device: Any = "cpu") -> None:
        self.config = config
        self.device = device  # unused: the matrices are small enough for numpy

    def to_input(self, features) -> dict:
        """storage.Features -> what :meth:`__call__` takes."""
        return {"descriptors": np.asarray(features.descriptors, np.float32)}

    def __call__(self, data0: dict, data1: dict) -> tuple[np.ndarray, np.ndarray]:
        return match_descriptors(data0["descriptors"], data1["descriptors"], self.config)
