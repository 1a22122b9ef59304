"""Measuring reconstructions against known cameras, with the metrics of the Image Matching
Challenges.

Inputs are plain :class:`~reconstruct.gt.CameraPose` dicts keyed by image name (the export module
reads a COLMAP model into this form; no pycolmap here). SfM may return several disconnected
models, so an estimate is a list of such dicts. An image should be in at most one model; if it is
in several, the largest model (most images; the first one on a tie) is used for it.

Metrics
-------
* **Registration**: GT images present in some model / all GT images, and the number of models.
* **Relative pose** over *all* pairs of GT images ``(name0, name1)``, ``name0 < name1``. With
  ``cam_from_world`` poses ``(R, t)`` the relative pose is ``R_rel = R1 R0^T`` and
  ``t_rel = t1 - R_rel t0``. The rotation error is the angle of ``R_rel_est^T R_rel_gt``; the
  translation error is the angle between ``t_rel_est`` and ``t_rel_gt`` (signed: SfM fixes the
  direction up to a *positive* scale, so a reversed baseline scores 180 degrees). The pair error
  is the larger of the two. Pairs whose images are not registered in one common model are
  failures (error = inf).

  *Zero-baseline pairs* (GT centres closer than ``1e-6 * scene extent``) have no translation
  direction: they are kept and scored on rotation only (``translation_error_deg`` is NaN). An
  estimated baseline shorter than ``1e-6 *`` the model's own extent while the GT one is not
  has no direction either and scores 180 degrees.
* **mAA**: the mean over ``thresholds_deg`` (1..10 degrees) of the fraction of pairs with
  ``error < threshold``.
* **AUC** at 5/10/20 degrees: :func:`pose_auc`, the definition of SuperGlue/LightGlue/glue-factory.
* **Camera centres** (IMC 2024): each model's centres are aligned to the GT centres by a robust
  Sim(3) (:func:`align_sim3`), once per threshold with that threshold as the RANSAC inlier
  threshold (as IMC's ``register_by_Horn`` does). A GT image is correct at threshold ``t`` if its
  aligned centre is within ``t * scene extent`` of the GT centre; unregistered images are wrong.
  The fractions for ``center_thresholds`` (1%, 2%, 5%) are averaged into ``center_maa``.
* **Per image** (:class:`ImageError`, worst first): after the alignment at the loosest centre
  threshold (5 %), the distance of each aligned camera centre from its GT centre (GT units, and
  as a fraction of the scene extent) and the angle between the aligned and the GT camera
  rotation. The alignment maps model coordinates to GT ones, ``X_gt = s R X_est + t``, so the
  aligned rotation of a camera is ``R_est R^T``. Rows are sorted by the larger of the two errors,
  each in units of the loosest threshold of its metric (``rotation / max(thresholds_deg)`` and
  ``centre / (max(center_thresholds) * extent)``), the largest first. Images that are not
  registered come first, then those of models that cannot be aligned (no errors), then the rest.

  The **scene extent** is the largest distance of a GT camera centre from the mean of the GT
  centres (the radius of the camera cloud; unlike a bounding-box diagonal it does not depend on
  the orientation of the world axes).

  A model whose evaluated images have fewer than 3 cameras, or whose (estimated or GT) centres
  are identical or collinear, cannot be aligned: ``aligned`` is False and its images count as
  wrong for the centre metric. Its pairs still count for the relative-pose metrics.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from . import paths
from .errors import ConfigError, InputError
from .gt import CameraPose

logger = logging.getLogger(__name__)

ZERO_BASELINE_FRACTION = 1e-6
"""Baselines shorter than this fraction of the scene extent have no direction."""
COLLINEAR_TOLERANCE = 1e-6
"""Point sets whose second principal extent is below this fraction of the first are collinear."""


@dataclass(frozen=True)
class PairError:
    """Relative-pose errors of one pair of GT images, in degrees (inf: not co-registered)."""

    name0: str
    name1: str
    rotation_error_deg: float
    translation_error_deg: float  # NaN for a zero-baseline pair (scored on rotation only)
    error_deg: float  # max of the two (rotation only for a zero-baseline pair)


@dataclass(frozen=True)
class ModelAlignment:
    """How one estimated model was aligned to the GT for the camera-centre metric."""

    num_images: int
    """Images in the model (including any not in the GT)."""
    num_evaluated: int
    """GT images assigned to this model (an image in several models goes to the largest)."""
    aligned: bool
    """False when the alignment is not possible (< 3 cameras, identical or collinear centres)."""
    num_centers_correct: tuple[int, ...]
    """Per centre threshold, the assigned images whose aligned centre is close enough."""


ImageStatus = Literal["aligned", "not registered", "not aligned"]


@dataclass(frozen=True)
class ImageError:
    """Absolute errors of one GT image after aligning its model to the GT (NaN unless aligned)."""

    name: str
    status: ImageStatus
    """``not registered``: in no model; ``not aligned``: its model cannot be aligned."""
    model: int | None
    """Index of its model in the list given to :func:`evaluate` (None: not registered)."""
    rotation_error_deg: float
    """Angle between the aligned estimated and the GT camera rotation."""
    center_error: float
    """Distance of the aligned estimated centre from the GT centre, GT units."""
    center_error_relative: float
    """`center_error` as a fraction of the scene extent."""


@dataclass(frozen=True)
class PoseMetrics:
    """Accuracy of estimated models against ground truth; :meth:`to_dict` is JSON-ready."""

    num_gt_images: int
    num_registered: int
    """GT images registered in some model."""
    num_models: int
    num_images_not_in_gt: int
    """Images of the models that the GT does not know (ignored)."""
    num_pairs: int
    num_pairs_failed: int
    """Pairs not registered in one common model (error = inf)."""
    num_pairs_zero_baseline: int
    """Pairs scored on rotation only because their GT centres coincide."""
    thresholds_deg: tuple[float, ...]
    pose_accuracy: tuple[float, ...]
    """Per threshold of `thresholds_deg`, the fraction of pairs with error < threshold."""
    maa: float
    """Mean of `pose_accuracy`."""
    auc_thresholds_deg: tuple[float, ...]
    auc: tuple[float, ...]
    """Per threshold of `auc_thresholds_deg`, :func:`pose_auc` of the pair errors."""
    median_rotation_error_deg: float | None
    """Over co-registered pairs; None if there are none."""
    median_translation_error_deg: float | None
    """Over co-registered pairs with a GT baseline; None if there are none."""
    scene_extent: float
    """Largest distance of a GT centre from the mean GT centre (GT units)."""
    center_thresholds: tuple[float, ...]
    """Relative to `scene_extent`."""
    center_accuracy: tuple[float, ...]
    """Per centre threshold, the fraction of GT images whose aligned centre is close enough."""
    center_maa: float
    """Mean of `center_accuracy`."""
    models: tuple[ModelAlignment, ...]
    model_statistics: dict[str, Any] | None = field(default=None)
    """Whatever statistics the caller passed (points, track length, reprojection error...)."""
    images: tuple[ImageError, ...] = ()
    """Every GT image, worst first (see the module docstring)."""

    @property
    def registration_ratio(self) -> float:
        return self.num_registered / self.num_gt_images

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; per-threshold values are dicts keyed by the threshold (``"5"``),
        infinities and NaNs become None."""
        return _json_ready(
            {
                "num_gt_images": self.num_gt_images,
                "num_registered": self.num_registered,
                "registration_ratio": self.registration_ratio,
                "num_models": self.num_models,
                "num_images_not_in_gt": self.num_images_not_in_gt,
                "num_pairs": self.num_pairs,
                "num_pairs_failed": self.num_pairs_failed,
                "num_pairs_zero_baseline": self.num_pairs_zero_baseline,
                "pose_accuracy": _by_threshold(self.thresholds_deg, self.pose_accuracy),
                "maa": self.maa,
                "auc": _by_threshold(self.auc_thresholds_deg, self.auc),
                "median_rotation_error_deg": self.median_rotation_error_deg,
                "median_translation_error_deg": self.median_translation_error_deg,
                "scene_extent": self.scene_extent,
                "center_accuracy": _by_threshold(self.center_thresholds, self.center_accuracy),
                "center_maa": self.center_maa,
                "models": [
                    {
                        "num_images": m.num_images,
                        "num_evaluated": m.num_evaluated,
                        "aligned": m.aligned,
                        "num_centers_correct": _by_threshold(
                            self.center_thresholds, m.num_centers_correct
                        ),
                    }
                    for m in self.models
                ],
                "model_statistics": self.model_statistics,
                "images": [
                    {
                        "name": e.name,
                        "status": e.status,
                        "model": e.model,
                        "rotation_error_deg": e.rotation_error_deg,
                        "center_error": e.center_error,
                        "center_error_relative": e.center_error_relative,
                    }
                    for e in self.images
                ],
            }
        )


