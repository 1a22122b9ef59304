"""DINOv2 patch matching: a dense alternative to ALIKED + LightGlue (see docs/patch_matcher.md).

The matching half; the features it matches (keypoints at patch centres, L2-normalised tokens)
come from ``patch_features.py``.

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

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..config import option
from .patch_features import l2_normalize, principal_components

# ----------------------------------------------------------------------------- settings


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


# ----------------------------------------------------------------------------- matching


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.uint32), np.zeros((0,), np.float32)


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
    sim = l2_normalize(desc0) @ l2_normalize(desc1).T
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
    sim = l2_normalize(desc0, np.float64) @ l2_normalize(desc1, np.float64).T
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
    cos = (l2_normalize(d0[rows]) * l2_normalize(d1[cols])).sum(1)
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
    proj = l2_normalize(proj)
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
    d0, d1 = l2_normalize(desc0), l2_normalize(desc1)
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
    src_n = l2_normalize(src.reshape(-1, d)).reshape(src.shape)
    dst_n = l2_normalize(dst.reshape(-1, d)).reshape(dst.shape)
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
