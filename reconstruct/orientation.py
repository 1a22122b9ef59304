"""Stage 3, upright: turn images taken at 90, 180 or 270 degrees (between pairs and matching).

ALIKED-n16 and LightGlue are not rotation-invariant, so a photo taken upside down or in portrait
without EXIF orientation matches its neighbours poorly (hloc's issue #362). Groups of images that
hold together at some match count are not groups of one orientation (issue 10), so the turn is
estimated from a cue that does not depend on it:

1. **Pairwise votes.** SIFT keypoints (OpenCV, on images downsized to `max_size`) carry an
   angle. Over the ratio-test matches of a pair, the difference of the two keypoint angles
   clusters at the in-plane rotation between the two images. Each difference is rounded to the
   nearest quarter turn; the quarter with most matches is the pair's vote, and its lead over the
   runner-up (in matches) is the vote's weight.
2. **One turn per image.** `solve_turns` finds labels mod 4 that agree with the votes: a
   maximum-weight spanning tree fixes a first labelling, then each image in turn takes the label
   that agrees with the largest weight of its votes, until nothing changes. In each connected
   group, turns are relative to the group's majority orientation, so a scene where every image
   is turned the same way is left as it is.
3. **Re-extraction and re-matching.** Only the images whose turn differs from the one their
   features were made with are extracted again (`keypoints.extract_keypoints` with
   `rotations=`, so masks and resizing are exactly those of normal extraction, keypoints mapped
   back into the original image frame), and only pairs touching them are matched again
   (`matching.match_pairs` re-matches pairs whose stored turns changed).

`correct_orientation` writes ``rotations.json``: the turn of every image and the votes behind it.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import paths
from .config import config_hash, option, to_dict
from .errors import StorageError
from .images import read_image
from .keypoints import KeypointsConfig, extract_keypoints
from .matching import MatchingConfig, match_pairs
from .progress import progress
from .storage import FeaturesReader, atomic_write_json, read_pairs

logger = logging.getLogger(__name__)

ROTATIONS_SCHEMA = "reconstruct.rotations"
ROTATIONS_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class OrientationConfig:
    """Settings of the upright stage (`orientation.*`)."""

    enabled: bool = option(True, "find images turned by 90/180/270 degrees and turn them upright")
    max_size: int = option(640, "longest side (px) of the images the SIFT cue is computed on")
    max_features: int = option(1500, "SIFT keypoints per image for the cue")
    ratio: float = option(0.8, "Lowe ratio test of the SIFT matches")
    min_votes: int = option(12, "matches that must agree on a quarter turn for a pair to vote")

    def __post_init__(self) -> None:
        if self.max_size < 64 or self.max_features < 16 or self.min_votes < 1:
            raise ValueError("max_size >= 64, max_features >= 16 and min_votes >= 1 required")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")


@dataclass(frozen=True, kw_only=True)
class PairVote:
    """The quarter-turn evidence of one pair: `turn` = turn(name1) - turn(name0) mod 4."""

    name0: str
    name1: str
    counts: tuple[int, int, int, int]
    turn: int
    weight: int


# ----------------------------------------------------------------------------- the solver


def solve_turns(names: list[str], votes: list[PairVote]) -> dict[str, int]:
    """One quarter turn per image (0..3) that agrees with the pairwise `votes` as far as possible.

    A vote says ``turn[name1] - turn[name0] = vote.turn (mod 4)`` with confidence `weight`.
    Returns the turn of every image in `names`, relative to the majority orientation of its
    connected group (votes with weight <= 0 connect nothing), so the majority gets 0.
    """
    index = {n: i for i, n in enumerate(names)}
    edges = [
        (index[v.name0], index[v.name1], v.turn % 4, v.weight)
        for v in votes
        if v.weight > 0 and v.name0 in index and v.name1 in index and v.name0 != v.name1
    ]
    adjacency: list[list[tuple[int, int, int]]] = [[] for _ in names]
    for i, j, r, w in edges:
        adjacency[i].append((j, r, w))
        adjacency[j].append((i, -r % 4, w))
    # Maximum-weight spanning forest (Kruskal), ties broken by image order.
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree: list[list[tuple[int, int]]] = [[] for _ in names]
    for i, j, r, _ in sorted(edges, key=lambda e: (-e[3], e[0], e[1])):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[ri] = rj
            tree[i].append((j, r))
            tree[j].append((i, -r % 4))
    labels = [-1] * len(names)
    for start in range(len(names)):
        if labels[start] >= 0:
            continue
        labels[start] = 0
        queue = deque([start])
        while queue:
            i = queue.popleft()
            for j, r in tree[i]:
                if labels[j] < 0:
                    labels[j] = (labels[i] + r) % 4
                    queue.append(j)
    # Refinement: each image takes the label most of its vote weight agrees with.
    for _ in range(2 * len(names) + 1):
        changed = False
        for i in range(len(names)):
            score = np.zeros(4)
            for j, r, w in adjacency[i]:
                score[(labels[j] - r) % 4] += w
            best = int(np.argmax(score))
            if score[best] > score[labels[i]]:
                labels[i] = best
                changed = True
        if not changed:
            break
    # Turns relative to the majority of each group (ties: the label of the group's first image).
    groups: dict[int, list[int]] = {}
    for i in range(len(names)):
        groups.setdefault(root(i), []).append(i)
    turns = {}
    for members in groups.values():
        tally = Counter(labels[i] for i in members)
        top = max(tally.values())
        reference = next(labels[i] for i in members if tally[labels[i]] == top)
        for i in members:
            turns[names[i]] = (labels[i] - reference) % 4
    return turns


# ----------------------------------------------------------------------------- the cue


def _sift_features(path: Path, config: OrientationConfig) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoint angles (degrees, OpenCV's convention) and descriptors of a downsized image."""
    image = read_image(path)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    scale = config.max_size / max(gray.shape)
    if scale < 1:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    sift = cv2.SIFT_create(nfeatures=config.max_features)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None:
        return np.zeros(0, np.float32), np.zeros((0, 128), np.float32)
    return np.array([k.angle for k in keypoints], np.float32), descriptors


