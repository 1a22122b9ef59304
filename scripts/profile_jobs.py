#!/usr/bin/env python
"""A/B of `keypoints.jobs` / `matching.jobs`: the keypoints and matching stages with one job
(torch's own intra-op threads) against N jobs of one thread each, interleaved in one process.

    python scripts/profile_jobs.py SCENE_DIR [--images 4] [--jobs 2] [--repeats 2]

Prints wall and CPU seconds per image / per pair for each variant and checks the results are
the same: keypoints within 1e-3 px and descriptors allclose, matches identical (>= 99%).
Wall times on a loaded machine favour the one-thread jobs (OpenMP barriers stall when other
processes hold the cores); CPU seconds are the load-independent measure of the work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reconstruct.images import list_images
from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import MatchingConfig, match_pairs
from reconstruct.storage import FeaturesReader, MatchesReader


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare_features(a: Path, b: Path) -> tuple[float, float]:
    """Largest keypoint (px) and descriptor difference between two features files."""
    kp, desc = 0.0, 0.0
    with FeaturesReader(a) as ra, FeaturesReader(b) as rb:
        assert ra.names() == rb.names()
        for name in ra.names():
            fa, fb = ra.read(name), rb.read(name)
            kp = max(kp, float(np.abs(fa.keypoints - fb.keypoints).max(initial=0)))
            desc = max(desc, float(np.abs(fa.descriptors - fb.descriptors).max(initial=0)))
    return kp, desc


def identical_matches(a: Path, b: Path) -> float:
    """Share of the matches of `a` that `b` has too (per pair, as index pairs)."""
    same = total = 0
    with MatchesReader(a) as ra, MatchesReader(b) as rb:
        for pair in ra.counts():
            ma = {tuple(m) for m in ra.read(*pair)[0].tolist()}
            mb = {tuple(m) for m in rb.read(*pair)[0].tolist()}
            same += len(ma & mb)
            total += max(len(ma), len(mb))
    return same / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scene", type=Path)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    images = args.scene / "images" if (args.scene / "images").is_dir() else args.scene
    names = list_images(images)[: args.images]
    work = Path(tempfile.mkdtemp(prefix="profile-jobs-"))
    pairs = work / "pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for i, a in enumerate(names) for b in names[i + 1 :]))
    n_pairs = len(names) * (len(names) - 1) // 2
    variants = {"1 job": 1, f"{args.jobs} jobs x 1 thread": args.jobs}
    times: dict[str, dict[str, list]] = {v: {"keypoints": [], "matching": []} for v in variants}
    try:
        for rep in range(args.repeats):
            for label, jobs in variants.items():
                out = work / f"{jobs}-{rep}"
                kcfg = KeypointsConfig(jobs=jobs)

                def extract(out=out, kcfg=kcfg):
                    extract_keypoints(images, out, kcfg, device="cpu", image_names=names)

                times[label]["keypoints"].append(_timed(extract))
                mcfg = MatchingConfig(jobs=jobs)

                def match(out=out, mcfg=mcfg):
                    match_pairs(pairs, out / "features.h5", out, mcfg, device="cpu")

                times[label]["matching"].append(_timed(match))
        for label in variants:
            for stage, count, unit in (
                ("keypoints", len(names), "img"),
                ("matching", n_pairs, "pair"),
            ):
                wall = min(t[0] for t in times[label][stage]) / count
                cpu = min(t[1] for t in times[label][stage]) / count
                print(
                    f"{label:>20}  {stage:<9}  wall {wall:6.3f} s/{unit}  cpu {cpu:6.3f} s/{unit}"
                )
        a, b = work / "1-0", work / f"{args.jobs}-0"
        kp, desc = compare_features(a / "features.h5", b / "features.h5")
        same = identical_matches(a / "matches.h5", b / "matches.h5")
        print(
            f"exactness: keypoints max diff {kp:.2e} px, descriptors {desc:.2e}, "
            f"identical matches {100 * same:.2f}%"
        )
        ok = kp <= 1e-3 and desc <= 1e-4 and same >= 0.99
        print("exactness:", "OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
