"""Sub-pixel refinement of matched keypoints onto anchor points, run by mapping before COLMAP.

Why (issue 11, measured with ``scripts/match_precision.py`` on the synthetic ring ``ring2.4``):
ALIKED + LightGlue's verified matches are 0.81 px off the true correspondence at the median
(SIFT's 0.36 px), and more the wider apart the views (1.31 px at 20-40 degrees). Of the matches
more than 2 px off, 94% have no keypoint within 1 px of the true position: the point found in one
image was not detected in the other, and the matcher took a neighbouring keypoint. Sub-pixel
fits on ALIKED's score map cannot fix that (the right keypoint does not exist); mapping only the
matches within 0.75 px of the truth (an oracle) lifts AUC@5 from 0.967 to 0.982, COLMAP SIFT's
level.

What: anchors and the keypoints refined onto them (`anchor_clusters`): greedily, in order of
decreasing number of matches, a keypoint not yet taken becomes an anchor and takes the keypoints
not yet taken that are matched to it directly (one per image). Each taken keypoint is moved to
where the anchor's image patch (``window`` pixels each side) aligns in its own image: OpenCV's
ECC (`cv2.findTransformECC`, affine), started from the local affine map of the pair's matches
around the anchor (`cv2.estimateAffine2D` on its `neighbours` nearest matches, RANSAC). It counts
as refined when ECC converges with a correlation of at least ``min_correlation`` and moves it by
at most ``max_shift`` pixels of the image as it was extracted. Then only the matches whose two
keypoints were refined onto the same anchor (or are that anchor) are kept, unless
``keep_unrefined``: the others carry the imprecision this step exists to remove (on ``ring2.4``,
moving keypoints but keeping every match left AUC@5 at 0.967; keeping only refined ones gave
0.993). Every kept match then joins two observations of one physical point, the anchor's, so
the tracks COLMAP builds from them are consistent; a chain of near-miss matches through several
points gives several anchors, not one track holding two keypoints of an image.

Written here rather than taken from a library: hloc's keypoint adjustment (pixel-perfect SfM,
``pixsfm``) needs dense CNN features and a build of its own and is not on PyPI; COLMAP and
pycolmap refine poses and points, not keypoints. The pieces are OpenCV's and SciPy's.

Files (in ``<mapping output>/refined/``, a cache rebuilt when its inputs or settings change):
``features.h5`` (keypoints moved, descriptors and scores as they were, same keypoint order) and
``matches.h5`` (the kept matches). `mapping.run_mapping` maps from them and, if the scene then
does not map whole, maps the unrefined files too and keeps the better result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

from . import paths
from .config import config_hash, option, to_dict
from .errors import StorageError
from .images import read_image
from .progress import progress
from .storage import (
    FEATURES_SCHEMA,
    MATCHES_SCHEMA,
    FeaturesReader,
    Header,
    ResultWriter,
    atomic_write_json,
    iter_matches,
    read_header,
)

logger = logging.getLogger(__name__)

REFINED = "refined"
"""Folder of the refined features and matches, inside the mapping stage's output folder."""
_MAX_AFFINE_SCALE = 2.5  # local maps stretching more than this (or less than its inverse): skip


@dataclass(frozen=True, kw_only=True)
class RefinementConfig:
    """Settings of the keypoint refinement before mapping (`mapping.refine.*`)."""

    enabled: bool = option(
        True,
        "move matched keypoints onto their anchor's point (ECC patch alignment) and map "
        "only the refined matches",
    )
    window: int = option(
        10, "half size of the anchor's square patch, in pixels of the image file (21 x 21)"
    )
    max_shift: float = option(
        2.5, "largest move of a keypoint, in pixels of the image as extracted (keypoints.resize)"
    )
    min_correlation: float = option(0.7, "ECC correlation below this: the keypoint is not moved")
    neighbours: int = option(16, "matches around an anchor that fit the local affine start")
    keep_unrefined: bool = option(
        False, "also keep matches whose keypoints could not be refined (unmoved)"
    )
    workers: int = option(2, "threads aligning patches", hashed=False)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"refine.window must be at least 2 px, got {self.window}")
        if not self.max_shift > 0:
            raise ValueError(f"refine.max_shift must be positive, got {self.max_shift}")
        if not -1 <= self.min_correlation <= 1:
            raise ValueError(
                f"refine.min_correlation must be in [-1, 1], got {self.min_correlation}"
            )
        if self.neighbours < 3:
            raise ValueError(f"refine.neighbours must be at least 3, got {self.neighbours}")
        if self.workers < 1:
            raise ValueError(f"refine.workers must be at least 1, got {self.workers}")


# ----------------------------------------------------------------------------- tracks


