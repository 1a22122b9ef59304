"""Benchmark of the retrieval stage: DINOv2 speed, pairs kept, and (with real weights) recall.

1. Seconds per image for each backbone at the default resolution on this machine. Random
   weights are enough for timing (same compute as the trained ones); nothing is downloaded.
2. Pairs kept by the default selection rules against exhaustive matching for 10, 100 and
   1,000 images. Descriptors are synthetic (images seen from groups of nearby viewpoints: a
   cluster centre per landmark plus per-image noise), so the count shows the rules' cost, not
   their quality.
3. With real weights present (cache or --weights) and ``--scene IMAGE_DIR --exhaustive-run
   OUT_DIR``, where OUT_DIR is the output of
   ``reconstruct run IMAGE_DIR -o OUT_DIR --strategy exhaustive``: the recall of the selected
   pairs against the pairs that run verified with at least 15 inliers (read from its
   ``database.db``).

Usage::

    python scripts/benchmark_retrieval.py                       # all backbones, 10/100/1000
    python scripts/benchmark_retrieval.py --backbones vits14,vitb14 --sizes 10,100
    python scripts/benchmark_retrieval.py --scene data/images --exhaustive-run out_exh
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

from reconstruct.pairs import PairsConfig, connect_selection, degrees, rule_pairs
from reconstruct.retrieval import RetrievalConfig, target_size

COLMAP_MAX_IMAGES = 2147483647  # COLMAP's pair_id = image_id1 * this + image_id2


def time_backbone(backbone: str, resolution: int, repeats: int, budget: float) -> dict:
    """Seconds per image (batch of one) with random weights, after one warm-up run.

    Reports the fastest timed run (other processes only ever slow a run down) and the median.
    """
    import torch

    from reconstruct.models import dinov2
    from reconstruct.retrieval import DescriptorModel

    start = time.perf_counter()
    torch.manual_seed(0)
    module = dinov2.build_model(backbone)
    build = time.perf_counter() - start
    model = DescriptorModel(module, backbone, torch.device("cpu"), "random")
    w, h = target_size(4032, 3024, resolution)  # a 4:3 photo
    x = np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)
    model(x)  # warm-up
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (not times or spent < budget):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
        spent += times[-1]
    params = sum(p.numel() for p in module.parameters())
    del module, model
    return {
        "backbone": backbone,
        "input": f"{w}x{h}",
        "params_m": round(params / 1e6, 1),
        "s_per_image": float(np.min(times)),  # least disturbed run: the machine is shared
        "s_median": float(np.median(times)),
        "runs": len(times),
        "build_s": build,
    }


def synthetic_descriptors(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    """L2-normalised descriptors of n images of ~n/15 landmarks seen from nearby viewpoints."""
    rng = np.random.default_rng(seed)
    groups = max(1, n // 15)
    centres = rng.normal(size=(groups, dim))
    member = rng.integers(0, groups, n)
    desc = centres[member] + 0.8 * rng.normal(size=(n, dim))
    desc += 0.6 * rng.normal(size=(1, dim))  # what every photo shares (DINOv2 is not centred)
    return (desc / np.linalg.norm(desc, axis=1, keepdims=True)).astype(np.float32)


def count_pairs(n: int, config: PairsConfig) -> dict:
    desc = synthetic_descriptors(n)
    start = time.perf_counter()
    strategy = "exhaustive" if n < config.exhaustive_if_less else "retrieval"
    sel = rule_pairs(strategy, n, config, desc if strategy != "exhaustive" else None)
    if strategy != "exhaustive" and config.connect:
        connect_selection(sel, desc, config.metric)
    seconds = time.perf_counter() - start
    deg = degrees(n, sel.pairs)
    exhaustive = n * (n - 1) // 2
    return {
        "images": n,
        "strategy_used": sel.strategy_used,
        "pairs": len(sel.pairs),
        "exhaustive": exhaustive,
        "fraction": len(sel.pairs) / exhaustive if exhaustive else 0.0,
        "degree": (int(deg.min()), float(np.median(deg)), int(deg.max())),
        "bridges": len(sel.bridges),
        "select_s": seconds,
    }


def verified_pairs(database: Path, min_inliers: int) -> set[tuple[str, str]]:
    """Pairs with at least `min_inliers` geometrically verified matches in a COLMAP database."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        names = dict(db.execute("SELECT image_id, name FROM images"))
        rows = db.execute(
            "SELECT pair_id, rows FROM two_view_geometries WHERE rows >= ?", (min_inliers,)
        ).fetchall()
    out = set()
    for pair_id, _ in rows:
        id1, id0 = pair_id % COLMAP_MAX_IMAGES, pair_id // COLMAP_MAX_IMAGES
        a, b = names[id0], names[id1]
        out.add((a, b) if a < b else (b, a))
    return out


