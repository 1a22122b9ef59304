"""Pictures of the pipeline's work, as PNG files (`reconstruct viz ...`).

* :func:`draw_matches`: the matches of one pair from ``features.h5`` / ``matches.h5``, the two
  images side by side, RANSAC inliers (OpenCV's MAGSAC++ fundamental matrix) in green and
  outliers in red, a random subsample (fixed seed) when there are more than ``max_lines``.
  Without a pair, :func:`choose_pair` picks the one with the most (or, ``worst``, the fewest)
  inliers among the pairs with enough matches for a fundamental matrix.
* :func:`draw_pca`: an image, the first three principal components of its DINOv2 patch
  features as RGB, and the PCA foreground mask (see models/patch_features.py).
* :func:`draw_model`: the sparse points (subsampled) and camera frusta of a COLMAP model,
  rendered with matplotlib from a few viewpoints side by side, in a view box that follows the
  robust extent of the points and cameras (:func:`model_view`), so that one camera far off does
  not squash the picture.

Everything is headless: match and PCA pictures are composed with OpenCV, model pictures use a
matplotlib ``Figure`` with the Agg canvas (no pyplot, no global backend change). Picture sizes
are deterministic (see each function). Files are written atomically.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from . import paths
from .errors import InputError, StorageError
from .images import read_image
from .storage import FeaturesReader, MatchesReader, atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .gt import CameraPose

logger = logging.getLogger(__name__)

INLIER_COLOR = (40, 200, 40)  # RGB
OUTLIER_COLOR = (230, 40, 40)
BANNER = 32  # pixels of text above a picture
DEFAULT_HEIGHT = 480
MIN_MATCHES_FOR_F = 8
"""A fundamental matrix needs 8 matches; pairs with fewer have no inliers to rank."""
VIEW_PERCENTILES = (2.0, 98.0)
"""The points' part of the model view box: these percentiles of their coordinates, per axis."""
VIEW_MARGIN = 0.1
"""The view box grows by this fraction of its size on every side."""
CAMERA_SPREAD = 3.0
"""Cameras farther than this many times the median camera distance from the median camera
centre are outliers: they do not widen the view box (they are counted as outside)."""


# ----------------------------------------------------------------------------- helpers