def anchor_clusters(sizes: Sequence[int], edges: np.ndarray) -> np.ndarray:
    """Which anchor each keypoint is refined onto: the anchor's global id, or -1 for none.

    Keypoints have global ids (image i's are ``sum(sizes[:i]) ..``) and `edges` ((E, 2) ids)
    are the matches. Greedy: in order of decreasing number of matches (the lowest id among
    equals), a keypoint not yet taken becomes an anchor, and takes every keypoint not yet taken
    that is matched to it directly (one per image: a pair's matches are one-to-one). A
    component of the match graph that chains several physical points (a near-miss match joins
    two) thus gives several anchors, one per point, instead of one track holding two keypoints
    of an image.
    """
    n = int(np.sum(sizes))
    cluster = np.full(n, -1, np.int64)
    if not len(edges):
        return cluster
    image = np.repeat(np.arange(len(sizes)), sizes)
    degree = np.bincount(edges.ravel(), minlength=n)
    both = np.concatenate([edges, edges[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    first = np.searchsorted(both[:, 0], np.arange(n + 1))
    neighbours = both[:, 1]
    for u in np.lexsort((np.arange(n), -degree)).tolist():
        if degree[u] == 0:
            break
        if cluster[u] >= 0:
            continue
        taken = {image[u]}
        members = []
        for v in neighbours[first[u] : first[u + 1]].tolist():
            if cluster[v] < 0 and image[v] not in taken:
                taken.add(image[v])
                members.append(v)
        if members:
            cluster[u] = u
            cluster[members] = u
    return cluster


# ----------------------------------------------------------------------------- alignment


def align_patch(
    template: np.ndarray,
    point: np.ndarray,
    image: np.ndarray,
    start: np.ndarray,
    max_shift: float,
    min_correlation: float,
) -> tuple[np.ndarray | None, str]:
    """Where `point` of `template` (a (2w+1) square, float32; pixel-centre coordinates) lies
    in `image` (uint8 grey), by ECC with an affine warp from `start` (2 x 3, template pixel
    centres to image ones). The result may move at most `max_shift` from where `start` puts
    `point`. Returns (position in COLMAP pixel coordinates or None, outcome)."""
    half = template.shape[0] // 2
    linear = start[:, :2]
    centre = linear @ point + start[:, 2]
    scales = np.linalg.svd(linear, compute_uv=False)
    if scales[0] > _MAX_AFFINE_SCALE or scales[1] < 1 / _MAX_AFFINE_SCALE:
        return None, "failed"
    radius = int(np.ceil(1.5 * half * scales[0] + max_shift)) + 3  # the warped corners
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    h, w = image.shape
    if cx - radius < 0 or cy - radius < 0 or cx + radius >= w or cy + radius >= h:
        return None, "failed"
    crop = image[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1].astype(np.float32)
    warp = start.astype(np.float32).copy()
    warp[:, 2] -= (cx - radius, cy - radius)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        correlation, warp = cv2.findTransformECC(
            template, crop, warp, cv2.MOTION_AFFINE, criteria, None, 1
        )
    except cv2.error:  # no convergence (flat patch, singular Hessian)
        return None, "failed"
    warp[:, 2] += (cx - radius, cy - radius)
    found = warp[:, :2] @ point.astype(np.float32) + warp[:, 2]
    if np.hypot(*(found - centre)) > max_shift:
        return None, "far"
    if correlation < min_correlation:
        return None, "low_correlation"
    return found.astype(np.float64) + 0.5, "refined"  # pixel-centre indices -> COLMAP


class _Images:
    """Grey images decoded on demand (EXIF orientation applied, as extraction did), a few kept."""

    def __init__(self, image_dir: Path, keep: int) -> None:
        self.image_dir = Path(image_dir)
        self._lock = threading.Lock()
        self._get = functools.lru_cache(maxsize=keep)(self._read)

    def _read(self, name: str) -> np.ndarray:
        return read_image(self.image_dir / name, grayscale=True)

    def __call__(self, name: str) -> np.ndarray:
        with self._lock:  # lru_cache is thread-safe, but would decode one image twice
            return self._get(name)


def _refine_pair(
    a: str,
    b: str,
    tasks: list[tuple[int, int]],
    matches: np.ndarray,
    kpts: dict[str, np.ndarray],
    images: _Images,
    scale_b: float,
    config: RefinementConfig,
) -> list[tuple[int, np.ndarray | None, str]]:
    """Refine keypoints of `b` onto anchors of `a`: `tasks` are (anchor index in a, keypoint
    index in b); `matches` the pair's (index in a, index in b). Returns (index in b, position
    or None, outcome) per task."""
    src, dst = kpts[a][matches[:, 0]], kpts[b][matches[:, 1]]
    if len(matches) < max(3, min(config.neighbours, 6)):
        return [(j, None, "failed") for _, j in tasks]
    tree = cKDTree(src)
    k = min(config.neighbours, len(matches))
    image_a, image_b = images(a), images(b)
    w = config.window
    out = []
    for i, j in tasks:
        anchor = kpts[a][i] - 0.5  # pixel-centre indices
        x0, y0 = int(round(anchor[0])) - w, int(round(anchor[1])) - w
        height, width = image_a.shape
        if x0 < 0 or y0 < 0 or x0 + 2 * w + 1 > width or y0 + 2 * w + 1 > height:
            out.append((j, None, "failed"))
            continue
        _, near = tree.query(kpts[a][i], k=k)
        affine, _ = cv2.estimateAffine2D(src[near], dst[near], ransacReprojThreshold=3.0)
        if affine is None:
            out.append((j, None, "failed"))
            continue
        template = image_a[y0 : y0 + 2 * w + 1, x0 : x0 + 2 * w + 1].astype(np.float32)
        point = anchor - (x0, y0)  # the anchor in the template
        # start: the local map, moved so that the anchor lands on its matched keypoint
        linear = affine[:, :2]
        start = np.hstack([linear, (kpts[b][j] - 0.5 - linear @ point)[:, None]])
        found, outcome = align_patch(
            template, point, image_b, start, config.max_shift * scale_b, config.min_correlation
        )
        out.append((j, found, outcome))
    return out


# ----------------------------------------------------------------------------- stage

REPORT = "refined.json"
"""The counts of the refinement, beside its two files."""


def _extraction_scale(size: tuple[int, int], resize: int | None) -> float:
    """Pixels of the image file per pixel of the image as extracted (keypoints.resize)."""
    long_side = max(size)
    return long_side / min(long_side, resize) if resize else 1.0


def _inputs_digest(
    features_hash: str,
    items: dict[str, dict],
    matches_paths: Sequence[Path],
    pairs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
) -> str:
    """What the inputs hold: the features' settings and what each image was extracted from
    (`items`: its attributes, fingerprint and turn), the matches files' settings, and every
    match used (a resumed or partly re-run matching stage changes pairs without changing its
    settings). `pairs` are the matches as loaded for the refinement, so they are read once."""
    digest = hashlib.sha256(features_hash.encode())
    for name, attrs in items.items():
        digest.update(json.dumps([name, attrs], default=str).encode())
    for path in matches_paths:
        header = read_header(path, MATCHES_SCHEMA)
        digest.update(f"{header.config_hash}/{(header.extra or {}).get('features_hash')}".encode())
    for (a, b), (m, _) in pairs.items():
        digest.update(f"{a}\0{b}".encode())
        digest.update(np.ascontiguousarray(m).tobytes())
    return digest.hexdigest()[:16]


def _read_report(folder: Path, digest: str) -> dict | None:
    """The counts of an earlier refinement made from the same inputs and settings, else None."""
    try:
        files = ((paths.FEATURES, FEATURES_SCHEMA), (paths.MATCHES, MATCHES_SCHEMA))
        for name, schema in files:
            if read_header(folder / name, schema).config_hash != digest:
                return None
        report = json.loads((folder / REPORT).read_text())
    except (OSError, ValueError, StorageError):
        return None
    return report if report.get("digest") == digest else None


def refine_keypoints(
    image_dir: Path,
    features_path: Path,
    matches_path: Path | Sequence[Path],
    output_dir: Path,
    config: RefinementConfig = RefinementConfig(),
) -> tuple[Path, Path, dict]:
    """Refine the matched keypoints of `features_path` (see the module docstring) and write
    ``output_dir/refined/{features,matches}.h5``; returns their paths and the counts (also in
    ``refined/refined.json``). Several matches files: each pair from the first file that holds
    it (as `mapping.build_database`). Reuses the files made from the same inputs and settings."""
    start = time.perf_counter()
    folder = Path(output_dir) / REFINED
    out_features, out_matches = folder / paths.FEATURES, folder / paths.MATCHES
    matches_paths = [matches_path] if isinstance(matches_path, (str, Path)) else matches_path
    features_header = read_header(features_path, FEATURES_SCHEMA)
    with FeaturesReader(features_path) as feats:
        names, failed = feats.names(), sorted(feats.failed())
        items = {n: feats.attrs(n) for n in names + failed}
    index = {n: i for i, n in enumerate(names)}
    pairs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {
        (a, b): (m.astype(np.int64), s) for a, b, m, s in iter_matches(matches_paths, index)
    }
    inputs = _inputs_digest(features_header.config_hash, items, matches_paths, pairs)
    digest = config_hash(config, inputs=inputs)
    done = _read_report(folder, digest)
    if done is not None:
        logger.info("Refined keypoints up to date in %s", folder)
        return out_features, out_matches, done
    folder.mkdir(parents=True, exist_ok=True)

    with FeaturesReader(features_path) as feats:
        read = {n: feats.read(n) for n in names}
    kpts = {n: f.keypoints.astype(np.float64) for n, f in read.items()}
    sizes = {n: tuple(f.image_size) for n, f in read.items()}
    del read
    offsets = np.concatenate([[0], np.cumsum([len(kpts[n]) for n in names])]).astype(np.int64)
    edges = [
        np.c_[offsets[index[a]] + m[:, 0], offsets[index[b]] + m[:, 1]]
        for (a, b), (m, _) in pairs.items()
    ]
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    cluster = anchor_clusters([len(kpts[n]) for n in names], edges)
    image_of = np.repeat(np.arange(len(names)), [len(kpts[n]) for n in names])
    members = np.flatnonzero((cluster >= 0) & (cluster != np.arange(len(cluster))))
    anchors = cluster[members]
    # per (anchor's image, other image): (anchor index, keypoint index) to refine
    tasks: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for u, v in zip(anchors.tolist(), members.tolist(), strict=True):
        first, second = names[image_of[u]], names[image_of[v]]
        tasks[(first, second)].append(
            (int(u - offsets[image_of[u]]), int(v - offsets[image_of[v]]))
        )

    # a rescue's combined file records the run's settings under "base"
    made_with = features_header.config
    resize = made_with.get("resize", (made_with.get("base") or {}).get("resize"))
    refined = {n: kpts[n].copy() for n in names}
    valid = np.zeros(offsets[-1], bool)
    outcomes: dict[str, int] = defaultdict(int)
    images = _Images(image_dir, keep=4 * config.workers + 8)

    def run(item):
        (first, second), todo = item
        if (first, second) in pairs:
            m = pairs[(first, second)][0]
        else:
            m = pairs[(second, first)][0][:, ::-1]
        scale = _extraction_scale(sizes[second], resize)
        return _refine_pair(first, second, todo, m, kpts, images, scale, config)

    items = sorted((key, todo) for key, todo in tasks.items() if todo)
    pool = ThreadPoolExecutor(config.workers)
    try:
        total = sum(len(t) for _, t in items)
        with progress(total=total, desc="refining", unit="keypoint") as bar:
            for ((first, second), todo), results in zip(items, pool.map(run, items), strict=True):
                for (i, _), (j, found, outcome) in zip(todo, results, strict=True):
                    outcomes[outcome] += 1
                    if found is not None:
                        refined[second][j] = found
                        valid[offsets[index[second]] + j] = True
                        valid[offsets[index[first]] + i] = True
                bar.update(len(todo))  # raises RunCancelledError once cancelled
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a cancel does not wait for the rest

    settings = {"refine": to_dict(config), "features": features_header.config}
    with (
        FeaturesReader(features_path) as feats,
        ResultWriter(out_features, Header(FEATURES_SCHEMA, settings, digest), overwrite=True) as w,
    ):
        for n in names + failed:
            arrays, attrs = feats.read_item(n)
            if n in refined:
                arrays = {**arrays, "keypoints": refined[n].astype(np.float32)}
            w.add((n,), arrays, attrs)
    kept = total = 0
    header = Header(MATCHES_SCHEMA, settings, digest, extra={"features_hash": digest})
    with ResultWriter(out_matches, header, overwrite=True) as w:
        for (a, b), (m, scores) in pairs.items():
            ga, gb = offsets[index[a]] + m[:, 0], offsets[index[b]] + m[:, 1]
            # both moved onto one anchor's point (two keypoints each refined onto another
            # anchor no longer show one point)
            ok = valid[ga] & valid[gb] & (cluster[ga] == cluster[gb])
            if config.keep_unrefined:
                ok[:] = True
            kept, total = kept + int(ok.sum()), total + len(m)
            w.add((a, b), {"matches": m[ok].astype(np.uint32), "scores": scores[ok]})
    report = {
        "digest": digest,
        "anchors": int(len(np.unique(anchors))),
        "keypoints": {k: int(v) for k, v in sorted(outcomes.items())},
        "matches_kept": kept,
        "matches": total,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(folder / REPORT, report)
    logger.info(
        "Refined %d keypoints onto their anchor (not: %s); kept %d of %d matches (%.1f s)",
        outcomes["refined"],
        ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if k != "refined") or "none",
        kept,
        total,
        report["seconds"],
    )
    return out_features, out_matches, report
