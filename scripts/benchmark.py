#!/usr/bin/env python
"""Benchmark: our pipeline and COLMAP's SIFT pipeline (through pycolmap) on the same scenes,
in the same run.

    python scripts/benchmark.py SCENE_DIR [SCENE_DIR ...] [--config fast] [--set k=v]
        [--known-intrinsics] [--no-colmap] [--json results.json] [--work DIR]

A scene folder holds `images/` and optionally `gt/cameras.txt` (name fx fy cx cy qw qx qy qz
tx ty tz). Prints one table per scene: seconds per stage (and per image / per pair), total,
the ratio of our total time to COLMAP's, registered images, and with ground truth the
relative-pose AUC@5/10/20 and mAA. Both runs start from scratch (no resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from reconstruct import paths
from reconstruct.cli import _setup_logging
from reconstruct.config import parse_set, resolve_config_path
from reconstruct.errors import ReconstructError
from reconstruct.evaluation import evaluate
from reconstruct.export import model_statistics, read_all_poses
from reconstruct.gt import read_cameras_txt
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import load_config

logger = logging.getLogger("reconstruct.benchmark")


def _load_sibling(name: str):
    """A module of scripts/ by path (scripts/ is not a package, and tests load this file by
    path too, so `import colmap_baseline` would depend on the working folder)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_colmap_sift = _load_sibling("colmap_baseline").run_colmap_sift


def _score(sparse_dir: Path, gt_path: Path | None, num_images: int) -> dict:
    out: dict = {}
    try:
        models = read_all_poses(sparse_dir)
    except ReconstructError:
        models = []
    out["registered"] = len(models[0]) if models else 0
    out["models"] = len(models)
    out["images"] = num_images
    if models:
        stats = model_statistics(sorted(p for p in sparse_dir.iterdir() if p.is_dir())[0])
        out["points"] = stats["points"]
        out["reprojection_error"] = round(stats["mean_reprojection_error"], 3)
        out["track_length"] = round(stats["mean_track_length"], 2)
    if gt_path is not None:
        m = evaluate(read_cameras_txt(gt_path), models).to_dict()
        out["auc"] = m["auc"]
        out["maa"] = m["maa"]
        out["center_maa"] = m["center_maa"]
    return out


