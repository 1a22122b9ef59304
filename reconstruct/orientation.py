"""Upright check between matching and mapping: find images turned by 90, 180 or 270 degrees.

ALIKED-n16 and LightGlue are not rotation-invariant, so a photo taken upside down or in portrait
without EXIF orientation matches its neighbours poorly (hloc's issue #362). The rotation-robust
ALIKED-n16rot alone does not fix it either (measured: 4 of 8 turned images registered), because
LightGlue itself is not rotation-invariant.

The check costs nothing when the scene holds together: it builds the graph of pairs with at
least `min_matches` matches, and only when that graph falls apart does it act. For each group
outside the largest one, it turns the group's best-connected image by 90, 180 and 270 degrees,
extracts features of the turned image and matches them against its strongest partners in the
largest group. A turn that gives `margin` times the upright matches (and at least
`min_matches`) is applied to the whole group, which then joins the largest one. The pipeline
then re-extracts the turned images (keypoints are mapped back into the original image frame, so
COLMAP sees the files as they are) and re-matches their pairs.

`estimate_rotations` returns the quarter turns per image and writes ``rotations.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .config import option
from .images import read_image
from .keypoints import KeypointsConfig, build_extractor, extract_image
from .matching import MatchingConfig, build_matcher
from .storage import Features, FeaturesReader, MatchesReader, atomic_write_json, read_header

logger = logging.getLogger(__name__)

ROTATIONS_NAME = "rotations.json"


@dataclass(frozen=True, kw_only=True)
class OrientationConfig:
    """Settings of the upright check (`orientation.*`)."""

    enabled: bool = option(True, "try 90/180/270-degree turns for groups that do not connect")
    min_matches: int = option(100, "a pair with this many matches connects its two images")
    partners: int = option(3, "strongest partners in the main group each turn is tested with")
    margin: float = option(2.0, "a turn must give this many times the upright matches")

    def __post_init__(self) -> None:
        if self.partners < 1 or self.margin < 1 or self.min_matches < 1:
            raise ValueError("partners, margin and min_matches must be at least 1")


def match_graph(
    names: list[str], counts: dict[tuple[str, str], int], min_matches: int
) -> np.ndarray:
    """Component label of each image in the graph of pairs with >= min_matches matches."""
    index = {n: i for i, n in enumerate(names)}
    rows, cols = [], []
    for (a, b), c in counts.items():
        if c >= min_matches and a in index and b in index:
            rows.append(index[a])
            cols.append(index[b])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=False)
    return labels


def estimate_rotations(
    image_dir: Path,
    features_path: Path,
    matches_path: Path,
    output_dir: Path,
    config: OrientationConfig = OrientationConfig(),
    keypoints: KeypointsConfig = KeypointsConfig(),
    matching: MatchingConfig = MatchingConfig(),
    *,
    device: str = "auto",
) -> dict[str, int]:
    """Quarter turns (counter-clockwise) that make every image upright relative to the largest
    group; images that need none are left out. Also written to ``output_dir/rotations.json``."""
    from .device import resolve_device

    with FeaturesReader(features_path) as feats, MatchesReader(matches_path) as matches:
        names = feats.names()
        turns = {n: int(feats.attrs(n).get("rotation", 0)) for n in names}
        counts = matches.counts()
        labels = match_graph(names, counts, config.min_matches)
        groups = [
            [n for n, lab in zip(names, labels, strict=True) if lab == g] for g in set(labels)
        ]
        groups.sort(key=len, reverse=True)
        result = {n: t for n, t in turns.items() if t}
        if len(groups) > 1 and config.enabled:
            extractor_name = read_header(features_path, "reconstruct.features").config.get(
                "extractor", "aliked"
            )
            torch_device = resolve_device(device)
            extractor = build_extractor(keypoints, torch_device)
            matcher = build_matcher(matching, extractor_name, torch_device)
            main = set(groups[0])
            pending = groups[1:]
            logger.info(
                "Upright check: %d groups of images do not connect (largest: %d of %d images)",
                len(groups),
                len(main),
                len(names),
            )
            stored = dict(turns)  # the turn each image's features in features.h5 were made with
            fresh: dict[str, Features] = {}  # features of turned images, extracted here
            changed = True
            bar = tqdm(total=len(pending), desc="upright check", unit="group")
            while changed and pending:
                changed = False
                for group in list(pending):
                    # Partners must have features made with their current turn.
                    usable = {m for m in main if turns[m] == stored[m] or m in fresh}
                    found = _best_turn(
                        group,
                        usable,
                        counts,
                        turns,
                        feats,
                        fresh,
                        image_dir,
                        extractor,
                        matcher,
                        keypoints,
                        config,
                    )
                    if found is None:
                        continue
                    turn, image, features = found
                    fresh[image] = features
                    for n in group:
                        turns[n] = (turns[n] + turn) % 4
                        result[n] = turns[n]
                    logger.info(
                        "Turning %d image(s) by %d degrees: %s",
                        len(group),
                        90 * turn,
                        ", ".join(group[:5]) + (" ..." if len(group) > 5 else ""),
                    )
                    main.update(group)
                    pending.remove(group)
                    bar.update(1)
                    changed = True
            bar.close()
    result = {n: t for n, t in sorted(result.items()) if t}
    atomic_write_json(Path(output_dir) / ROTATIONS_NAME, {"rotations": result})
    return result


def _best_turn(
    group, main, counts, turns, feats, fresh, image_dir, extractor, matcher, keypoints, config
) -> tuple[int, str, Features] | None:
    """The quarter turn (1..3) of `group` relative to `main` with the turned image and its
    features, or None if no turn connects the group."""
    links = []
    for (a, b), c in counts.items():
        if a in main and b in group:
            links.append((c, b, a))
        elif b in main and a in group:
            links.append((c, a, b))
    if not links:
        return None
    links.sort(key=lambda x: (-x[0], x[1], x[2]))
    # The group's image with the strongest link to the main group is the one turned.
    image = links[0][1]
    partners = [m for _, g, m in links if g == image][: config.partners]
    upright = sum(counts.get(tuple(sorted((image, m))), 0) for m in partners)
    pixels = read_image(Path(image_dir) / image)
    size = feats.read(image).image_size
    partner_inputs = [matcher.to_input(fresh.get(m) or feats.read(m)) for m in partners]
    scores, candidates = {}, {}
    for k in (1, 2, 3):
        raw = extract_image(extractor, pixels, keypoints.resize, (turns[image] + k) % 4)
        candidates[k] = Features(raw["keypoints"], raw["descriptors"], raw["scores"], size)
        turned = matcher.to_input(candidates[k])
        scores[k] = sum(len(matcher(turned, p)[0]) for p in partner_inputs)
    best = max(scores, key=lambda k: (scores[k], -k))
    logger.debug("Turns of %s against %s: upright %d, %s", image, partners, upright, scores)
    if scores[best] >= config.min_matches and scores[best] >= config.margin * max(upright, 1):
        return best, image, candidates[best]
    return None
