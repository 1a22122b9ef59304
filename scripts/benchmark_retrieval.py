"""Benchmark of the retrieval stage: recall and reconstruction against exhaustive, cost, speed.

1. ``--scene DIR`` (a folder with ``images/`` and optionally ``gt/cameras.txt``): runs
   ``reconstruct run`` from scratch twice, with ``pairs.strategy=exhaustive`` and with the
   defaults plus ``pairs.exhaustive_if_less=0`` (retrieval forced), for each descriptor it can run
   (``local`` always; ``dinov2`` only when its weights are on disk: nothing is downloaded). Reports
   seconds per image of the pairs stage, pairs kept against exhaustive, recall of the pairs the
   exhaustive run verified with >= 15 inliers (plain and inlier-weighted, from its
   ``database.db``), registered images, AUC@5 against the ground truth, and total times as a user
   sees them. ``--sweep`` adds the recall of other local-descriptor settings computed on the
   exhaustive run's features (no matching). ``--reuse`` re-scores finished runs in ``--work``.
2. ``--simulate 2000,10000``: time and memory of the default selection over that many random
   4,096-d descriptors read from a global-descriptors file, each size in a fresh process.
3. Neither: DINOv2 seconds per image per backbone (random weights: the same compute as the
   trained ones) and pair counts of the default rules on synthetic descriptors.

Usage::

    python scripts/benchmark_retrieval.py --scene ../shared/data/Herz-Jesu-P25 --config fast --sweep
    python scripts/benchmark_retrieval.py --simulate 2000,10000
    python scripts/benchmark_retrieval.py --backbones vits14,vitb14 --sizes 10,100
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

from reconstruct.models.dinov2 import target_size
from reconstruct.pairs import PairsConfig, connect_selection, degrees, rule_pairs
from reconstruct.retrieval import RetrievalConfig

COLMAP_MAX_IMAGES = 2147483647  # COLMAP's pair_id = image_id1 * this + image_id2


def time_backbone(backbone: str, resolution: int, repeats: int, budget: float) -> dict:
    """Seconds per image (batch of one) with random weights, after one warm-up run.

    Reports the fastest timed run (other processes only ever slow a run down) and the median.
    """
    import torch

    from reconstruct.models import dinov2
    from reconstruct.retrieval import describe_batch

    start = time.perf_counter()
    torch.manual_seed(0)
    module = dinov2.build_model(backbone)
    build = time.perf_counter() - start
    model = dinov2.DinoModel(module, backbone, torch.device("cpu"), "random")
    w, h = target_size(4032, 3024, resolution)  # a 4:3 photo
    x = np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)
    describe_batch(model, x)  # warm-up
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (not times or spent < budget):
        t = time.perf_counter()
        describe_batch(model, x)
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


def verified_pairs(database: Path, min_inliers: int) -> dict[tuple[str, str], int]:
    """Pairs with at least `min_inliers` geometrically verified matches in a COLMAP database,
    with their inlier count."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        names = dict(db.execute("SELECT image_id, name FROM images"))
        rows = db.execute(
            "SELECT pair_id, rows FROM two_view_geometries WHERE rows >= ?", (min_inliers,)
        ).fetchall()
    out = {}
    for pair_id, inliers in rows:
        id1, id0 = pair_id % COLMAP_MAX_IMAGES, pair_id // COLMAP_MAX_IMAGES
        a, b = names[id0], names[id1]
        out[(a, b) if a < b else (b, a)] = int(inliers)
    return out


def pair_recall(truth: dict[tuple[str, str], int], chosen: set[tuple[str, str]]) -> dict:
    """Plain and inlier-weighted recall of the verified pairs `truth` by the pairs `chosen`."""
    found = [p for p in truth if p in chosen]
    total = sum(truth.values())
    missed = sorted(((truth[p], p) for p in truth if p not in chosen), reverse=True)
    return {
        "verified": len(truth),
        "found": len(found),
        "recall": len(found) / len(truth) if truth else float("nan"),
        "weighted_recall": sum(truth[p] for p in found) / total if total else float("nan"),
        "missed_top": [[*p, n] for n, p in missed[:5]],  # the strongest verified pairs missed
    }


def _score_run(out_dir: Path, gt_path: Path | None) -> dict:
    from reconstruct import paths
    from reconstruct.evaluation import evaluate
    from reconstruct.export import read_all_poses
    from reconstruct.gt import read_cameras_txt

    models = read_all_poses(out_dir / paths.SPARSE)
    r: dict = {"registered": sorted(models[0]) if models else [], "models": len(models)}
    if gt_path is not None:
        auc = evaluate(read_cameras_txt(gt_path), models).to_dict()["auc"]
        r["auc5"] = float(auc["5"])
        r["auc10"] = float(auc["10"])
    return r