# --------------------------------------------------------------------------------------------
# Public functions


def relative_pose_errors(
    gt: Mapping[str, CameraPose], models: Sequence[Mapping[str, CameraPose]]
) -> list[PairError]:
    """Relative rotation/translation errors of every pair of GT images (sorted names, i < j)."""
    names = sorted(gt)
    pairs = _PairErrors.compute(_Poses.build(gt, models))
    return [
        PairError(names[i], names[j], float(r), float(t), float(e))
        for i, j, r, t, e in zip(
            pairs.index0, pairs.index1, pairs.rotation, pairs.translation, pairs.error, strict=True
        )
    ]


def evaluate(
    gt: Mapping[str, CameraPose],
    models: Sequence[Mapping[str, CameraPose]],
    *,
    thresholds_deg: Sequence[float] = tuple(range(1, 11)),
    auc_thresholds_deg: Sequence[float] = (5, 10, 20),
    center_thresholds: Sequence[float] = (0.01, 0.02, 0.05),
    model_statistics: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> PoseMetrics:
    """Score estimated models against GT cameras (see the module docstring for the metrics).

    `center_thresholds` are fractions of the GT scene extent. `model_statistics` (e.g. number of
    points, mean track length, mean reprojection error) is copied into the result as given.
    `seed` drives the RANSAC of the centre alignment (results are deterministic).
    Raises InputError when the GT has fewer than 2 images or a pose is malformed.
    """
    thresholds_deg = _check_thresholds("thresholds_deg", thresholds_deg)
    auc_thresholds_deg = _check_thresholds("auc_thresholds_deg", auc_thresholds_deg)
    center_thresholds = _check_thresholds("center_thresholds", center_thresholds)
    stats = None if model_statistics is None else _json_ready(dict(model_statistics), strict=True)

    poses = _Poses.build(gt, models)
    pairs = _PairErrors.compute(poses)
    errors = pairs.error
    num_pairs = len(errors)
    pose_accuracy = tuple(float(np.mean(errors < t)) for t in thresholds_deg)
    coregistered = np.isfinite(errors)
    has_baseline = coregistered & ~np.isnan(pairs.translation)

    extent = poses.gt_extent
    alignments, num_correct, image_errors = _align_centers(poses, center_thresholds, seed)
    center_accuracy = tuple(float(c) / len(gt) for c in num_correct)

    return PoseMetrics(
        num_gt_images=len(gt),
        num_registered=int(np.sum(poses.model_index >= 0)),
        num_models=len(poses.models),
        num_images_not_in_gt=poses.num_not_in_gt,
        num_pairs=num_pairs,
        num_pairs_failed=int(np.sum(~coregistered)),
        num_pairs_zero_baseline=int(np.sum(pairs.zero_baseline)),
        thresholds_deg=thresholds_deg,
        pose_accuracy=pose_accuracy,
        maa=float(np.mean(pose_accuracy)),
        auc_thresholds_deg=auc_thresholds_deg,
        auc=tuple(pose_auc(errors, auc_thresholds_deg)),
        median_rotation_error_deg=_median(pairs.rotation[coregistered]),
        median_translation_error_deg=_median(pairs.translation[has_baseline]),
        scene_extent=extent,
        center_thresholds=center_thresholds,
        center_accuracy=center_accuracy,
        center_maa=float(np.mean(center_accuracy)),
        models=tuple(alignments),
        model_statistics=stats,
        images=image_errors.rows(
            poses, max(thresholds_deg), max(center_thresholds) * extent, extent
        ),
    )


def pose_auc(errors: np.ndarray | Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold.

    The definition of SuperGlue (Sarlin et al. 2020, ``pose_auc`` in its evaluation utils),
    kept by LightGlue and glue-factory: sort the errors, recall = (1..n)/n, prepend the point
    (0, 0), integrate with the trapezoidal rule up to the threshold (the curve is held flat from
    the last error below the threshold). Infinite errors (failures) never enter the area but
    count in n. NaN errors are treated as failures. No errors gives 0.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    errors = np.sort(np.where(np.isnan(errors), np.inf, errors))
    n = len(errors)
    if n == 0:
        return [0.0 for _ in thresholds]
    recall = np.r_[0.0, np.arange(1, n + 1) / n]
    errors = np.r_[0.0, errors]
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        # Trapezoidal rule written out (np.trapz became np.trapezoid in numpy 2).
        aucs.append(float(np.sum(np.diff(e) * (r[1:] + r[:-1]) / 2) / t))
    return aucs


def align_sim3(
    src_centers: np.ndarray,
    dst_centers: np.ndarray,
    *,
    inlier_threshold: float,
    max_iterations: int = 1000,
    seed: int = 0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Robust similarity ``dst ~ scale * R @ src + t`` between two (N, 3) point sets.

    RANSAC over minimal 3-point samples, each solved in closed form (Umeyama); every triplet is
    tried when there are at most `max_iterations` of them, else `max_iterations` random ones
    (reproducible from `seed`). A least-squares fit of all points is also a candidate. The
    candidate with most inliers (residual < `inlier_threshold`, in dst units; ties: smaller sum
    of squared inlier residuals) is refitted on its inliers until the inlier set is stable.

    Raises InputError if the sets differ in shape, are not finite, have fewer than 3 points, or
    either is degenerate (identical or collinear points: the rotation is then undetermined).
    """
    src = np.asarray(src_centers, dtype=np.float64)
    dst = np.asarray(dst_centers, dtype=np.float64)
    if src.ndim != 2 or src.shape[1:] != (3,) or src.shape != dst.shape:
        raise InputError(
            f"align_sim3 needs two (N, 3) arrays of corresponding points, got shapes "
            f"{src.shape} and {dst.shape}"
        )
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise InputError("align_sim3: the points contain NaN or infinite values")
    if not (inlier_threshold > 0 and math.isfinite(inlier_threshold)):
        raise ConfigError(f"align_sim3: inlier_threshold must be > 0, got {inlier_threshold}")
    if len(src) < 3 or _is_degenerate(src) or _is_degenerate(dst):
        raise InputError(
            f"align_sim3: cannot fit a similarity to {len(src)} points that are fewer than 3, "
            "identical or collinear (the rotation about their line is undetermined)"
        )

    n = len(src)
    if math.comb(n, 3) <= max_iterations:
        samples = np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64)
    else:
        samples = _random_triplets(n, max_iterations, np.random.default_rng(seed))
    ok = ~(_is_degenerate(src[samples]) | _is_degenerate(dst[samples]))
    s_all, r_all, t_all = _umeyama(src[samples[ok]], dst[samples[ok]])
    s0, r0, t0 = _umeyama(src, dst)
    scales = np.r_[s0, s_all]
    rotations = np.concatenate([r0[None], r_all])
    translations = np.concatenate([t0[None], t_all])

    counts, costs = [], []
    for start in range(0, len(scales), 256):  # chunks bound the (candidates, N) memory
        sl = slice(start, start + 256)
        pred = scales[sl, None, None] * np.einsum("kij,nj->kni", rotations[sl], src)
        r2 = np.sum((pred + translations[sl, None] - dst) ** 2, axis=2)
        inl = r2 < inlier_threshold**2
        counts.append(inl.sum(axis=1))
        costs.append(np.where(inl, r2, 0.0).sum(axis=1))
    counts, costs = np.concatenate(counts), np.concatenate(costs)
    # Most inliers, then the smallest sum of squared inlier residuals, then the first candidate.
    k = int(np.lexsort((np.arange(len(counts)), costs, -counts))[0])
    model = (float(scales[k]), rotations[k], translations[k])

    # Local refinement: refit on the inliers while that keeps or increases their number.
    inliers = _residuals(model, src, dst) < inlier_threshold
    for _ in range(10):
        if inliers.sum() < 3 or _is_degenerate(src[inliers]) or _is_degenerate(dst[inliers]):
            break
        s, r, t = _umeyama(src[inliers], dst[inliers])
        refit = (float(s), r, t)
        new_inliers = _residuals(refit, src, dst) < inlier_threshold
        if new_inliers.sum() < inliers.sum():
            break
        model = refit
        if np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers
    return model


def format_metrics(m: PoseMetrics, *, max_images: int | None = 20) -> str:
    """A few human-readable lines, then the per-image table (its first `max_images` rows, the
    worst; None: all; the JSON output always has every row)."""
    plural = "s" if m.num_models != 1 else ""
    auc = ", ".join(f"@{t:g} {a:.3f}" for t, a in zip(m.auc_thresholds_deg, m.auc, strict=True))
    centres = ", ".join(
        f"{a:.3f} within {100 * t:g}%"
        for t, a in zip(m.center_thresholds, m.center_accuracy, strict=True)
    )
    rot, trans = _deg(m.median_rotation_error_deg), _deg(m.median_translation_error_deg)
    lines = [
        (
            f"registered {m.num_registered}/{m.num_gt_images} images "
            f"({100 * m.registration_ratio:.1f}%) in {m.num_models} model{plural}"
        ),
        (
            f"relative pose: mAA {m.maa:.3f} over {_span(m.thresholds_deg)} deg, AUC {auc} "
            f"({m.num_pairs} pairs, {m.num_pairs_failed} not co-registered)"
        ),
        f"median errors of co-registered pairs: rotation {rot}, translation {trans}",
        (
            f"camera centres: mAA {m.center_maa:.3f}, {centres} "
            f"of the scene extent {m.scene_extent:.4g}"
        ),
    ]
    unaligned = [i for i, a in enumerate(m.models) if not a.aligned]
    if unaligned:
        lines.append(f"models not aligned (too few or collinear cameras): {unaligned}")
    if m.model_statistics:
        lines.append(
            "model statistics: "
            + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in m.model_statistics.items()
            )
        )
    lines += format_image_errors(m.images, max_images)
    return "\n".join(lines)


def format_image_errors(rows: Sequence[ImageError], max_rows: int | None = 20) -> list[str]:
    """The per-image table as lines, worst first, cut after `max_rows` rows (None: all)."""
    if not rows:
        return []
    shown = list(rows if max_rows is None else rows[:max_rows])
    width = min(40, max(len("image"), *(len(r.name) for r in shown)))
    lines = [
        "per-image errors after aligning each model to the ground truth, worst first:",
        f"  {'image':<{width}}  {'rotation':>11}  {'centre':>10}  {'of extent':>9}",
    ]
    for r in shown:
        name = r.name if len(r.name) <= width else "..." + r.name[-(width - 3) :]
        if r.status == "aligned":
            values = (
                f"{r.rotation_error_deg:>7.3f} deg  {r.center_error:>10.4g}  "
                f"{100 * r.center_error_relative:>8.2f}%"
            )
        else:
            model = f" (model {r.model})" if r.model is not None else ""
            values = f"{r.status}{model}"
        lines.append(f"  {name:<{width}}  {values}")
    if len(rows) > len(shown):
        lines.append(
            f"  ... {len(rows) - len(shown)} more images (every image is in the JSON metrics)"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Internals


@dataclass(frozen=True)
class _Poses:
    """GT and estimated poses as arrays over the sorted GT names."""

    gt_rotations: np.ndarray  # (N, 3, 3)
    gt_translations: np.ndarray  # (N, 3)
    gt_centers: np.ndarray  # (N, 3)
    gt_extent: float
    model_index: np.ndarray  # (N,) int, -1 when not registered
    est_rotations: np.ndarray  # (N, 3, 3), NaN when not registered
    est_translations: np.ndarray  # (N, 3)
    est_centers: np.ndarray  # (N, 3)
    model_extents: np.ndarray  # (M,) extent of each model's evaluated centres
    models: tuple[Mapping[str, CameraPose], ...]
    num_not_in_gt: int
    gt_names: tuple[str, ...]  # sorted; the order of every array above

    @classmethod
    def build(
        cls, gt: Mapping[str, CameraPose], models: Sequence[Mapping[str, CameraPose]]
    ) -> _Poses:
        if len(gt) < 2:
            raise InputError(
                f"evaluation needs at least 2 ground-truth images to form pairs, got {len(gt)}"
            )
        models = tuple(models)
        names = sorted(gt)
        index = {name: i for i, name in enumerate(names)}
        n = len(names)
        gt_r, gt_t = _stack([gt[name] for name in names], "ground truth")
        gt_c = -np.einsum("nji,nj->ni", gt_r, gt_t)

        # The largest model containing an image wins; on a tie the first one.
        model_index = np.full(n, -1)
        order = sorted(range(len(models)), key=lambda m: (-len(models[m]), m))
        not_in_gt: set[str] = set()
        duplicates = 0
        for m in order:
            for name in models[m]:
                i = index.get(name)
                if i is None:
                    not_in_gt.add(name)
                elif model_index[i] < 0:
                    model_index[i] = m
                else:
                    duplicates += 1
        if duplicates:
            logger.warning(
                "%d image(s) are in several models; each is evaluated in the largest", duplicates
            )
        if not_in_gt:
            logger.warning(
                "%d image(s) of the models are not in the ground truth and are ignored, e.g. %r",
                len(not_in_gt),
                min(not_in_gt),
            )

        est_r = np.full((n, 3, 3), np.nan)
        est_t = np.full((n, 3), np.nan)
        registered = np.flatnonzero(model_index >= 0)
        if len(registered):
            est = [models[model_index[i]][names[i]] for i in registered]
            est_r[registered], est_t[registered] = _stack(est, "estimated model")
        est_c = -np.einsum("nji,nj->ni", est_r, est_t)
        extents = np.array(
            [_extent(est_c[model_index == m]) for m in range(len(models))], dtype=np.float64
        )
        return cls(
            gt_rotations=gt_r,
            gt_translations=gt_t,
            gt_centers=gt_c,
            gt_extent=_extent(gt_c),
            model_index=model_index,
            est_rotations=est_r,
            est_translations=est_t,
            est_centers=est_c,
            model_extents=extents,
            models=models,
            num_not_in_gt=len(not_in_gt),
            gt_names=tuple(names),
        )


@dataclass(frozen=True)
class _PairErrors:
    index0: np.ndarray  # (P,) int
    index1: np.ndarray
    rotation: np.ndarray  # (P,) degrees
    translation: np.ndarray  # NaN for zero-baseline pairs
    error: np.ndarray
    zero_baseline: np.ndarray  # (P,) bool

    @classmethod
    def compute(cls, p: _Poses) -> _PairErrors:
        n = len(p.model_index)
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("i", "j", "r", "t", "e", "z")}
        min_gt_baseline = ZERO_BASELINE_FRACTION * p.gt_extent
        for i in tqdm(range(n - 1), desc="pair errors", unit="image", disable=n < 500):
            j = np.arange(i + 1, n)
            rel_r_gt = p.gt_rotations[j] @ p.gt_rotations[i].T
            rel_t_gt = p.gt_translations[j] - rel_r_gt @ p.gt_translations[i]
            rel_r_est = p.est_rotations[j] @ p.est_rotations[i].T
            rel_t_est = p.est_translations[j] - rel_r_est @ p.est_translations[i]

            rot = _rotation_angle_deg(np.einsum("kji,kjl->kil", rel_r_est, rel_r_gt))
            trans = _vector_angle_deg(rel_t_est, rel_t_gt)
            zero_gt = np.linalg.norm(rel_t_gt, axis=1) < min_gt_baseline
            m = p.model_index[i]
            if m >= 0:
                zero_est = np.linalg.norm(rel_t_est, axis=1) <= (
                    ZERO_BASELINE_FRACTION * p.model_extents[m]
                )
                trans = np.where(zero_est, 180.0, trans)
            trans = np.where(zero_gt, np.nan, trans)
            err = np.where(zero_gt, rot, np.fmax(rot, trans))

            together = (p.model_index[j] == m) & (m >= 0)
            rot = np.where(together, rot, np.inf)
            trans = np.where(together, trans, np.inf)
            err = np.where(together, err, np.inf)
            for key, value in zip(
                "ijrtez", (np.full_like(j, i), j, rot, trans, err, zero_gt), strict=False
            ):
                out[key].append(value)
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
        return cls(cat["i"], cat["j"], cat["r"], cat["t"], cat["e"], cat["z"].astype(bool))


class _ImageErrors:
    """Per-image absolute errors, filled model by model (NaN until a model is aligned)."""

    def __init__(self, n: int) -> None:
        self.rotation = np.full(n, np.nan)
        self.center = np.full(n, np.nan)

    def record(
        self, poses: _Poses, members: np.ndarray, rotation: np.ndarray, residuals: np.ndarray
    ) -> None:
        """Errors of the images `members` of one model aligned by `rotation` (est -> GT world),
        whose aligned centres are `residuals` away from the GT ones."""
        aligned = poses.est_rotations[members] @ rotation.T
        rel = np.einsum("kji,kjl->kil", aligned, poses.gt_rotations[members])
        self.rotation[members] = _rotation_angle_deg(rel)
        self.center[members] = residuals

    def rows(
        self, poses: _Poses, rotation_unit: float, center_unit: float, extent: float
    ) -> tuple[ImageError, ...]:
        names = poses.gt_names
        # Sort keys: 0 not registered, 1 not aligned, 2 aligned; then the larger error in units
        # of the loosest threshold of its metric, largest first; then the name.
        keyed = []
        for i, name in enumerate(names):
            m = int(poses.model_index[i])
            rot, cen = float(self.rotation[i]), float(self.center[i])
            if m < 0:
                status: ImageStatus = "not registered"
                key: tuple = (0, 0.0, name)
            elif math.isnan(cen):
                status, key = "not aligned", (1, 0.0, name)
            else:
                status = "aligned"
                key = (2, -max(rot / rotation_unit, cen / max(center_unit, 1e-300)), name)
            relative = cen / extent if extent > 0 else math.nan
            row = ImageError(name, status, m if m >= 0 else None, rot, cen, relative)
            keyed.append((key, row))
        return tuple(row for _, row in sorted(keyed, key=lambda kr: kr[0]))


def _align_centers(
    poses: _Poses, center_thresholds: tuple[float, ...], seed: int
) -> tuple[list[ModelAlignment], np.ndarray, _ImageErrors]:
    """Camera centres: one robust alignment per model and threshold, as IMC's register_by_Horn.

    Returns each model's alignment, the number of correct centres per threshold over all
    models, and the per-image errors under the loosest threshold's alignment."""
    num_correct = np.zeros(len(center_thresholds), dtype=np.int64)
    alignments = []
    image_errors = _ImageErrors(len(poses.gt_names))
    for m, model in enumerate(poses.models):
        members = np.flatnonzero(poses.model_index == m)
        aligned, correct = _align_model(poses, m, members, center_thresholds, seed, image_errors)
        num_correct += correct
        alignments.append(ModelAlignment(len(model), len(members), aligned, tuple(correct)))
    return alignments, num_correct, image_errors


def _align_model(
    poses: _Poses,
    m: int,
    members: np.ndarray,
    center_thresholds: tuple[float, ...],
    seed: int,
    image_errors: _ImageErrors,
) -> tuple[bool, list[int]]:
    """Whether model `m` (its GT images `members`) can be aligned, and its correct centres per
    threshold; its images' errors go to `image_errors`. Not aligned: a warning, none correct."""
    extent = poses.gt_extent
    src, dst = poses.est_centers[members], poses.gt_centers[members]
    correct = [0] * len(center_thresholds)
    if _is_degenerate(src) or _is_degenerate(dst):
        logger.warning(
            "model %d: cannot align its %d evaluated camera centres to the ground truth "
            "(fewer than 3, or identical/collinear); they count as wrong",
            m,
            len(members),
        )
        return False, correct
    loosest = int(np.argmax(center_thresholds))
    for k, t in enumerate(center_thresholds):
        scale, rotation, translation = align_sim3(src, dst, inlier_threshold=t * extent, seed=seed)
        residuals = np.linalg.norm(scale * src @ rotation.T + translation - dst, axis=1)
        correct[k] = int(np.sum(residuals < t * extent))
        if k == loosest:
            image_errors.record(poses, members, rotation, residuals)
    return True, correct


def _stack(cameras: Sequence[CameraPose], what: str) -> tuple[np.ndarray, np.ndarray]:
    rotations, translations = [], []
    for c in cameras:
        r = np.asarray(c.rotation, dtype=np.float64)
        t = np.asarray(c.translation, dtype=np.float64)
        if r.shape != (3, 3) or t.shape != (3,):
            raise InputError(
                f"{what}: image {c.name!r} has a rotation of shape {r.shape} and a translation "
                f"of shape {t.shape}; expected (3, 3) and (3,)"
            )
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(t))):
            raise InputError(f"{what}: image {c.name!r} has a non-finite pose")
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise InputError(f"{what}: the rotation of image {c.name!r} is not a rotation matrix")
        rotations.append(r)
        translations.append(t)
    return np.stack(rotations), np.stack(translations)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991), batched over leading axes.

    Written here in numpy rather than calling pycolmap's estimate_sim3d(_robust): by project
    rule pycolmap calls live only in mapping.py and export.py, and this is 15 lines.
    src, dst: (..., N, 3). Returns s (...), R (..., 3, 3), t (..., 3).
    """
    mu_s, mu_d = src.mean(axis=-2), dst.mean(axis=-2)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    var_s = np.mean(np.sum(xs**2, axis=-1), axis=-1)
    cov = np.einsum("...ni,...nj->...ij", xd, xs) / src.shape[-2]
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones_like(sigma)
    d[..., 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))  # no reflections
    d[..., 2][d[..., 2] == 0] = 1.0
    rotation = (u * d[..., None, :]) @ vt
    scale = np.sum(sigma * d, axis=-1) / var_s
    translation = mu_d - scale[..., None] * np.einsum("...ij,...j->...i", rotation, mu_s)
    return scale, rotation, translation


def _random_triplets(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k rows of 3 distinct indices in [0, n) (rejection sampling; n > 3)."""
    rows = np.zeros((0, 3), dtype=np.int64)
    while len(rows) < k:
        draw = rng.integers(0, n, size=(2 * k, 3))
        distinct = (
            (draw[:, 0] != draw[:, 1]) & (draw[:, 0] != draw[:, 2]) & (draw[:, 1] != draw[:, 2])
        )
        rows = np.concatenate([rows, draw[distinct]])
    return rows[:k]


