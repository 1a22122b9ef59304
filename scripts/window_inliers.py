"""Verified matches against frame offset for a run on video frames: how far the sequential
window reaches.

    python scripts/window_inliers.py OUT [--max-offset 60]

Reads OUT/features.h5 and OUT/matches.h5 of `reconstruct run VIDEO -o OUT`, orders the frames by
name (= time), and for every matched pair prints, per offset (index difference), the median and
minimum number of matches and of fundamental-matrix inliers (OpenCV MAGSAC, 1 px). With the
adaptive sampler every kept frame is ~`video.min_motion` px (at 320 px width) from the last, so
offset k is ~k x min_motion px of image motion.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from reconstruct import paths
from reconstruct.storage import FeaturesReader, MatchesReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--max-offset", type=int, default=60)
    args = parser.parse_args()
    by_offset: dict[int, list[tuple[int, int]]] = defaultdict(list)
    with (
        FeaturesReader(args.output / paths.FEATURES) as features,
        MatchesReader(args.output / paths.MATCHES) as matches,
    ):
        index = {name: i for i, name in enumerate(sorted(features.names()))}
        for name0, name1 in matches.pairs():
            k = abs(index[name1] - index[name0])
            if k > args.max_offset:
                continue
            m, _ = matches.read(name0, name1)
            inliers = 0
            if len(m) >= 8:
                xy0 = features.read(name0).keypoints[m[:, 0]]
                xy1 = features.read(name1).keypoints[m[:, 1]]
                _, mask = cv2.findFundamentalMat(xy0, xy1, cv2.USAC_MAGSAC, 1.0, 0.999, 10000)
                inliers = int(mask.sum()) if mask is not None else 0
            by_offset[k].append((len(m), inliers))
    print("offset pairs matches_median inliers_median inliers_min")
    for k in sorted(by_offset):
        a = np.array(by_offset[k])
        print(f"{k} {len(a)} {np.median(a[:, 0]):.0f} {np.median(a[:, 1]):.0f} {a[:, 1].min()}")


if __name__ == "__main__":
    main()
