"""How precise are a run's verified matches? Judged with the exact geometry of a synthetic scene.

    python scripts/match_precision.py OUT_DIR SCENE [--oracle PX ...]

SCENE is a synthetic scene of ``scripts/benchmark_scenes.py`` (``ring2.4``, ``narrow2-pp``, ...)
whose images OUT_DIR was made from (the renderer is deterministic, so its geometry is built
again here). For every verified pair of ``OUT_DIR/database.db`` (at least 15 inliers), each
inlier match's keypoint in the first image is lifted to the surface it sees (the renderer's
point map, bilinear between pixel centres on one plane) and projected into the second image
with the true camera; the transfer error is the distance from there to the matched keypoint
(matches whose point is hidden in the second image, or near an outline, are left out).

Prints the errors overall, by the true angle between the pair's views, by the matcher's score
(``matches.h5``), and for the matches more than 2 px off, how often the second image has any
keypoint within 1 px of the true position (low: the point was not detected there, and the
matcher took a neighbour; high: the matcher chose wrongly among detected keypoints).

``--oracle PX`` maps the run's matcher output again (``features.h5``, ``matches.h5``; default
settings, the keypoint refinement off) with only the matches whose true error is at most PX,
and prints the model's AUC@5: what perfectly filtered matches of that precision would give.
The figures behind ``reconstruct/refinement.py`` and the README's paragraph on it. Scenes
whose images were turned (``-turned``) are not supported (keypoints are in the files' frames,
the point maps in the upright one). Not part of the package; a diagnostic.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pycolmap
from scipy.spatial import cKDTree

from reconstruct import paths
from reconstruct.evaluation import evaluate
from reconstruct.export import read_all_poses
from reconstruct.mapping import MappingConfig, run_mapping
from reconstruct.refinement import RefinementConfig
from reconstruct.storage import (
    MATCHES_SCHEMA,
    FeaturesReader,
    MatchesReader,
    ResultWriter,
    read_header,
)
from reconstruct.synthetic import TrueCorrespondences, build_world, make_cameras

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_scenes import synthetic_configs  # noqa: E402 - scripts/ is on the path above

MIN_INLIERS = 15


class SceneGeometry(TrueCorrespondences):
    """The true correspondences of a benchmark_scenes.py scene."""

    def __init__(self, scene: str) -> None:
        config = synthetic_configs()[scene]
        super().__init__(
            build_world(config).planes, make_cameras(config), config.width, config.height
        )

    def transfer_error(self, a: str, b: str, ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
        """Distance from each `kb` to where `ka`'s point appears in `b` (NaN: not judged)."""
        return np.linalg.norm(kb - self.transfer(a, b, ka), axis=1)

    def angle(self, a: str, b: str) -> float:
        """Angle of the relative rotation between the two true cameras, degrees."""
        rel = self.cameras[b].rotation @ self.cameras[a].rotation.T
        return float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))))


def verified_inliers(out: Path) -> list[tuple[str, str, np.ndarray]]:
    """(name_a, name_b, inlier keypoint index pairs) of every pair with enough inliers."""
    db = pycolmap.Database.open(str(out / paths.DATABASE))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
    finally:
        db.close()
    rows = []
    for pair_id, geometry in zip(pair_ids, geometries, strict=True):
        m = np.asarray(geometry.inlier_matches).reshape(-1, 2)
        if len(m) >= MIN_INLIERS:
            a, b = (names[i] for i in pycolmap.pair_id_to_image_pair(pair_id))
            rows.append((a, b, m))
    return rows


def _share(err: np.ndarray, limits=(0.5, 1, 2, 4)) -> str:
    return " ".join(f"<={t:g}px {np.mean(err <= t):.0%}" for t in limits)


def database_features(out: Path) -> Path:
    """The features file the run's database indexes (the refined one when mapping refined the
    keypoints: mapping.json names it)."""
    summary = out / paths.SPARSE / paths.MAPPING_SUMMARY
    if summary.is_file():
        return Path(json.loads(summary.read_text()).get("features") or out / paths.FEATURES)
    return out / paths.FEATURES