def _residuals(model: tuple[float, np.ndarray, np.ndarray], src: np.ndarray, dst: np.ndarray):
    s, r, t = model
    return np.linalg.norm(s * src @ r.T + t - dst, axis=1)


def _is_degenerate(points: np.ndarray) -> np.ndarray | bool:
    """True for (..., N, 3) point sets with fewer than 3 points, or identical/collinear ones."""
    if points.shape[-2] < 3:
        return np.ones(points.shape[:-2], dtype=bool) if points.ndim > 2 else True
    centered = points - points.mean(axis=-2, keepdims=True)
    sv = np.linalg.svd(centered, compute_uv=False)  # (..., 3) principal extents
    size = np.max(np.abs(points), axis=(-2, -1))
    identical = sv[..., 0] <= 1e-12 * np.maximum(size, 1e-300)
    collinear = sv[..., 1] <= COLLINEAR_TOLERANCE * sv[..., 0]
    out = identical | collinear
    return out if points.ndim > 2 else bool(out)


def _extent(centers: np.ndarray) -> float:
    """Largest distance of the centres from their mean (0 for fewer than 2)."""
    if len(centers) < 2:
        return 0.0
    return float(np.max(np.linalg.norm(centers - centers.mean(axis=0), axis=1)))


def _rotation_angle_deg(m: np.ndarray) -> np.ndarray:
    """Angle of rotation matrices (K, 3, 3); atan2 keeps full precision near 0 and 180."""
    cos = (np.trace(m, axis1=1, axis2=2) - 1) / 2
    axis = np.stack(
        [m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], axis=1
    )
    sin = np.linalg.norm(axis, axis=1) / 2
    return np.degrees(np.arctan2(sin, cos))


