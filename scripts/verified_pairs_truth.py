"""How many verified pairs of a run are right, judged with ground-truth poses.

    python scripts/verified_pairs_truth.py OUT_DIR GT/cameras.txt

For every verified pair of ``OUT_DIR/database.db`` (at least 15 inliers), the share of its
inlier matches within 3 px of the true epipolar line (keypoints from ``OUT_DIR/features.h5``,
the database's own keypoint order, so images the upright stage turned are not supported); a
pair is "right" when that share is above one half. Prints the counts by COLMAP configuration,
by inlier ratio and by inlier count: the figures behind the README's paragraph on why known
intrinsics did not help on the untextured rings. Not part of the package; a diagnostic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pycolmap

from reconstruct import paths
from reconstruct.gt import read_cameras_txt
from reconstruct.storage import FeaturesReader

MAX_EPIPOLAR_PX = 3.0


def _fundamental(ca, cb) -> np.ndarray:
    """F with x_b^T F x_a = 0 for the world-to-camera poses of `ca` and `cb`."""
    rotation = cb.rotation @ ca.rotation.T
    t = np.ravel(cb.translation) - rotation @ np.ravel(ca.translation)
    skew = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(cb.K).T @ skew @ rotation @ np.linalg.inv(ca.K)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("gt", type=Path)
    args = parser.parse_args()
    gt = read_cameras_txt(args.gt)
    db = pycolmap.Database.open(str(args.output / paths.DATABASE))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
        num_matches = {
            p: len(db.read_matches(*pycolmap.pair_id_to_image_pair(p))) for p in pair_ids
        }
    finally:
        db.close()
    rows = []
    with FeaturesReader(args.output / paths.FEATURES) as feats:
        for pair_id, geometry in zip(pair_ids, geometries, strict=True):
            m = np.asarray(geometry.inlier_matches).reshape(-1, 2)
            if len(m) < 15:
                continue
            a, b = (names[i] for i in pycolmap.pair_id_to_image_pair(pair_id))
            xa = np.c_[feats.read(a).keypoints[m[:, 0]], np.ones(len(m))]
            xb = np.c_[feats.read(b).keypoints[m[:, 1]], np.ones(len(m))]
            lines = xa @ _fundamental(gt[a], gt[b]).T
            dist = np.abs(np.sum(xb * lines, 1)) / np.linalg.norm(lines[:, :2], axis=1)
            share = float(np.mean(dist < MAX_EPIPOLAR_PX))
            config = str(geometry.config).split(".")[-1]
            rows.append((len(m), len(m) / num_matches[pair_id], config, share))
    right = [r[3] > 0.5 for r in rows]
    print(f"{sum(right)} of {len(rows)} verified pairs right; median share of inliers on the true "
          f"epipolar line {np.median([r[3] for r in rows]):.2f}")  # fmt: skip
    for config in sorted({r[2] for r in rows}):
        sel = [ok for r, ok in zip(rows, right, strict=True) if r[2] == config]
        print(f"configuration {config}: {sum(sel)}/{len(sel)} right")
    for lo, hi in [(0, 0.5), (0.5, 0.7), (0.7, 1.01)]:
        sel = [ok for r, ok in zip(rows, right, strict=True) if lo <= r[1] < hi]
        print(f"inlier ratio {lo}-{hi}: {sum(sel)}/{len(sel)} right")
    for lo, hi in [(15, 30), (30, 60), (60, 100), (100, 10**9)]:
        sel = [ok for r, ok in zip(rows, right, strict=True) if lo <= r[0] < hi]
        print(f"inliers {lo}-{hi}: {sum(sel)}/{len(sel)} right")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
