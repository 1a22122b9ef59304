"""Stage 3, upright: turn images taken at 90, 180 or 270 degrees (between pairs and matching).

ALIKED-n16 and LightGlue are not rotation-invariant, so a photo taken upside down or in portrait
without EXIF orientation matches its neighbours poorly (hloc's issue #362). Groups of images that
hold together at some match count are not groups of one orientation (issue 10), so the turn is
estimated from a cue that does not depend on it:

1. **Pairwise votes.** SIFT keypoints (OpenCV, on images downsized to `max_size`) carry an
   angle. Over the ratio-test matches of a pair, the difference of the two keypoint angles
   clusters at the in-plane rotation between the two images. Each difference is rounded to the
   nearest quarter turn; the quarter with most matches is the pair's vote, and its lead over the
   runner-up (in matches) is the vote's weight, if the quarter has `min_votes` matches and the
   lead is `min_lead_sigma` standard deviations of a difference of two counts (a near tie is
   no vote). Cost: JPEGs are decoded DCT-reduced, the
   ratio-test matches come from one exact matrix product per pair, images and pairs run on
   `workers` threads (about 3% of a default run on Herz-Jesu-P8/P25 with no image turned).

   The pairs voting are the selected pairs plus, for every image, its `neighbours` most
   similar images by a rotation-invariant descriptor (VLAD of the cue's own SIFT descriptors).
   Pairs chosen by retrieval are not enough: its descriptors (ALIKED VLAD, DINOv2) are not
   rotation-invariant, so an upside-down photo is paired with other upside-down photos. On a
   ring of photos around an object with every third one upside down, the only pairs left
   between the two orientations were views from opposite sides, where the texture on the
   ground is itself turned by about 180 degrees in the image and cancels the turn: no image
   was found turned (`scripts/benchmark_scenes.py`, ``ring2.4-turned``).
2. **One turn per image.** `solve_turns` finds labels mod 4 that agree with the votes: a
   maximum-weight spanning tree fixes a first labelling, then each image in turn takes the label
   that agrees with the largest weight of its votes, until nothing changes. In each connected
   group, turns are relative to the group's majority orientation, so a scene where every image
   is turned the same way is left as it is. `confirm_turns` then undoes every turn that the
   matches of all the image's pairs (voting or not) do not support significantly.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import paths
from .aggregation import fit_codebook, vlad
from .config import config_hash, option, to_dict
from .errors import ImageReadError, StorageError
from .images import read_gray_downsized
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
    min_lead_sigma: float = option(
        2.0,
        "a pair votes only if its best quarter leads the runner-up by this many standard "
        "deviations of the difference (sqrt of the two counts); a near tie is no vote",
    )
    neighbours: int = option(
        5,
        "each image also votes with its this many most similar images by a rotation-invariant "
        "descriptor (VLAD of the cue's SIFT), beside the selected pairs; 0: the pairs only",
    )
    workers: int = option(
        2, "threads for the cue's images and pairs (0: serial; same votes)", hashed=False
    )

    def __post_init__(self) -> None:
        if self.max_size < 64 or self.max_features < 16 or self.min_votes < 1:
            raise ValueError("max_size >= 64, max_features >= 16 and min_votes >= 1 required")
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.neighbours}")
        if self.min_lead_sigma < 0:
            raise ValueError(f"min_lead_sigma must be >= 0, got {self.min_lead_sigma}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
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


def confirm_turns(turns: dict[str, int], votes: list[PairVote], sigma: float) -> dict[str, int]:
    """`turns` with every turn the image's matches do not support significantly set back to 0.

    A turn is decided from the pairs that vote, but the pairs too weak to vote carry evidence
    too, and on a scene of one object on black they can outnumber it: an upright view turned
    by one 2/2/13/3 vote had nine weaker pairs saying upright (`scripts/benchmark_scenes.py`,
    ``pedestal5``). For each turned image, over all its pairs (`PairVote.counts`, with the
    partners' turns), the matches agreeing with its turn must outnumber those agreeing with no
    turn by `sigma` standard deviations of a difference of two counts; the least supported
    turn is undone first, then the others are checked again (partners' turns change the sums).
    Leaving an image as it is stays the safe default: it matches as it would without the stage.
    """
    turns = dict(turns)
    touching: dict[str, list[PairVote]] = {}
    for v in votes:
        if v.name0 in turns and v.name1 in turns and v.name0 != v.name1:
            touching.setdefault(v.name0, []).append(v)
            touching.setdefault(v.name1, []).append(v)

    def support(name: str, turn: int) -> int:
        total = 0
        for v in touching.get(name, []):
            if v.name1 == name:  # counts[k]: turn(name1) - turn(name0) = k
                total += v.counts[(turn - turns[v.name0]) % 4]
            else:
                total += v.counts[(turns[v.name1] - turn) % 4]
        return total

    while True:
        weakest, weakest_z = None, np.inf
        for name, turn in turns.items():
            if turn == 0:
                continue
            turned, upright = support(name, turn), support(name, 0)
            z = (turned - upright) / np.sqrt(turned + upright) if turned + upright else 0.0
            if z < sigma and z < weakest_z:
                weakest, weakest_z = name, z
        if weakest is None:
            return turns
        logger.info(
            "Not turning %s: its matches support the turn only by %.1f standard deviations",
            weakest,
            weakest_z,
        )
        turns[weakest] = 0


# ----------------------------------------------------------------------------- the cue


def _sift_features(path: Path, config: OrientationConfig) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoint angles (degrees, OpenCV's convention) and descriptors of a downsized image.

    OpenCV rounds SIFT descriptors to bytes; they are returned as uint8 when they are (which
    lets `pair_vote` match them exactly with a matrix product), else as float32."""
    gray = read_gray_downsized(path, config.max_size)
    sift = cv2.SIFT_create(nfeatures=config.max_features)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None:
        return np.zeros(0, np.float32), np.zeros((0, 128), np.uint8)
    if np.all((descriptors >= 0) & (descriptors <= 255) & (descriptors == np.round(descriptors))):
        descriptors = descriptors.astype(np.uint8)
    return np.array([k.angle for k in keypoints], np.float32), descriptors


def _ratio_matches(desc0: np.ndarray, desc1: np.ndarray, ratio: float) -> tuple[np.ndarray, ...]:
    """(query, train) indices of the nearest neighbours of uint8 128-D descriptors that pass
    Lowe's ratio test: the same as ``BFMatcher(NORM_L2).knnMatch(k=2)`` and
    ``d1 < ratio * d2``, from one matrix product.

    Exact: every product and partial sum is an integer below 2**24, so the float32 squared
    distances are exact whatever the summation order, and the distances (float32 square
    roots) are those BFMatcher computes."""
    f0, f1 = desc0.astype(np.float32), desc1.astype(np.float32)
    sq0 = np.einsum("ij,ij->i", f0, f0)
    # |x - y|^2 - |x|^2 = |y|^2 - 2 x.y, ranked per row (|2 x.y| <= 2 * 255^2 * 128 < 2^24)
    rest = f0 @ (-2 * f1).T
    rest += np.einsum("ij,ij->i", f1, f1)[None, :]
    rows = np.arange(len(f0))
    first = np.argmin(rest, axis=1)
    best = rest[rows, first] + sq0
    rest[rows, first] = np.inf
    second = rest[rows, np.argmin(rest, axis=1)] + sq0
    dist0 = np.sqrt(np.maximum(best, 0)).astype(np.float64)
    dist1 = np.sqrt(np.maximum(second, 0)).astype(np.float64)
    good = np.flatnonzero(dist0 < ratio * dist1)
    return good, first[good]


def pair_vote(
    name0: str,
    name1: str,
    feats0: tuple[np.ndarray, np.ndarray],
    feats1: tuple[np.ndarray, np.ndarray],
    config: OrientationConfig,
    matcher: cv2.DescriptorMatcher | None = None,
) -> PairVote:
    """The quarter-turn vote of one pair from the angle differences of its SIFT matches.

    Without `matcher`, uint8 descriptors (those of `_sift_features`) are matched by
    `_ratio_matches` (the same matches as a brute-force L2 matcher, several times faster);
    with one, or for other descriptors, by ``matcher.knnMatch`` (brute force L2 by default).
    """
    (angles0, desc0), (angles1, desc1) = feats0, feats1
    counts = np.zeros(4, np.int64)
    if len(desc0) >= 2 and len(desc1) >= 2:
        if (
            matcher is None
            and desc0.dtype == desc1.dtype == np.uint8
            and desc0.shape[1] == 128 == desc1.shape[1]
        ):
            i0, i1 = _ratio_matches(desc0, desc1, config.ratio)
        else:
            matcher = matcher or cv2.BFMatcher(cv2.NORM_L2)
            knn = matcher.knnMatch(desc0.astype(np.float32), desc1.astype(np.float32), k=2)
            good = [
                m[0] for m in knn if len(m) == 2 and m[0].distance < config.ratio * m[1].distance
            ]
            i0 = np.array([m.queryIdx for m in good], np.int64)
            i1 = np.array([m.trainIdx for m in good], np.int64)
        if len(i0):
            diff = (angles1[i1] - angles0[i0]) % 360
            counts = np.bincount(np.round(diff / 90).astype(np.int64) % 4, minlength=4)
    order = np.argsort(-counts, kind="stable")
    best = int(order[0])
    lead = int(counts[best] - counts[order[1]])
    # Under "no preferred quarter" the two counts are about Poisson, so their difference has a
    # standard deviation of about sqrt(best + runner-up). A lead within `min_lead_sigma` of that
    # is a tie, not evidence: on a textureless ring a pair voting [2, 12, 9, 2] (lead 3) was the
    # only vote of an upright image and turned it (`benchmark_scenes.py`, pedestal2.4).
    significant = lead >= config.min_lead_sigma * np.sqrt(counts[best] + counts[order[1]])
    weight = lead if counts[best] >= config.min_votes and significant else 0
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


def _root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic and Zisserman 2012): L1-normalised, square-rooted descriptors,
    so Euclidean distances between them compare like the Hellinger kernel."""
    d = np.asarray(descriptors, np.float32)
    norms = np.abs(d).sum(1, keepdims=True)
    return np.sqrt(np.divide(d, norms, out=np.zeros_like(d), where=norms > 0))


def similar_pairs(
    descriptors: dict[str, np.ndarray], k: int, *, codebook_size: int = 32, seed: int = 0
) -> list[tuple[str, str]]:
    """Each image with its `k` most similar images (sorted unordered name pairs).

    Similarity is the cosine of VLAD vectors (`aggregation.vlad`, codebook fitted here on a
    sample of every image's descriptors) of the images' RootSIFT descriptors: as rotation-
    invariant as SIFT itself, so an image's neighbours are found whatever its turn. Images
    without descriptors have no neighbours.
    """
    names = sorted(descriptors)
    if k <= 0 or len(names) < 2:
        return []
    rng = np.random.default_rng(seed)
    per_image = max(16, min(200, 50_000 // len(names)))
    roots = {n: _root_sift(d) for n, d in descriptors.items()}
    parts = [
        r[np.sort(rng.choice(len(r), per_image, replace=False))] if len(r) > per_image else r
        for r in (roots[n] for n in names)
    ]
    sample = np.concatenate(parts)
    if len(sample) < 2:
        return []
    codebook = fit_codebook(sample, codebook_size, seed=seed)
    vectors = np.stack([vlad(roots[n], codebook) for n in names])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    chosen = set()
    for i, row in enumerate(similarity):
        for j in np.argsort(-row, kind="stable")[:k]:
            if row[j] > 0:
                chosen.add((min(i, int(j)), max(i, int(j))))
    return [(names[i], names[j]) for i, j in sorted(chosen)]


def estimate_votes(
    image_dir: Path,
    pairs: list[tuple[str, str]],
    config: OrientationConfig,
    *,
    names: list[str] | None = None,
    matcher: cv2.DescriptorMatcher | None = None,
) -> list[PairVote]:
    """The votes of `pairs` (in their order), then of the cue's own neighbour pairs.

    The images described are `names` (default: those in `pairs`), each read and described
    once. With ``config.neighbours`` > 0, every described image also votes with its
    `config.neighbours` most similar images by `similar_pairs` (rotation-invariant), sorted,
    after `pairs` and without repeating one of them.

    Images and pairs are processed on `config.workers` threads (OpenCV and NumPy release the
    GIL); each result depends only on its own inputs, so the votes are those of a serial run.
    `matcher` as in `pair_vote` (a DescriptorMatcher is not shared between threads, so the
    pairs then run serially)."""
    image_dir = Path(image_dir)
    names = sorted(set(names or ()) | {n for p in pairs for n in p})
    workers = config.workers if matcher is None else 0

    def describe(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return _sift_features(image_dir / name, config)
        except ImageReadError as e:  # no votes; extraction reports unreadable images
            logger.debug("Upright cue skips %s: %s", name, e)
            return np.zeros(0, np.float32), np.zeros((0, 128), np.uint8)

    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        described = pool.map(describe, names) if config.workers > 0 else map(describe, names)
        feats = dict(
            zip(
                names,
                progress(described, total=len(names), desc="upright cue", unit="img"),
                strict=True,
            )
        )
        given = [tuple(p) for p in pairs]
        known = {tuple(sorted(p)) for p in given}
        extra = similar_pairs({n: f[1] for n, f in feats.items()}, config.neighbours)
        voting = given + [p for p in extra if p not in known]
        if len(voting) > len(given):
            logger.debug(
                "Upright cue: %d neighbour pairs beside the %d selected",
                len(voting) - len(given),
                len(given),
            )

        def vote(pair: tuple[str, str]) -> PairVote:
            a, b = pair
            return pair_vote(a, b, feats[a], feats[b], config, matcher)

        voted = pool.map(vote, voting) if workers > 0 else map(vote, voting)
        return list(progress(voted, total=len(voting), desc="upright votes", unit="pair"))


# ----------------------------------------------------------------------------- stage


def turns_before_extraction(
    image_dir: Path,
    names: list[str],
    pairs_path: Path,
    output_dir: Path,
    config: OrientationConfig,
    *,
    overwrite: bool = False,
) -> dict[str, int]:
    """The non-zero turns of `names`, from the cue alone, for pairs that need no features
    (exhaustive or sequential selection): the pipeline then extracts every image in its final
    turn once, instead of extracting the turned ones twice. Writes ``rotations.json`` as
    `correct_orientation` does, which reuses it afterwards when the images and pairs are the
    same (nothing left to turn)."""
    known = set(names)
    pairs = sorted(
        {tuple(sorted(p)) for p in read_pairs(pairs_path) if p[0] in known and p[1] in known}
    )
    path = Path(output_dir) / paths.ROTATIONS
    turns = _find_turns(path, Path(image_dir), sorted(names), pairs, config, overwrite)
    return {n: t for n, t in turns.items() if t}


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
        votes = estimate_votes(image_dir, pairs, config, names=names)
        turns = confirm_turns(solve_turns(names, votes), votes, config.min_lead_sigma)
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