def recall(scene: Path, exhaustive_run: Path, out_dir: Path, config: PairsConfig) -> dict:
    """Select pairs on `scene` with real weights and compare with the exhaustive run."""
    from reconstruct.pairs import select_pairs
    from reconstruct.storage import read_pairs

    database = exhaustive_run / "database.db"
    if not database.is_file():
        raise SystemExit(
            f"{database} not found: run `reconstruct run {scene} -o {exhaustive_run} "
            "--strategy exhaustive` first"
        )
    truth = verified_pairs(database, 15)
    path = select_pairs(scene, out_dir, dataclasses.replace(config, strategy="retrieval"))
    chosen = set(read_pairs(path))
    found = len(truth & chosen)
    return {
        "verified_pairs": len(truth),
        "selected_pairs": len(chosen),
        "recall": found / len(truth) if truth else float("nan"),
        "report": str(out_dir / "pairs_report.json"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vits14,vitb14,vitl14,vitg14")
    parser.add_argument("--sizes", default="10,100,1000", help="scene sizes for the pair counts")
    parser.add_argument("--resolution", type=int, default=RetrievalConfig().resolution)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backbone")
    parser.add_argument(
        "--budget", type=float, default=30.0, help="stop timing a backbone after this many s"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--scene", type=Path, help="image folder for the recall measurement")
    parser.add_argument("--exhaustive-run", type=Path, help="output of an exhaustive run")
    parser.add_argument("--out", type=Path, default=Path("benchmark_retrieval_out"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "resolution": args.resolution,
    }
    print(f"# {results['machine']}; default resolution {args.resolution} px (long side)")

    backbones = [b for b in args.backbones.split(",") if b]
    if backbones:
        print("\n## Seconds per image (random weights, batch 1, CPU; fastest and median run)")
        print(
            f"{'backbone':<10} {'params':>7} {'input':>9} {'s/image':>8} {'median':>7} "
            f"{'runs':>5} {'build s':>8}"
        )
        results["timing"] = []
        for b in backbones:
            r = time_backbone(b, args.resolution, args.repeats, args.budget)
            results["timing"].append(r)
            print(
                f"{b:<10} {r['params_m']:>6.0f}M {r['input']:>9} {r['s_per_image']:>8.2f} "
                f"{r['s_median']:>7.2f} {r['runs']:>5} {r['build_s']:>8.1f}",
                flush=True,
            )

    config = PairsConfig()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        print(
            f"\n## Pairs kept by the default rules (top_k={config.top_k}, "
            f"threshold={config.threshold}, min_pairs={config.min_pairs}, "
            f"exhaustive below {config.exhaustive_if_less}; synthetic descriptors)"
        )
        print(
            f"{'images':>7} {'kept':>8} {'exhaustive':>11} {'fraction':>9} "
            f"{'degree min/med/max':>19} {'bridges':>8} {'select s':>9}"
        )
        results["pairs"] = []
        for n in sizes:
            r = count_pairs(n, config)
            results["pairs"].append(r)
            deg = "/".join(f"{v:g}" for v in r["degree"])
            print(
                f"{n:>7} {r['pairs']:>8} {r['exhaustive']:>11} {r['fraction']:>9.3f} "
                f"{deg:>19} {r['bridges']:>8} {r['select_s']:>9.2f}",
                flush=True,
            )

    from reconstruct.errors import ModelWeightsError
    from reconstruct.models import dinov2

    try:
        weights = dinov2.resolve_weights(config.retrieval.backbone, download=False)
    except ModelWeightsError:
        weights = None
    print("\n## Recall against exhaustive verified pairs (>= 15 inliers)")
    if weights is None:
        print(f"skipped: no {config.retrieval.backbone} weights (see `reconstruct weights list`)")
    elif args.scene is None or args.exhaustive_run is None:
        print(f"weights found ({weights}); pass --scene and --exhaustive-run to measure recall")
    else:
        r = recall(args.scene, args.exhaustive_run, args.out, config)
        results["recall"] = r
        print(
            f"recall {r['recall']:.3f}: {r['selected_pairs']} selected pairs, "
            f"{r['verified_pairs']} verified by the exhaustive run"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
