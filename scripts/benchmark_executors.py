"""Local executor against Ray on one scene: extraction + matching times, overhead, same files.

Each round runs extraction and exhaustive matching twice in fresh output folders, once with the
local executor and once with a local Ray instance, in alternating order (local first in odd
rounds, Ray first in even ones) so that both see the same machine load. The Ray instance is
started once; its start and the first actor start are reported apart from the per-round times.
At the end it says whether ``features.h5`` and ``matches.h5`` are identical (every dataset's
bytes, dtype and shape, and every attribute) between the two executors.

Usage::

    python scripts/benchmark_executors.py ../shared/data/Herz-Jesu-P25
    python scripts/benchmark_executors.py ../shared/data/Herz-Jesu-P8 --resize 480 --rounds 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from reconstruct import paths
from reconstruct.executors import LocalExecutor, make_executor
from reconstruct.images import list_images
from reconstruct.keypoints import KeypointsConfig, extract_keypoints, extraction_jobs
from reconstruct.matching import MatchingConfig, match_pairs, matching_jobs
from reconstruct.storage import write_pairs


def dump_h5(path: Path) -> dict:
    """Every dataset (dtype, shape, bytes) and attribute of an HDF5 file, by path."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        out["/"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}

        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = (data.dtype.str, data.shape, np.asarray(data).tobytes(), attrs)
            else:
                out[name] = attrs

        f.visititems(visit)
    return out


def run_once(scene: Path, out: Path, pairs_path: Path, config: KeypointsConfig, executor) -> dict:
    """Extraction then matching into `out` (fresh); seconds of each."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    features = extract_keypoints(scene, out, config, device="cpu", executor=executor)
    t1 = time.perf_counter()
    match_pairs(pairs_path, features, out, device="cpu", executor=executor)
    t2 = time.perf_counter()
    return {"extract": t1 - t0, "match": t2 - t1, "total": t2 - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="image folder")
    parser.add_argument("--resize", type=int, default=KeypointsConfig().resize)
    parser.add_argument("--max-keypoints", type=int, default=KeypointsConfig().max_keypoints)
    parser.add_argument("--rounds", type=int, default=2, help="local/Ray pairs of runs")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    names = list_images(args.scene)
    pairs = list(itertools.combinations(names, 2))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-executors-"))
    work.mkdir(parents=True, exist_ok=True)
    pairs_path = write_pairs(work / paths.PAIRS, pairs)
    config = KeypointsConfig(resize=args.resize, max_keypoints=args.max_keypoints)
    print(
        f"{args.scene}: {len(names)} images, {len(pairs)} pairs, resize {args.resize}, "
        f"{args.max_keypoints} keypoints; load average {os.getloadavg()[0]:.1f}; work {work}",
        flush=True,
    )
    cpu = torch.device("cpu")
    print(  # local results equal Ray's only with one torch thread per item (docs/distributed.md)
        f"local: {extraction_jobs(config, cpu)} images and {matching_jobs(MatchingConfig(), cpu)} "
        f"pairs at once, {torch.get_num_threads()} torch threads",
        flush=True,
    )

    t0 = time.perf_counter()
    ray_executor = make_executor("ray")
    ray_start = time.perf_counter() - t0
    print(
        f"Ray: local instance started in {ray_start:.1f} s; {ray_executor.num_workers} actors x "
        f"{ray_executor.threads_per_worker} threads",
        flush=True,
    )
    executors = {"local": LocalExecutor(), "ray": ray_executor}
    times: dict[str, list[dict]] = {"local": [], "ray": []}
    same = {"features": True, "matches": True}
    try:
        for r in range(args.rounds):
            order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
            for kind in order:
                out = work / f"{kind}-{r}"
                t = run_once(args.scene, out, pairs_path, config, executors[kind])
                times[kind].append(t)
                print(
                    f"round {r + 1} {kind:>5}: extract {t['extract']:7.1f} s, match "
                    f"{t['match']:7.1f} s, total {t['total']:7.1f} s "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            for what, name in (("features", paths.FEATURES), ("matches", paths.MATCHES)):
                a, b = (dump_h5(work / f"{k}-{r}" / name) for k in ("local", "ray"))
                same[what] = same[what] and a == b
    finally:
        ray_executor.close()

    def total(kind: str, key: str) -> float:
        return sum(t[key] for t in times[kind])

    print("\nsum over rounds      local       ray   overhead")
    for key in ("extract", "match", "total"):
        lo, ra = total("local", key), total("ray", key)
        print(f"  {key:<8}      {lo:9.1f} s {ra:9.1f} s   {100 * (ra - lo) / lo:+6.1f} %")
    lo, ra = total("local", "total"), total("ray", "total") + ray_start
    print(f"  with Ray start {lo:9.1f} s {ra:9.1f} s   {100 * (ra - lo) / lo:+6.1f} %")
    print(
        f"identical features.h5: {same['features']}; identical matches.h5: {same['matches']}",
        flush=True,
    )
    if args.json:
        record = {
            "scene": str(args.scene),
            "images": len(names),
            "pairs": len(pairs),
            "resize": args.resize,
            "max_keypoints": args.max_keypoints,
            "ray_start": ray_start,
            "ray_workers": ray_executor.num_workers,
            "threads_per_worker": ray_executor.threads_per_worker,
            "times": times,
            "identical": same,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