def _vector_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between (K, 3) vectors, in [0, 180], scale-free."""
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1)))


def _check_thresholds(name: str, values: Sequence[float]) -> tuple[float, ...]:
    values = tuple(values)
    if not values or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    ):
        raise ConfigError(f"{name} must be a non-empty list of positive numbers, got {values}")
    return tuple(float(v) for v in values)


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _by_threshold(thresholds: Sequence[float], values: Sequence[Any]) -> dict[str, Any]:
    return {f"{t:g}": v for t, v in zip(thresholds, values, strict=True)}


def _span(thresholds: Sequence[float]) -> str:
    return (
        f"{min(thresholds):g}-{max(thresholds):g}" if len(thresholds) > 1 else f"{thresholds[0]:g}"
    )


def _deg(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} deg"


def _json_ready(value: Any, *, strict: bool = False, where: str = "") -> Any:
    """Plain JSON types: numpy scalars/arrays and tuples converted, inf/NaN become None.

    With `strict`, anything else raises InputError (used for caller-provided statistics)."""
    if isinstance(value, Mapping):
        return {
            str(k): _json_ready(v, strict=strict, where=f"{where}.{k}") for k, v in value.items()
        }
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(v, strict=strict, where=f"{where}[]") for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if strict:
        raise InputError(
            f"model statistic {where.lstrip('.')!r} is a {type(value).__name__}; "
            "only numbers, strings, booleans, lists and dicts can go into the metrics JSON"
        )
    return value


def load_ground_truth(gt_path: Path) -> dict[str, CameraPose]:
    """Known cameras from a text file (gt format) or a COLMAP model folder."""
    from .export import read_poses
    from .gt import read_cameras_txt

    gt_path = Path(gt_path)
    if gt_path.is_dir():
        return read_poses(gt_path)
    return read_cameras_txt(gt_path)


def evaluate_reconstruction(model_path: Path, gt_path: Path) -> PoseMetrics:
    """Compare every model below `model_path` (a sparse folder, a model folder, or an output
    folder of `reconstruct run`, whose sparse/ is used, else its model/) with the ground truth."""
    from .export import model_dirs, model_statistics, read_all_poses

    model_path = Path(model_path)
    if not model_path.is_dir():
        raise InputError(
            f"{model_path} is not a folder; pass the output folder of `reconstruct run`, its "
            f"{paths.SPARSE}/ folder or a model folder"
        )
    if (model_path / paths.SPARSE).is_dir():
        model_path = model_path / paths.SPARSE
    elif paths.is_model_dir(model_path / paths.MODEL):
        model_path = model_path / paths.MODEL
    stats = model_statistics(model_dirs(model_path)[0])
    return evaluate(load_ground_truth(gt_path), read_all_poses(model_path), model_statistics=stats)