def run_scene(scene: Path, args, work: Path) -> dict:
    images = scene / "images" if (scene / "images").is_dir() else scene
    gt = scene / "gt" / "cameras.txt"
    gt_path = gt if gt.is_file() else None
    overrides = parse_set(args.set)
    if args.known_intrinsics:
        if gt_path is None:
            raise SystemExit(f"--known-intrinsics needs {gt}")
        overrides.setdefault("mapping", {}).update(
            {"intrinsics": str(gt_path), "camera_model": "PINHOLE", "fix_intrinsics": True}
        )
    config = load_config(resolve_config_path(args.config) if args.config else None, overrides)
    num_images = sum(1 for p in images.iterdir() if p.is_file())
    result: dict = {"scene": str(scene), "images": num_images}

    ours_dir = work / scene.name / "ours"
    shutil.rmtree(ours_dir, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_pipeline(images, ours_dir, config, device=args.device)
    ours = {"timings": summary.timings, "wall": time.perf_counter() - t0}
    ours["performance"] = summary.performance
    ours["counts"] = {k: summary.counts.get(k) for k in ("pairs", "matches", "verified_pairs")}
    ours.update(_score(ours_dir / paths.SPARSE, gt_path, num_images))
    result["ours"] = ours

    if not args.no_colmap:
        colmap_dir = work / scene.name / "colmap"
        shutil.rmtree(colmap_dir, ignore_errors=True)
        intr = gt_path if args.known_intrinsics else None
        sparse, timings = run_colmap_sift(
            images, colmap_dir, intrinsics=intr, fix_intrinsics=args.known_intrinsics
        )
        colmap = {"timings": {k: round(v, 3) for k, v in timings.items()}}
        colmap.update(_score(sparse, gt_path, num_images))
        result["colmap"] = colmap
        result["time_ratio"] = round(ours["timings"]["total"] / timings["total"], 2)
    return result


def format_table(r: dict) -> str:
    rows = [("", "ours", "colmap")]
    ours, colmap = r["ours"], r.get("colmap", {})
    n = r["images"]
    pairs = ours["counts"]["pairs"] or 1

    def t(d, k):
        v = d.get("timings", {}).get(k)
        return "-" if v is None else f"{v:.1f}"

    rows.append(("keypoints s", t(ours, "keypoints"), t(colmap, "keypoints")))
    rows.append(
        (
            "  s/image",
            f"{ours['timings']['keypoints'] / n:.2f}",
            f"{colmap['timings']['keypoints'] / n:.2f}" if colmap else "-",
        )
    )
    rows.append(("pairs s", t(ours, "pairs"), "-"))
    rows.append(("matching s", t(ours, "matching"), t(colmap, "matching")))
    rows.append(("  s/pair", f"{ours['timings']['matching'] / pairs:.3f}", "-"))
    rows.append(("orientation s", t(ours, "orientation"), "-"))
    rows.append(("mapping s", t(ours, "mapping"), t(colmap, "mapping")))
    rows.append(("export s", t(ours, "export"), "-"))
    rows.append(("total s", t(ours, "total"), t(colmap, "total")))
    perf = ours.get("performance") or {}
    if "keypoints_jobs" in perf:
        rows.append(
            (
                "jobs x threads (kp, match)",
                f"{perf['keypoints_jobs']}x{perf['keypoints_threads_per_job']}, "
                f"{perf['matching_jobs']}x{perf['matching_threads_per_job']}",
                "-",
            )
        )
    rows.append(
        (
            "registered",
            f"{ours['registered']}/{n}",
            f"{colmap.get('registered', '-')}/{n}" if colmap else "-",
        )
    )
    for key in ("points", "reprojection_error", "track_length", "maa", "center_maa"):
        rows.append((key, str(ours.get(key, "-")), str(colmap.get(key, "-"))))
    for th in ("5", "10", "20"):
        a = ours.get("auc", {}).get(th)
        b = colmap.get("auc", {}).get(th)
        rows.append(
            (f"AUC@{th}", "-" if a is None else f"{a:.3f}", "-" if b is None else f"{b:.3f}")
        )
    if "time_ratio" in r:
        rows.append(("time ours/colmap", f"{r['time_ratio']:.2f}", ""))
    w0 = max(len(a) for a, _, _ in rows)
    lines = [f"## {r['scene']}"]
    lines += [f"{a:<{w0}}  {b:>10}  {c:>10}" for a, b, c in rows]
    return "\n".join(lines)


def format_summary(results: list[dict]) -> str:
    """One markdown row per scene: total seconds, ratio to COLMAP, AUC@5, registered images."""
    lines = [
        "| scene | ours s | COLMAP s | ratio | AUC@5 ours / COLMAP | registered ours / COLMAP |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ours, colmap = r["ours"], r.get("colmap", {})
        total = colmap.get("timings", {}).get("total")
        auc = [d.get("auc", {}).get("5") for d in (ours, colmap)]
        lines.append(
            f"| {Path(r['scene']).name} | {ours['timings']['total']:.1f} | "
            + ("-" if total is None else f"{total:.1f}")
            + f" | {r.get('time_ratio', '-')} | "
            + " / ".join("-" if a is None else f"{a:.3f}" for a in auc)
            + f" | {ours['registered']} / {colmap.get('registered', '-')} of {r['images']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("scenes", nargs="+", type=Path)
    p.add_argument("--config")
    p.add_argument("--set", action="append")
    p.add_argument("--device", default="auto")
    p.add_argument("--known-intrinsics", action="store_true")
    p.add_argument("--no-colmap", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--work", type=Path, help="where runs are written (default: a temp folder)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    restore_progress = _setup_logging(0, args.quiet)
    work = args.work or Path(tempfile.mkdtemp(prefix="reconstruct-bench-"))
    results = []
    try:
        for scene in args.scenes:
            r = run_scene(scene, args, work)
            results.append(r)
            print(format_table(r), flush=True)
    finally:
        restore_progress()
    if len(results) > 1:
        print(format_summary(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
