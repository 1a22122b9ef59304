"""How many frames `video.min_motion` keeps on a video, and what that spacing means.

    python scripts/sweep_min_motion.py VIDEO [--values 8 12 16 20 24 32 40] [--out DIR]
        [--every 10]

For each value: frames kept / blurry / duplicate, and the median motion (px at analysis_width,
the same measure the sampler uses) between consecutive kept frames. As a reference, the same
motion measure between frames `--every` apart (the spacing of a model built from every N-th
frame, e.g. the COLMAP model of beer.mp4 built from every 10th frame).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from reconstruct.video import (
    VideoConfig,
    corners,
    extract_frames,
    motion,
    read_frames,
    read_summary,
)


def _grey(frame: np.ndarray, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--values", type=float, nargs="+", default=[8, 12, 16, 20, 24, 32, 40])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep_min_motion_"))
    width = VideoConfig().analysis_width
    greys = {}
    for i, (t, frame) in enumerate(read_frames(args.video)):
        greys[round(t, 3)] = (i, _grey(frame, width))
    by_index = {i: g for i, g in greys.values()}
    ref = [
        motion(by_index[i], corners(by_index[i]), by_index[i + args.every])
        for i in range(0, len(by_index) - args.every, args.every)
    ]
    rows: dict = {
        f"every {args.every}th frame": {
            "frames": len(range(0, len(by_index), args.every)),
            "median_motion": round(float(np.median(ref)), 1),
            "p10_p90_motion": [round(float(v), 1) for v in np.percentile(ref, [10, 90])],
        }
    }
    for value in args.values:
        config = VideoConfig(min_motion=value)
        start = time.perf_counter()
        frames_dir = extract_frames(args.video, out / f"m{value:g}", config, overwrite=True)
        seconds = time.perf_counter() - start
        s = read_summary(frames_dir)
        kept = sorted(frames_dir.glob("*.jpg"))
        index = [greys[round(float(p.stem[1:]), 3)][0] for p in kept]
        steps = [
            motion(by_index[a], corners(by_index[a]), by_index[b])
            for a, b in zip(index[:-1], index[1:], strict=True)
        ]
        rows[f"min_motion={value:g}"] = {
            "kept": s.frames_kept,
            "blurry": s.dropped_blurry,
            "duplicate": s.dropped_duplicate,
            "median_step_frames": float(np.median(np.diff(index))),
            "median_step_motion": round(float(np.median(steps)), 1),
            "seconds": round(seconds, 1),
        }
        print(json.dumps({f"min_motion={value:g}": rows[f"min_motion={value:g}"]}), flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