def full_run(
    images: Path, out_dir: Path, overrides: dict, device: str, preset: str | None = None
) -> dict:
    """`reconstruct run` from scratch as a user would run it; wall time and run.json timings."""
    from reconstruct.config import resolve_config_path
    from reconstruct.pipeline import run_pipeline
    from reconstruct.settings import load_config

    shutil.rmtree(out_dir, ignore_errors=True)
    config = load_config(resolve_config_path(preset) if preset else None, overrides)
    start = time.perf_counter()
    summary = run_pipeline(images, out_dir, config, device=device)
    return {
        "wall_s": time.perf_counter() - start,
        "timings": dict(summary.timings),
        "pairs": summary.counts["pairs"],
        "retrieval_model": summary.counts.get("retrieval_model"),
    }


def local_cost(features: Path, names: list[str], scratch: Path, config: PairsConfig) -> dict:
    """Seconds of the local descriptor (codebook + VLAD) and of the selection alone, as
    `select_pairs` runs them (from the file, through the memory map)."""
    from reconstruct.aggregation import compute_local_descriptors
    from reconstruct.pairs import descriptor_matrix

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    t0 = time.perf_counter()
    path, have = compute_local_descriptors(features, names, scratch, config.local)
    t1 = time.perf_counter()
    with descriptor_matrix(path, have, scratch) as desc:
        sel = rule_pairs("retrieval", len(have), config, desc)
        connect_selection(sel, desc, config.metric)
        dim = int(desc.shape[1])
    t2 = time.perf_counter()
    return {"descriptor_s": t1 - t0, "selection_s": t2 - t1, "dim": dim}