def report(out: Path, geo: SceneGeometry) -> None:
    errs, angles, scores, near = [], [], [], []
    features = database_features(out)
    print(f"keypoints of {features}")
    with FeaturesReader(features) as feats, MatchesReader(out / paths.MATCHES) as mr:
        for a, b, m in verified_inliers(out):
            kpa, kpb = feats.read(a).keypoints, feats.read(b).keypoints
            err = geo.transfer_error(a, b, kpa[m[:, 0]].astype(float), kpb[m[:, 1]].astype(float))
            ok = np.isfinite(err)
            stored, stored_scores = mr.read(a, b)  # the matcher's scores (the refinement keeps)
            lookup = {(int(i), int(j)): s for (i, j), s in zip(stored, stored_scores, strict=True)}
            score = np.array([lookup.get((int(i), int(j)), np.nan) for i, j in m])
            true_b = geo.transfer(a, b, kpa[m[ok, 0]].astype(float))
            errs.append(err[ok])
            angles.append(np.full(ok.sum(), geo.angle(a, b)))
            scores.append(score[ok])
            near.append(cKDTree(kpb).query(true_b)[0])
    err, angle, score, near = map(np.concatenate, (errs, angles, scores, near))
    print(f"{len(err)} inlier matches judged: median error {np.median(err):.2f} px; {_share(err)}")
    for lo, hi in ((0, 10), (10, 20), (20, 40), (40, 90), (90, 181)):
        sel = (angle >= lo) & (angle < hi)
        if sel.any():
            print(
                f"  views {lo:3d}-{hi:3d} deg apart: {sel.sum():6d} matches, median "
                f"{np.median(err[sel]):.2f} px, {_share(err[sel])}"
            )
    if np.isfinite(score).any():
        for lo, hi in ((0, 0.5), (0.5, 0.9), (0.9, 1.01)):
            sel = (score >= lo) & (score < hi)
            if sel.any():
                print(
                    f"  matcher score {lo:.1f}-{min(hi, 1):.1f}: {sel.sum():6d} matches, median "
                    f"{np.median(err[sel]):.2f} px, {_share(err[sel])}"
                )
    bad = err > 2
    if bad.any():
        print(
            f"  of the {bad.sum()} matches more than 2 px off, {np.mean(near[bad] <= 1):.0%} have "
            f"a keypoint within 1 px of the true position (of the others: "
            f"{np.mean(near[~bad] <= 1):.0%})"
        )


def oracle(out: Path, geo: SceneGeometry, max_px: float, images: Path, gt_poses) -> float:
    """AUC@5 of the run's features mapped again with only the matches within `max_px`."""
    with tempfile.TemporaryDirectory(prefix="match-oracle-") as tmp:
        work = Path(tmp)
        header = read_header(out / paths.MATCHES, MATCHES_SCHEMA)
        kept = total = 0
        with (
            FeaturesReader(out / paths.FEATURES) as feats,
            MatchesReader(out / paths.MATCHES) as mr,
            ResultWriter(work / paths.MATCHES, header, overwrite=True) as writer,
        ):
            for a, b in mr.pairs():
                m, s = mr.read(a, b)
                ka = feats.read(a).keypoints[m[:, 0]].astype(float)
                kb = feats.read(b).keypoints[m[:, 1]].astype(float)
                # either direction: a point hidden one way may be checked the other way
                err = np.fmin(geo.transfer_error(a, b, ka, kb), geo.transfer_error(b, a, kb, ka))
                keep = ~(err > max_px)  # matches that cannot be judged are kept
                writer.add((a, b), {"matches": m[keep], "scores": s[keep]}, mr.attrs(a, b))
                kept, total = kept + int(keep.sum()), total + len(m)
        sparse = run_mapping(
            images,
            out / paths.FEATURES,
            work / paths.MATCHES,
            work / "map",
            MappingConfig(refine=RefinementConfig(enabled=False)),  # the matches as filtered
            pairs_path=out / paths.PAIRS,
        )
        auc = evaluate(gt_poses, read_all_poses(sparse)).to_dict()["auc"]["5"]
    print(f"oracle <= {max_px:g} px: {kept}/{total} matches kept, AUC@5 {auc:.3f}")
    return float(auc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="a run's output folder")
    parser.add_argument("scene", help="the benchmark_scenes.py scene its images are")
    parser.add_argument("--images", type=Path, help="the scene's images (for --oracle)")
    parser.add_argument("--oracle", type=float, action="append", default=[], metavar="PX")
    args = parser.parse_args()
    if args.scene not in synthetic_configs() or args.scene.endswith("-turned"):
        parser.error(f"scene must be an unturned scene of benchmark_scenes.py, got {args.scene}")
    if args.oracle and args.images is None:
        parser.error("--oracle needs --images (the folder OUT_DIR was made from)")
    geo = SceneGeometry(args.scene)
    report(args.output, geo)
    for max_px in args.oracle:
        oracle(args.output, geo, max_px, args.images, geo.cameras)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