def pair_vote(
    name0: str,
    name1: str,
    feats0: tuple[np.ndarray, np.ndarray],
    feats1: tuple[np.ndarray, np.ndarray],
    config: OrientationConfig,
    matcher: cv2.DescriptorMatcher,
) -> PairVote:
    """The quarter-turn vote of one pair from the angle differences of its SIFT matches."""
    (angles0, desc0), (angles1, desc1) = feats0, feats1
    counts = np.zeros(4, np.int64)
    if len(desc0) >= 2 and len(desc1) >= 2:
        knn = matcher.knnMatch(desc0, desc1, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < config.ratio * m[1].distance]
        if good:
            i0 = np.array([m.queryIdx for m in good])
            i1 = np.array([m.trainIdx for m in good])
            diff = (angles1[i1] - angles0[i0]) % 360
            counts = np.bincount(np.round(diff / 90).astype(np.int64) % 4, minlength=4)
    order = np.argsort(-counts, kind="stable")
    best = int(order[0])
    weight = int(counts[best] - counts[order[1]]) if counts[best] >= config.min_votes else 0
    # Measured: when image1 is image0 turned counter-clockwise by k quarters (np.rot90), the
    # angle differences cluster at -k quarters, which is the turn that makes image1 upright
    # again, i.e. turn(name1) - turn(name0) of the correcting turns.
    turn = best
    return PairVote(
        name0=name0,
        name1=name1,
        counts=tuple(int(c) for c in counts),
        turn=turn,
        weight=weight,
    )


def estimate_votes(
    image_dir: Path, pairs: list[tuple[str, str]], config: OrientationConfig
) -> list[PairVote]:
    """The vote of every pair (images read and described once each)."""
    names = sorted({n for p in pairs for n in p})
    feats = {
        n: _sift_features(Path(image_dir) / n, config)
        for n in progress(names, desc="upright cue", unit="img")
    }
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    return [
        pair_vote(a, b, feats[a], feats[b], config, matcher)
        for a, b in progress(pairs, desc="upright votes", unit="pair")
    ]


# ----------------------------------------------------------------------------- stage