def sweep_local(
    features: Path, names: list[str], truth: dict, scratch: Path, grid: list[dict]
) -> list[dict]:
    """Recall of other local-descriptor settings on the same features (no matching needed)."""
    from reconstruct.aggregation import LocalDescriptorConfig, compute_local_descriptors
    from reconstruct.storage import GlobalDescriptorsReader

    out = []
    scratch.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    for g in grid:
        local = LocalDescriptorConfig(**g.get("local", {}))
        key = repr(local)
        if key not in cache:
            path, have = compute_local_descriptors(
                features, names, scratch, local, file_name=f"sweep{len(cache)}.h5"
            )
            with GlobalDescriptorsReader(path) as r:
                cache[key] = have, r.read(have)
        have, desc = cache[key]
        config = PairsConfig(**{k: v for k, v in g.items() if k != "local"}, local=local)
        sel = rule_pairs("retrieval", len(have), config, desc)
        connect_selection(sel, desc, config.metric)
        chosen = {tuple(sorted((have[i], have[j]))) for i, j in sel.pairs}
        n = len(have)
        r = pair_recall(truth, chosen)
        out.append(
            {
                "settings": g,
                "pairs": len(chosen),
                "fraction": len(chosen) / (n * (n - 1) // 2),
                "recall": r["recall"],
                "weighted_recall": r["weighted_recall"],
            }
        )
    return out


SWEEP_GRID = [
    *[{"top_k": k, "min_pairs": min(k, 10)} for k in (5, 8, 10, 12, 15, 20)],
    *[
        {"top_k": k, "min_pairs": k, "local": {"codebook_size": c}}
        for c in (16, 64)
        for k in (8, 10)
    ],
]


def scene_benchmark(args) -> dict:
    """Exhaustive run against the default run with retrieval forced, on one scene."""
    from reconstruct import paths
    from reconstruct.config import parse_set
    from reconstruct.pairs import resolve_retrieval_model
    from reconstruct.storage import FeaturesReader, read_pairs

    scene: Path = args.scene
    images = scene / "images" if (scene / "images").is_dir() else scene
    gt = scene / "gt" / "cameras.txt"
    gt_path = gt if gt.is_file() else None
    work: Path = args.work / scene.name
    user = parse_set(args.set)
    exh_over = {**user, "pairs": {**user.get("pairs", {}), "strategy": "exhaustive"}}
    ret_over = {**user, "pairs": {**user.get("pairs", {}), "exhaustive_if_less": 0}}
    exh_dir, ret_dir = work / "exhaustive", work / "retrieval"

    res: dict = {"scene": str(scene)}
    if args.reuse and (exh_dir / paths.RUN_SUMMARY).is_file():
        res["exhaustive"] = {
            "reused": True,
            **json.loads((exh_dir / paths.RUN_SUMMARY).read_text()),
        }
        res["exhaustive"]["wall_s"] = res["exhaustive"]["timings"]["total"]
    else:
        print(f"# exhaustive run: {exh_dir}", flush=True)
        res["exhaustive"] = full_run(images, exh_dir, exh_over, args.device, args.config)
    truth = verified_pairs(exh_dir / paths.DATABASE, 15)
    with FeaturesReader(exh_dir / paths.FEATURES) as f:
        names = f.names()
    n = len(names)
    res["images"] = n
    res["exhaustive_pairs"] = n * (n - 1) // 2
    res["exhaustive"].update(_score_run(exh_dir, gt_path))

    # presence on disk only, as pairs.retrieval.model=auto checks it: nothing is downloaded
    have_dinov2 = resolve_retrieval_model(PairsConfig(), warn=False) == "dinov2"
    res["dinov2"] = "measured" if have_dinov2 else "skipped: no DINOv2 weights on disk"
    models = ["local"] + (["dinov2"] if have_dinov2 else [])
    res["descriptors"] = {}
    for model in models:
        out = ret_dir if model == "local" else work / "retrieval-dinov2"
        over = {**ret_over, "pairs": {**ret_over["pairs"], "retrieval": {"model": model}}}
        if args.reuse and (out / paths.RUN_SUMMARY).is_file():
            run = json.loads((out / paths.RUN_SUMMARY).read_text())
            run = {
                "reused": True,
                "wall_s": run["timings"]["total"],
                "timings": run["timings"],
                "pairs": run["counts"]["pairs"],
                "retrieval_model": run["counts"].get("retrieval_model"),
            }
        else:
            print(f"# retrieval run ({model}): {out}", flush=True)
            run = full_run(images, out, over, args.device, args.config)
        run.update(_score_run(out, gt_path))
        chosen = set(read_pairs(out / paths.PAIRS))
        run["fraction"] = len(chosen) / res["exhaustive_pairs"]
        run.update(pair_recall(truth, chosen))
        run["time_ratio"] = run["timings"]["total"] / res["exhaustive"]["timings"]["total"]
        run["pairs_s_per_image"] = run["timings"]["pairs"] / n
        run["pairs_over_keypoints"] = run["timings"]["pairs"] / run["timings"]["keypoints"]
        exh_reg = set(res["exhaustive"]["registered"])
        run["missing_vs_exhaustive"] = sorted(exh_reg - set(run["registered"]))
        res["descriptors"][model] = run
    cfg = PairsConfig()
    res["local_cost"] = local_cost(exh_dir / paths.FEATURES, names, work / "cost", cfg)
    if args.sweep:
        res["sweep"] = sweep_local(
            exh_dir / paths.FEATURES, names, truth, work / "sweep", SWEEP_GRID
        )
    return res


def format_scene(res: dict) -> str:
    exh = res["exhaustive"]
    n = res["images"]
    lines = [
        f"## {res['scene']}: {n} images, {res['exhaustive_pairs']} exhaustive pairs, "
        f"{len(verified := exh.get('registered', []))} registered by exhaustive",
        f"DINOv2: {res['dinov2']}",
        "",
        "| run | s/image (pairs stage) | pairs kept | recall | weighted recall "
        "| registered | AUC@5 | total s | total / exhaustive |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    auc = exh.get("auc5")
    lines.append(
        f"| exhaustive | - | {res['exhaustive_pairs']} (100%) | 1 | 1 | {len(verified)}/{n} "
        f"| {'-' if auc is None else f'{auc:.4f}'} | {exh['timings']['total']:.1f} | 1 |"
    )
    for model, r in res["descriptors"].items():
        a = r.get("auc5")
        lines.append(
            f"| {model} | {r['pairs_s_per_image']:.3f} | {r['pairs']} ({100 * r['fraction']:.0f}%) "
            f"| {r['recall']:.3f} ({r['found']}/{r['verified']}) | {r['weighted_recall']:.3f} "
            f"| {len(r['registered'])}/{n} | {'-' if a is None else f'{a:.4f}'} "
            f"| {r['timings']['total']:.1f} | {r['time_ratio']:.2f} |"
        )
    lines.append("")
    lines.append(
        "stage seconds: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items())
            for name, r in [("exhaustive", exh), *res["descriptors"].items()]
        )
    )
    for model, r in res["descriptors"].items():
        lines.append(
            f"{model}: pairs stage / keypoints stage = {100 * r['pairs_over_keypoints']:.1f}%; "
            "images registered by exhaustive but not here: "
            f"{r['missing_vs_exhaustive'] or 'none'}; "
            f"strongest verified pairs missed: {r['missed_top'] or 'none'}"
        )
    c = res["local_cost"]
    lines.append(
        f"local descriptor alone (on the exhaustive run's features): {c['descriptor_s']:.2f} s "
        f"({c['descriptor_s'] / n:.3f} s/image, {c['dim']}-d), selection {c['selection_s']:.3f} s"
    )
    if "sweep" in res:
        lines += [
            "",
            "| settings | pairs | fraction | recall | weighted recall |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in res["sweep"]:
            lines.append(
                f"| {json.dumps(s['settings'])} | {s['pairs']} | {s['fraction']:.2f} "
                f"| {s['recall']:.3f} | {s['weighted_recall']:.3f} |"
            )
    return "\n".join(lines)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _select_child(path: str, names: list[str], scratch: str, queue) -> None:
    """Selection as `select_pairs` does it, from the file, in a fresh process (clean peaks)."""
    import threading

    from reconstruct.pairs import descriptor_matrix, pair_cosines

    def select(subset: list[str]) -> tuple[int, float]:
        start = time.perf_counter()
        config = PairsConfig()
        with descriptor_matrix(Path(path), subset, Path(scratch)) as d:
            loaded = time.perf_counter() - start
            sel = rule_pairs("retrieval", len(subset), config, d)
            connect_selection(sel, d, config.metric)
            idx = np.array(sorted(sel.pairs), np.int64).reshape(-1, 2)
            pair_cosines(d, idx[:, 0], idx[:, 1])
        return len(idx), loaded

    select(names[:50])  # warm-up: lazy imports and BLAS buffers are not the selection's memory
    base_rss, base_anon = _rss_kb("VmRSS"), _rss_kb("RssAnon")
    peak_anon = [base_anon]
    stop = threading.Event()

    def sample() -> None:  # RssAnon has no kernel high-water mark: sample it
        while not stop.wait(0.02):
            peak_anon[0] = max(peak_anon[0], _rss_kb("RssAnon"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    num_pairs, loaded = select(names)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    queue.put(
        {
            "seconds": seconds,
            "read_s": loaded,
            "pairs": num_pairs,
            "peak_rss_mb": (_rss_kb("VmHWM") - base_rss) / 1024,
            "peak_anon_mb": (peak_anon[0] - base_anon) / 1024,
        }
    )


def simulate_selection(n: int, work: Path, dim: int = 4096) -> dict:
    """Default selection over n images of random clustered `dim`-d descriptors (the local
    descriptor's size), read from a global-descriptors file: time and memory above the
    process's baseline (peak total RSS, which counts the page cache of the memory map, and
    peak anonymous memory, which is what the process itself holds)."""
    import multiprocessing

    from reconstruct import paths
    from reconstruct.aggregation import LocalDescriptorConfig
    from reconstruct.retrieval import global_header
    from reconstruct.storage import ResultWriter

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{n}-{paths.GLOBAL_LOCAL}"
    names = [f"img{i:06d}.jpg" for i in range(n)]
    if not path.is_file():
        desc = synthetic_descriptors(n, dim)
        header = global_header(LocalDescriptorConfig(), model="random", images=str(n))
        with ResultWriter(path, header, overwrite=True) as w:
            for name, d in zip(names, desc, strict=True):
                w.add((name,), {"descriptor": d})
        del desc
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_select_child, args=(str(path), names, str(work), queue))
    child.start()
    r = queue.get()
    child.join()
    r.update(images=n, dim=dim, descriptors_mb=n * dim * 4 / 2**20)
    return r


def format_simulation(rows: list[dict]) -> str:
    lines = [
        "## Default selection over random descriptors, from the file (one fresh process each)",
        "| images | dim | descriptors MB | pairs | seconds (of which reading) "
        "| peak anonymous MB | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['dim']} | {r['descriptors_mb']:.0f} | {r['pairs']} "
            f"| {r['seconds']:.1f} ({r['read_s']:.1f}) | {r['peak_anon_mb']:.0f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


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
    parser.add_argument("--scene", type=Path, help="scene folder (images/, gt/cameras.txt)")
    parser.add_argument("--work", type=Path, default=Path("benchmark_retrieval_out"))
    parser.add_argument("--config", help="YAML file or preset (fast, accurate) for both runs")
    parser.add_argument("--set", action="append", help="stage.key=value for both runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--sweep", action="store_true", help="recall of other local settings")
    parser.add_argument(
        "--simulate", default="", help="selection time/memory over N random images, e.g. 2000,10000"
    )
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
    print(f"# {results['machine']}")
    if args.scene is not None:
        from reconstruct.cli import _setup_logging

        restore = _setup_logging(0, False)
        try:
            results["scene"] = scene_benchmark(args)
        finally:
            restore()
        print(format_scene(results["scene"]), flush=True)
    if args.simulate:
        sizes = [int(v) for v in args.simulate.split(",") if v]
        results["simulate"] = [simulate_selection(n, args.work / "simulate") for n in sizes]
        print(format_simulation(results["simulate"]), flush=True)
    if args.scene is None and not args.simulate:
        dinov2_and_counts(args, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def dinov2_and_counts(args, results: dict) -> None:
    """DINOv2 seconds per image (random weights) and pair counts on synthetic descriptors."""
    backbones = [b for b in args.backbones.split(",") if b]
    if backbones:
        print(f"\n## DINOv2 seconds per image at {args.resolution} px (random weights, batch 1)")
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


if __name__ == "__main__":
    sys.exit(main())