def write_png(path: Path, image_rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG, atomically; returns the path."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise StorageError(f"could not encode a PNG for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return path


def _banner(width: int, text: str, height: int = BANNER) -> np.ndarray:
    """A white strip with one line of black text (cut to fit)."""
    strip = np.full((height, width, 3), 255, np.uint8)
    scale = 0.5
    font = cv2.FONT_HERSHEY_SIMPLEX
    while len(text) > 4 and cv2.getTextSize(text, font, scale, 1)[0][0] > width - 12:
        text = text[: max(4, len(text) - max(1, len(text) // 20)) - 3] + "..."
    cv2.putText(strip, text, (6, height - 11), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _resize_to_height(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = height / h
    size = (max(1, round(w * scale)), height)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), scale


def fundamental_inliers(
    kpts0: np.ndarray, kpts1: np.ndarray, threshold: float = 4.0, seed: int = 0
) -> np.ndarray:
    """bool (K,): RANSAC (MAGSAC++) inliers of a fundamental matrix between matched points.

    Fewer than 8 matches, or no model found: all False. `threshold` is in pixels (as
    ``mapping.ransac_max_error``).
    """
    k = len(kpts0)
    if k < 8:
        return np.zeros(k, bool)
    cv2.setRNGSeed(seed)
    _, mask = cv2.findFundamentalMat(
        np.asarray(kpts0, np.float64),
        np.asarray(kpts1, np.float64),
        cv2.USAC_MAGSAC,
        threshold,
        0.9999,
        10000,
    )
    if mask is None:
        return np.zeros(k, bool)
    return mask.reshape(-1).astype(bool)[:k]


def render_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    inliers: np.ndarray,
    *,
    title: str = "",
    max_lines: int = 300,
    height: int = DEFAULT_HEIGHT,
    seed: int = 0,
) -> np.ndarray:
    """Two RGB images side by side (both scaled to `height`) with match lines, under a title.

    `kpts0`, `kpts1` are the matched keypoints (K, 2) in each image's pixel frame (COLMAP
    convention), `inliers` a bool (K,). At most `max_lines` matches are drawn, a uniform random
    subsample (seeded) so the picture keeps the inlier ratio. The result is RGB uint8 of height
    ``height + 32`` and width the sum of the scaled widths.
    """
    a, s0 = _resize_to_height(image0, height)
    b, s1 = _resize_to_height(image1, height)
    canvas = np.concatenate([a, b], axis=1).copy()
    k = len(kpts0)
    order = np.arange(k)
    if k > max_lines:
        order = np.sort(np.random.default_rng(seed).choice(k, max_lines, replace=False))
    # Outliers first, so inliers are drawn on top.
    order = order[np.argsort(np.asarray(inliers, bool)[order], kind="stable")]
    shift = 1 << 4  # sub-pixel drawing
    for i in order:
        x0, y0 = (np.asarray(kpts0[i]) * s0 - 0.5) * shift
        x1, y1 = (np.asarray(kpts1[i]) * s1 - 0.5) * shift
        x1 += a.shape[1] * shift
        color = INLIER_COLOR if inliers[i] else OUTLIER_COLOR
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
        cv2.line(canvas, p0, p1, color, 1, cv2.LINE_AA, shift=4)
        cv2.circle(canvas, p0, 2 * shift, color, -1, cv2.LINE_AA, shift=4)
        cv2.circle(canvas, p1, 2 * shift, color, -1, cv2.LINE_AA, shift=4)
    return np.concatenate([_banner(canvas.shape[1], title), canvas], axis=0)


def match_title(name0: str, name1: str, inliers: np.ndarray, shown: int, label: str = "") -> str:
    k = len(inliers)
    n_in = int(np.sum(inliers))
    ratio = f"{100 * n_in / k:.0f}%" if k else "-"
    prefix = f"{label}: " if label else ""
    drawn = f", {shown} drawn" if shown < k else ""
    return f"{prefix}{name0} - {name1}: {k} matches, {n_in} inliers ({ratio}){drawn}"


# ----------------------------------------------------------------------------- matches


def run_image_dir(output_dir: Path) -> Path:
    """The image folder a run used, from its ``run.json`` (written by `reconstruct run`)."""
    summary = Path(output_dir) / paths.RUN_SUMMARY
    try:
        return Path(json.loads(summary.read_text())["image_dir"])
    except (OSError, ValueError, KeyError):
        raise InputError(
            f"cannot tell which image folder {output_dir} was made from (no readable "
            f"{summary}); pass the image folder (--images IMAGE_DIR)"
        ) from None


@dataclass(frozen=True)
class PairChoice:
    """The pair :func:`choose_pair` picked, and why."""

    name0: str
    name1: str
    num_matches: int
    num_inliers: int
    num_candidates: int
    """Pairs with at least MIN_MATCHES_FOR_F matches, among which the pair was chosen."""
    num_pairs: int
    """All pairs stored in matches.h5."""
    worst: bool

    @property
    def reason(self) -> str:
        which = "fewest" if self.worst else "most"
        return (
            f"{self.name0} - {self.name1} has the {which} RANSAC inliers ({self.num_inliers} of "
            f"{self.num_matches} matches) of the {self.num_candidates} pairs with at least "
            f"{MIN_MATCHES_FOR_F} matches ({self.num_pairs} matched pairs in all)"
        )


def choose_pair(output_dir: Path, *, worst: bool = False, ransac_threshold: float = 4.0):
    """The pair of a run with the most inliers (`worst`: the fewest), as a :class:`PairChoice`.

    Inliers are counted as :func:`draw_matches` draws them (:func:`fundamental_inliers` at
    `ransac_threshold` px). Only pairs with at least MIN_MATCHES_FOR_F matches compete: with
    fewer there is no fundamental matrix, so `worst` would otherwise always show an empty
    picture. Ties go to the pair with more matches (`worst`: fewer), then to name order.
    Raises InputError when no pair has enough matches.
    """
    output_dir = Path(output_dir)
    features_path, matches_path = output_dir / paths.FEATURES, output_dir / paths.MATCHES
    with FeaturesReader(features_path) as feats, MatchesReader(matches_path) as matches:
        counts = matches.counts()
        candidates = sorted(p for p, k in counts.items() if k >= MIN_MATCHES_FOR_F)
        keypoints: dict[str, np.ndarray] = {}
        scored = []
        for name0, name1 in tqdm(candidates, desc="ranking pairs", unit="pair"):
            for n in (name0, name1):
                if n not in keypoints:
                    keypoints[n] = feats.read(n).keypoints
            m, _ = matches.read(name0, name1)
            k0, k1 = keypoints[name0][m[:, 0]], keypoints[name1][m[:, 1]]
            n_in = int(fundamental_inliers(k0, k1, ransac_threshold).sum())
            scored.append((n_in, len(m), name0, name1))
    if not scored:
        raise InputError(
            f"no pair in {matches_path} has {MIN_MATCHES_FOR_F} or more matches "
            f"({len(counts)} pairs stored); nothing to show. Name a pair: "
            "reconstruct viz matches OUTPUT NAME0 NAME1"
        )
    sign = 1 if worst else -1
    n_in, n_matches, name0, name1 = min(scored, key=lambda r: (sign * r[0], sign * r[1], r[2:]))
    return PairChoice(name0, name1, n_matches, n_in, len(scored), len(counts), worst)


def draw_matches(
    image_dir: Path | None,
    output_dir: Path,
    name0: str | None = None,
    name1: str | None = None,
    out_png: Path | None = None,
    *,
    worst: bool = False,
    max_lines: int = 300,
    ransac_threshold: float = 4.0,
    height: int = DEFAULT_HEIGHT,
) -> Path:
    """Draw the stored matches of (name0, name1) of a run in `output_dir` into a PNG.

    Reads ``output_dir/features.h5`` and ``output_dir/matches.h5`` and the two images from
    `image_dir` (None: the folder recorded in ``output_dir/run.json``). Inliers are those of a
    MAGSAC++ fundamental matrix at `ransac_threshold` px. Without names, the pair is chosen by
    :func:`choose_pair` (most inliers; `worst`: fewest), logged and named in the picture's
    title. Default output: ``output_dir/viz/matches_<name0>_<name1>.png`` (``/`` in names
    becomes ``_``). Returns the path written.
    """
    output_dir = Path(output_dir)
    image_dir = Path(image_dir) if image_dir is not None else run_image_dir(output_dir)
    if (name0 is None) != (name1 is None):
        raise InputError(
            "give both image names of the pair, or none to show the pair with the most inliers"
        )
    label = ""
    if name0 is None or name1 is None:
        choice = choose_pair(output_dir, worst=worst, ransac_threshold=ransac_threshold)
        logger.info("No pair given: showing %s", choice.reason)
        name0, name1 = choice.name0, choice.name1
        which = "fewest" if worst else "most"
        label = f"{which} inliers of {choice.num_candidates} pairs"
    elif worst:
        raise InputError(
            f"--worst chooses the pair itself; drop the image names {name0!r} {name1!r} "
            "or drop --worst"
        )
    features_path, matches_path = output_dir / paths.FEATURES, output_dir / paths.MATCHES
    with FeaturesReader(features_path) as feats, MatchesReader(matches_path) as matches:
        for n in (name0, name1):
            if n not in feats:
                raise InputError(
                    f"image {n!r} has no features in {features_path}; "
                    f"known images: {', '.join(feats.names()[:5])} ..."
                )
        if (name0, name1) not in matches:
            raise InputError(
                f"pair ({name0!r}, {name1!r}) was not matched in {matches_path}; it is not in "
                "pairs.txt (try --set pairs.strategy=exhaustive) or one image is unreadable"
            )
        f0, f1 = feats.read(name0), feats.read(name1)
        m, _ = matches.read(name0, name1)
    image0, image1 = read_image(Path(image_dir) / name0), read_image(Path(image_dir) / name1)
    for img, f, n in ((image0, f0, name0), (image1, f1, name1)):
        if (img.shape[1], img.shape[0]) != tuple(f.image_size):
            raise InputError(
                f"image {n!r} in {image_dir} is {img.shape[1]}x{img.shape[0]} px but its features "
                f"were extracted at {f.image_size[0]}x{f.image_size[1]}: wrong image folder?"
            )
    k0, k1 = f0.keypoints[m[:, 0]], f1.keypoints[m[:, 1]]
    inliers = fundamental_inliers(k0, k1, ransac_threshold)
    title = match_title(name0, name1, inliers, min(max_lines, len(m)), label)
    picture = render_matches(
        image0, image1, k0, k1, inliers, title=title, max_lines=max_lines, height=height
    )
    if out_png is None:
        safe = f"{name0}_{name1}".replace("/", "_")
        out_png = output_dir / paths.VIZ / f"matches_{safe}.png"
    logger.info("%s -> %s", title, out_png)
    return write_png(out_png, picture)


# ----------------------------------------------------------------------------- PCA


def render_pca(image: np.ndarray, grid, *, threshold: float = 0.0, height: int = 360) -> np.ndarray:
    """Three panels: the image, PC 1-3 of its patch tokens as RGB, the PCA foreground.

    `grid` is a models.patch_features.PatchGrid of `image`. Each panel is scaled to `height`;
    the result is RGB uint8 (height + 32, 3 * panel width, 3).
    """
    from .models.patch_features import pca_foreground, pca_rgb

    panel, _ = _resize_to_height(image, height)
    ph, pw = panel.shape[:2]
    mask, _ = pca_foreground(grid.tokens, threshold)
    rgb = (pca_rgb(grid.tokens) * 255).round().astype(np.uint8)
    rgb = cv2.resize(rgb, (pw, ph), interpolation=cv2.INTER_NEAREST)
    big_mask = cv2.resize(mask.astype(np.uint8), (pw, ph), interpolation=cv2.INTER_NEAREST) > 0
    fg = (panel * 0.25).astype(np.uint8)
    fg[big_mask] = panel[big_mask]
    gh, gw = grid.shape
    title = (
        f"{gw}x{gh} patches, {grid.tokens.shape[2]}-D | PC1-3 as RGB | "
        f"foreground (1st PC > {threshold:g}): {int(mask.sum())} of {gh * gw} patches"
    )
    body = np.concatenate([panel, rgb, fg], axis=1)
    return np.concatenate([_banner(body.shape[1], title), body], axis=0)


def draw_pca(
    image_path: Path,
    out_png: Path | None = None,
    config: Any = None,
    device: Any = "cpu",
    *,
    model: Any = None,
    height: int = 360,
) -> Path:
    """Picture of the DINOv2 patch features of one image (see :func:`render_pca`).

    `config` is a PatchFeaturesConfig (default settings when None); its backbone, resolution,
    layer and foreground_threshold are used. `model` (a models.dinov2.DinoModel) skips loading
    weights.
    Default output: ``<image stem>_pca.png`` beside the current folder. Returns the path.
    """
    from .models.patch_features import PatchExtractor, PatchFeaturesConfig

    config = config if config is not None else PatchFeaturesConfig()
    image_path = Path(image_path)
    image = read_image(image_path)
    extractor = PatchExtractor(config, device, model=model)
    grid = extractor.grid(image)
    picture = render_pca(image, grid, threshold=config.foreground_threshold, height=height)
    out_png = Path(out_png) if out_png is not None else Path(f"{image_path.stem}_pca.png")
    logger.info("PCA of %s (%s, %s) -> %s", image_path, config.backbone, grid.shape, out_png)
    return write_png(out_png, picture)


# ----------------------------------------------------------------------------- model


def find_model_dir(path: Path) -> Path:
    """A COLMAP model folder from a run's output folder (``model/``, else the largest of
    ``sparse/``), a sparse folder, or a model folder itself."""
    from .export import model_dirs

    path = Path(path)
    if paths.is_model_dir(path):
        return path
    if paths.is_model_dir(path / paths.MODEL):
        return path / paths.MODEL
    if (path / paths.SPARSE).is_dir():
        return model_dirs(path / paths.SPARSE)[0]
    if path.is_dir():
        return model_dirs(path)[0]
    raise StorageError(f"{path} does not exist; pass the output folder of `reconstruct run`")


def _up_frame(poses: list) -> np.ndarray:
    """A rotation (rows: new x, y, z axes in world coordinates) whose z is 'up' as the
    cameras see it (minus their mean image-down axis)."""
    if not poses:
        return np.eye(3)
    down = np.mean([p.rotation[1] for p in poses], axis=0)
    right = np.mean([p.rotation[0] for p in poses], axis=0)
    z = -down / max(np.linalg.norm(down), 1e-12)
    x = right - (right @ z) * z
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def frustum_lines(pose, scale: float) -> np.ndarray:
    """(8, 2, 3) world-space segments of a camera frustum of depth `scale`: four from the
    centre to the image corners and the four image edges."""
    w, h = 2 * pose.cx, 2 * pose.cy
    corners_px = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    rays = np.stack(
        [
            (corners_px[:, 0] - pose.cx) / pose.fx,
            (corners_px[:, 1] - pose.cy) / pose.fy,
            np.ones(4),
        ],
        axis=1,
    )
    corners = pose.center + (rays * scale) @ pose.rotation  # R^T applied to each row
    segs = [(pose.center, c) for c in corners]
    segs += [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return np.array(segs)


@dataclass(frozen=True)
class ModelView:
    """The cubic view box of a model picture, and what falls outside it."""

    lo: np.ndarray
    """(3,) lower axis limits."""
    hi: np.ndarray
    """(3,) upper axis limits (``hi - lo`` is the same on every axis)."""
    points_outside: int
    cameras_outside: int

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """bool (N,): which of the (N, 3) positions lie inside the box."""
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        return np.all((xyz >= self.lo) & (xyz <= self.hi), axis=1)


def model_view(
    points: np.ndarray,
    centres: np.ndarray,
    *,
    percentiles: tuple[float, float] = VIEW_PERCENTILES,
    margin: float = VIEW_MARGIN,
    camera_spread: float = CAMERA_SPREAD,
) -> ModelView:
    """A cube around the robust extent of `points` (P, 3) and camera `centres` (C, 3).

    The box holds the `percentiles` of the point coordinates (all points when there are fewer
    than 10) and the cameras that are not outliers: a camera is an outlier when its distance
    from the per-axis median camera centre exceeds `camera_spread` times the median of those
    distances. Percentiles alone do not fit cameras: they are few and all on one side of the
    scene, so a 2-98 % cut of points and cameras together would drop all of them. The box is
    made cubic (its largest side, centred), then grows by `margin` of that side on each side.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    if len(points) == 0 and len(centres) == 0:
        raise InputError("model_view: no points and no cameras to frame")
    boxes = []
    if len(points) >= 10:
        boxes.append(np.percentile(points, percentiles, axis=0))
    elif len(points):
        boxes.append(np.stack([points.min(axis=0), points.max(axis=0)]))
    if len(centres):
        dist = np.linalg.norm(centres - np.median(centres, axis=0), axis=1)
        inliers = centres[dist <= camera_spread * np.median(dist) + 1e-12]
        boxes.append(np.stack([inliers.min(axis=0), inliers.max(axis=0)]))
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    side = float(np.max(hi - lo)) or 1.0
    half = side * (0.5 + margin)
    mid = (lo + hi) / 2
    view = ModelView(mid - half, mid + half, 0, 0)
    return ModelView(
        view.lo,
        view.hi,
        points_outside=int(np.sum(~view.contains(points))),
        cameras_outside=int(np.sum(~view.contains(centres))),
    )


def render_model(
    poses: list[CameraPose],
    xyz: np.ndarray,
    rgb: np.ndarray,
    *,
    title: str = "",
    views: int = 3,
    max_points: int = 20000,
    panel_size: int = 480,
    seed: int = 0,
) -> tuple[Figure, ModelView]:
    """A matplotlib Figure (Agg canvas) of `xyz` (P, 3) points in `rgb` (P, 3) uint8 colours and
    the frusta of `poses`, from `views` azimuths, limited to :func:`model_view`'s box.

    The frame is the model's, rotated so that z is the cameras' mean up direction (a rotation:
    lengths stay in scene units). Points and cameras outside the box are not drawn; their
    numbers are in the figure's title. At most `max_points` points are drawn (a seeded
    subsample). The figure is ``views * panel_size`` x ``panel_size`` pixels at its dpi.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = _up_frame(poses)
    pts = np.asarray(xyz, np.float64).reshape(-1, 3) @ frame.T
    centres = np.array([p.center for p in poses]).reshape(-1, 3) @ frame.T
    view = model_view(pts, centres)
    inside = view.contains(pts)
    pts, rgb = pts[inside], np.asarray(rgb).reshape(-1, 3)[inside]
    if len(pts) > max_points:
        keep = np.random.default_rng(seed).choice(len(pts), max_points, replace=False)
        pts, rgb = pts[keep], rgb[keep]
    scale = 0.06 * float(view.hi[0] - view.lo[0])  # frustum depth
    shown = view.contains(centres)
    segments = [frustum_lines(p, scale) @ frame.T for p, s in zip(poses, shown, strict=True) if s]

    dpi = 100
    fig = Figure(figsize=(views * panel_size / dpi, panel_size / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    azimuths = np.linspace(-60, 60, views) if views > 1 else np.array([-45.0])
    for i, azim in enumerate(azimuths):
        ax = fig.add_subplot(1, views, i + 1, projection="3d")
        if len(pts):
            size = 4.0 if len(pts) < 2000 else 1.5 if len(pts) < 10000 else 0.5
            ax.scatter(*pts.T, c=rgb / 255.0, s=size, depthshade=False, linewidths=0)
        for seg in segments:
            for a, b in seg:
                ax.plot(*np.stack([a, b]).T, color="red", linewidth=0.8)
        ax.set_xlim(view.lo[0], view.hi[0])
        ax.set_ylim(view.lo[1], view.hi[1])
        ax.set_zlim(view.lo[2], view.hi[2])
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=25, azim=float(azim) - 90)
        ax.tick_params(labelsize=6, pad=0)
        for axis, name in zip("xyz", ("x", "y", "z (up)"), strict=True):
            getattr(ax, f"set_{axis}label")(f"{name}, scene units", fontsize=7, labelpad=-4)
        ax.set_title(f"azimuth {azim:+.0f} deg", fontsize=9)
    outside = (
        f"outside the view: {view.cameras_outside} of {len(poses)} cameras, "
        f"{view.points_outside} of {len(xyz)} points"
    )
    head = f"{title}: " if title else ""
    fig.suptitle(
        f"{head}{len(poses)} cameras, {len(pts)} points drawn; {outside}", fontsize=9, y=0.99
    )
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=0.88, wspace=0.05)
    return fig, view


def draw_model(
    model_dir: Path,
    out_png: Path | None = None,
    *,
    views: int = 3,
    max_points: int = 20000,
    panel_size: int = 480,
    seed: int = 0,
) -> Path:
    """Render the sparse points and camera frusta of a model from `views` viewpoints.

    `model_dir` is a run's output folder, a sparse folder or a model folder (see
    :func:`find_model_dir`). See :func:`render_model` for the picture: points in their colours,
    frusta in red, axes labelled in scene units, limits from the robust extent of points and
    cameras (:func:`model_view`), the count of what falls outside in the title. The PNG is
    ``views * panel_size`` x ``panel_size`` pixels. Default output: ``<folder>/viz/model.png``.
    """
    from .export import read_points3d, read_poses

    folder = find_model_dir(model_dir)
    poses = list(read_poses(folder).values())
    xyz, rgb, _ = read_points3d(folder)
    if len(poses) == 0 and len(xyz) == 0:
        raise StorageError(f"model {folder} has no registered images and no points to draw")
    fig, view = render_model(
        poses,
        xyz,
        rgb,
        title=str(folder),
        views=views,
        max_points=max_points,
        panel_size=panel_size,
        seed=seed,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    out_png = Path(out_png) if out_png is not None else Path(model_dir) / paths.VIZ / "model.png"
    atomic_write_bytes(out_png, buf.getvalue())
    logger.info(
        "Model %s (%d cameras, %d points; outside the view: %d cameras, %d points) -> %s",
        folder,
        len(poses),
        len(xyz),
        view.cameras_outside,
        view.points_outside,
        out_png,
    )
    return out_png