def correct_orientation(
    image_dir: Path,
    features_path: Path,
    pairs_path: Path,
    matches_path: Path | None,
    output_dir: Path,
    config: OrientationConfig,
    keypoints_config: KeypointsConfig,
    matching_config: MatchingConfig,
    *,
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Find the quarter turn of every image, write ``output_dir/rotations.json`` and bring the
    features and matches up to date with it (only turned images and their pairs are redone).

    The cue needs pairs, not matches: run before matching (`matches_path` None), it extracts the
    turned images again and leaves all matching to the matching stage, so nothing is matched
    twice (the pipeline does this); run after matching, it re-matches the pairs whose turns
    changed.

    Turns are counter-clockwise quarter turns applied before extraction (as `np.rot90`);
    keypoints stay in the frame of the image file. With ``config.enabled`` false every turn is
    0 (images extracted turned by an earlier run are extracted upright again). Returns the path
    of ``rotations.json``.
    """
    image_dir, output_dir, features_path = Path(image_dir), Path(output_dir), Path(features_path)
    path = output_dir / paths.ROTATIONS
    names, stored, pairs = _read_stage_inputs(features_path, pairs_path)
    turns = _find_turns(path, image_dir, names, pairs, config, overwrite)
    turned = {n: t for n, t in turns.items() if t}
    _log_turns(turned, len(names))
    if any(stored[n] != turns[n] for n in names):
        _extract_turned(image_dir, features_path, names, turned, keypoints_config, device)
    if matches_path is not None:
        _rematch_turned(pairs_path, features_path, Path(matches_path), matching_config, device)
    return path


def _read_stage_inputs(
    features_path: Path, pairs_path: Path
) -> tuple[list[str], dict[str, int], list[tuple[str, str]]]:
    """(image names with features, the turn each was extracted with, the sorted unordered
    pairs of those images)."""
    with FeaturesReader(features_path) as feats:
        names = feats.names()
        stored = {n: int(feats.attrs(n).get("rotation", 0)) for n in names}
    readable = set(names)
    pairs = sorted(
        {tuple(sorted(p)) for p in read_pairs(pairs_path) if p[0] in readable and p[1] in readable}
    )
    return names, stored, pairs


def _find_turns(
    path: Path,
    image_dir: Path,
    names: list[str],
    pairs: list[tuple[str, str]],
    config: OrientationConfig,
    overwrite: bool,
) -> dict[str, int]:
    """The turn of every image: all 0 when the stage is disabled, those in `path` when it was
    made with the same settings, images and pairs (unless `overwrite`), else estimated from
    the votes. Writes `path` unless its turns are reused."""
    digest = config_hash(config)
    previous = _read_previous(path) if not overwrite else None
    if not config.enabled:
        turns, votes = dict.fromkeys(names, 0), []
    elif _is_reusable(previous, digest, names, pairs):
        logger.info("Reusing the turns in %s", path)
        turns, votes = {n: int(t) for n, t in previous["turns"].items()}, None
    else:
        votes = estimate_votes(image_dir, pairs, config)
        turns = solve_turns(names, votes)
    if votes is not None:
        _write(path, config, digest, turns, pairs, votes)
    return turns


def _is_reusable(
    previous: dict[str, Any] | None,
    digest: str,
    names: list[str],
    pairs: list[tuple[str, str]],
) -> bool:
    """Whether a previous ``rotations.json`` was made with config hash `digest` for exactly
    these images and pairs."""
    return (
        previous is not None
        and previous.get("config_hash") == digest
        and sorted(previous.get("turns", {})) == sorted(names)
        and [list(p) for p in previous.get("pairs", [])] == [list(p) for p in pairs]
    )


def _log_turns(turned: dict[str, int], num_images: int) -> None:
    logger.info(
        "Upright stage: %d of %d images turned%s",
        len(turned),
        num_images,
        (": " + ", ".join(f"{n} by {90 * t}" for n, t in list(turned.items())[:5]))
        if turned
        else "",
    )


def _extract_turned(
    image_dir: Path,
    features_path: Path,
    names: list[str],
    turned: dict[str, int],
    keypoints_config: KeypointsConfig,
    device: str,
) -> None:
    """Extract the features again with the turns in `turned` (`extract_keypoints` redoes only
    the images whose turn changed)."""
    written = extract_keypoints(
        image_dir,
        features_path.parent,
        keypoints_config,
        device=device,
        image_names=names,
        rotations=turned,
    )
    if written != features_path:
        raise StorageError(f"features of {image_dir} went to {written}, not {features_path}")


def _rematch_turned(
    pairs_path: Path,
    features_path: Path,
    matches_path: Path,
    matching_config: MatchingConfig,
    device: str,
) -> None:
    """Re-match only the pairs whose images' turns changed (nothing when none did)."""
    written = match_pairs(
        pairs_path, features_path, matches_path.parent, matching_config, device=device
    )
    if written != matches_path:
        raise StorageError(f"matches went to {written}, not {matches_path}")


def read_rotations(path: Path) -> dict[str, int]:
    """The non-zero turns recorded in a ``rotations.json``."""
    data = _read_previous(Path(path))
    if data is None:
        raise StorageError(f"{path} is missing or not a rotations file; run `reconstruct orient`")
    return {n: int(t) for n, t in data.get("turns", {}).items() if int(t)}


def _read_previous(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != ROTATIONS_SCHEMA:
        return None
    return data


def _write(
    path: Path,
    config: OrientationConfig,
    digest: str,
    turns: dict[str, int],
    pairs: list[tuple[str, str]],
    votes: list[PairVote],
) -> None:
    evidence = []
    for v in votes:
        agrees = (turns[v.name1] - turns[v.name0]) % 4 == v.turn
        evidence.append(
            {
                "pair": [v.name0, v.name1],
                "votes": list(v.counts),
                "turn": v.turn,
                "weight": v.weight,
                "agrees": bool(agrees) if v.weight > 0 else None,
            }
        )
    atomic_write_json(
        path,
        {
            "schema": ROTATIONS_SCHEMA,
            "schema_version": ROTATIONS_VERSION,
            "config": to_dict(config),
            "config_hash": digest,
            "turned": sum(1 for t in turns.values() if t),
            "turns": dict(sorted(turns.items())),
            "rotations": {n: t for n, t in sorted(turns.items()) if t},
            "pairs": [list(p) for p in pairs],
            "evidence": evidence,
        },
    )
