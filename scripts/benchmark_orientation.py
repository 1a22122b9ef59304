#!/usr/bin/env python
"""Benchmark of turned photos: the full pipeline on copies of a scene with images turned.

    python scripts/benchmark_orientation.py SCENE_DIR [--seeds 20] [--only LABELS]
        [--json out.jsonl] [--work DIR] [--cue-only] [--cost N]

For each seed every image of `SCENE_DIR/images` is turned by a random quarter turn (no EXIF,
`np.rot90`, re-encoded as JPEG quality 95), plus the arrangements "all but one turned" (by 90)
and "all turned by the same angle" (180). The reference is the copy with no image turned (also
re-encoded, so only the turns differ). Each copy is reconstructed from scratch with the default
settings (`run_pipeline`), and scored against `SCENE_DIR/gt/cameras.txt` turned the same way
(`gt.rotate_camera`): registered images in the largest model, number of models, AUC@5. Prints
one line per arrangement (and appends it to `--json` as JSON lines, so a cut-short run keeps the
finished ones), then the distribution: in one model, AUC@5 within 0.03 of the unturned copy.

`--only none,seed 3,seed 7` runs only the arrangements with those labels (comma-separated).
`--cue-only` runs only the turn estimate (the SIFT votes and the solver) and checks the turns;
it also prints the votes that contradict the applied turns (their number and weight, of the
total weight), the margin the solver had.
`--cost N` measures run time instead: N rounds of, interleaved, the unturned copy with the
upright stage off, the unturned copy with it on, and the seed-0 copy with it on.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from reconstruct import paths
from reconstruct.cli import _setup_logging
from reconstruct.errors import ReconstructError
from reconstruct.gt import read_cameras_txt, rotate_camera, write_cameras_txt
from reconstruct.images import list_images, read_image
from reconstruct.orientation import (
    OrientationConfig,
    confirm_turns,
    estimate_votes,
    solve_turns,
)
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import PipelineConfig

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_scenes import score as score_sparse  # noqa: E402 - scripts/ is on the path above

logger = logging.getLogger("reconstruct.benchmark_orientation")


def arrangements(
    names: list[str], seeds: int, only: set[str] | None = None
) -> list[tuple[str, dict[str, int]]]:
    """(label, applied counter-clockwise quarter turns) of every arrangement: unturned first,
    then the two special cases, then the seeds (a run cut short has the special cases); only
    those labelled in `only` when given."""
    out = [("none", dict.fromkeys(names, 0))]
    out.append(("all but one (90)", {n: (1 if i else 0) for i, n in enumerate(names)}))
    out.append(("all the same (180)", dict.fromkeys(names, 2)))
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        out.append((f"seed {seed}", {n: int(rng.integers(4)) for n in names}))
    if only is not None:
        unknown = only - {label for label, _ in out}
        if unknown:
            raise SystemExit(f"--only: no arrangement {sorted(unknown)} (raise --seeds?)")
        out = [a for a in out if a[0] in only]
    return out


def write_turned_copy(
    pixels: dict[str, np.ndarray], gt: dict, applied: dict[str, int], dst: Path
) -> Path | None:
    """Write the turned images to ``dst/images`` and the turned GT; returns the GT path."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "images").mkdir(parents=True)
    cams = []
    for n, image in pixels.items():
        out = np.ascontiguousarray(np.rot90(image, applied[n]))
        cv2.imwrite(
            str(dst / "images" / n),
            cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        if n in gt:
            h, w = image.shape[:2]
            cams.append(rotate_camera(gt[n], applied[n], w, h))
    if not cams:
        return None
    return write_cameras_txt(dst / "gt.txt", cams)


def score(out_dir: Path, gt_path: Path | None, num_images: int) -> dict:
    row = score_sparse(out_dir / paths.SPARSE, gt_path, num_images)
    row["one_model"] = row["registered"] == num_images and row["models"] == 1
    return row


def turns_right(found: dict[str, int], applied: dict[str, int]) -> bool:
    """Whether `found` undoes `applied` up to the majority orientation (any tied one)."""
    tally = Counter(applied.values())
    top = max(tally.values())
    return any(
        all(found.get(n, 0) == (reference - a) % 4 for n, a in applied.items())
        for reference in (r for r, c in tally.items() if c == top)
    )


def run_one(copy_dir: Path, config: PipelineConfig, gt_path, applied) -> dict:
    out = copy_dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        summary = run_pipeline(copy_dir / "images", out, config, overwrite=True)
        error = None
    except ReconstructError as e:
        summary, error = None, str(e).splitlines()[0]
    row = {"seconds": round(time.perf_counter() - t0, 1), **score(out, gt_path, len(applied))}
    if error:
        row["error"] = error
    if summary is not None:
        row["timings"] = dict(summary.timings)
        rotations = json.loads((out / paths.ROTATIONS).read_text())
        row["turned"] = rotations["turned"]
        row["turns_right"] = turns_right(rotations["turns"], applied)
        info = json.loads((out / paths.SPARSE / paths.MAPPING_SUMMARY).read_text())
        pp = (info.get("principal_point") or [{}])[0]
        row["pp_kept"] = pp.get("accepted")
        row["pp_evidence"] = [pp.get("evidence"), pp.get("penalty"), pp.get("max_shift")]
    return row


def cue_only(names, pixels, seeds: int, only: set[str] | None = None) -> None:
    pairs = list(itertools.combinations(sorted(names), 2))
    config = OrientationConfig()
    with tempfile.TemporaryDirectory() as tmp:
        for label, applied in arrangements(names, seeds, only):
            for n in names:
                out = np.ascontiguousarray(np.rot90(pixels[n], applied[n]))
                cv2.imwrite(str(Path(tmp) / n), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
            start = time.perf_counter()
            votes = estimate_votes(Path(tmp), pairs, config)
            found = confirm_turns(solve_turns(names, votes), votes, config.min_lead_sigma)
            seconds = time.perf_counter() - start
            # a vote says turn(name1) - turn(name0); the correcting turns are -applied
            wrong = [
                v
                for v in votes
                if v.weight > 0 and v.turn != (applied[v.name0] - applied[v.name1]) % 4
            ]
            print(
                f"{label:20s} turns right={turns_right(found, applied)!s:5s} "
                f"wrong votes {len(wrong):2d} (weight {sum(v.weight for v in wrong)} of "
                f"{sum(v.weight for v in votes)}) cue {seconds:.2f} s",
                flush=True,
            )


def summarize(rows: list[dict], scene: str) -> None:
    base = next((r for r in rows if r["arrangement"] == "none"), None)
    turned = [r for r in rows if r["arrangement"] != "none"]
    if not turned:
        return
    one = sum(r["one_model"] for r in turned)
    right = sum(bool(r.get("turns_right")) for r in turned)
    print(
        f"{scene}: {len(turned)} turned arrangements; every image in one model: {one}/"
        f"{len(turned)}; every turn right: {right}/{len(turned)}"
    )
    if base is not None and "auc5" in base:
        aucs = np.array([r["auc5"] for r in turned])
        close = int(np.sum(aucs >= base["auc5"] - 0.03))
        q = np.percentile(aucs, [0, 25, 50, 75, 100])
        print(
            f"  AUC@5 unturned {base['auc5']:.3f}; turned: within 0.03 for {close}/"
            f"{len(turned)}; min {q[0]:.3f} q25 {q[1]:.3f} median {q[2]:.3f} "
            f"q75 {q[3]:.3f} max {q[4]:.3f}"
        )


def cost(names, pixels, gt, work: Path, rounds: int) -> None:
    on = PipelineConfig()
    off = dataclasses.replace(on, orientation=OrientationConfig(enabled=False))
    seed0 = dict(arrangements(names, 1))["seed 0"]
    cases = [
        ("unturned, upright stage off", dict.fromkeys(names, 0), off),
        ("unturned, upright stage on", dict.fromkeys(names, 0), on),
        ("seed 0 turned, upright stage on", seed0, on),
    ]
    times: dict[str, list[float]] = {c[0]: [] for c in cases}
    for i in range(rounds):
        for label, applied, config in cases:
            d = work / "cost" / label.split(",")[0].replace(" ", "_")
            gt_path = write_turned_copy(pixels, gt, applied, d)
            row = run_one(d, config, gt_path, applied)
            times[label].append(row["timings"]["total"])
            print(f"round {i} {label}: {row['timings']['total']:.1f} s {row}", flush=True)
    ref = float(np.median(times[cases[0][0]]))
    for label, values in times.items():
        m = float(np.median(values))
        print(f"{label:34s} median {m:.1f} s over {len(values)} runs = {m / ref:.3f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scene", type=Path)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--only", help="comma-separated labels of the arrangements to run")
    p.add_argument("--json", type=Path, help="append one JSON line per arrangement")
    p.add_argument("--work", type=Path, help="where the copies and runs go (default: temp)")
    p.add_argument("--cue-only", action="store_true")
    p.add_argument("--cost", type=int, default=0, metavar="N")
    args = p.parse_args()
    _setup_logging(0, True)
    names = list_images(args.scene / "images")
    pixels = {n: read_image(args.scene / "images" / n) for n in names}
    only = {x.strip() for x in args.only.split(",")} if args.only else None
    if args.cue_only:
        cue_only(names, pixels, args.seeds, only)
        return
    gt_file = args.scene / "gt" / "cameras.txt"
    gt = read_cameras_txt(gt_file) if gt_file.is_file() else {}
    work = args.work or Path(tempfile.mkdtemp(prefix="reconstruct-orient-"))
    if args.cost:
        cost(names, pixels, gt, work, args.cost)
        return
    rows = []
    config = PipelineConfig()
    for label, applied in arrangements(names, args.seeds, only):
        copy_dir = work / "copy"
        gt_path = write_turned_copy(pixels, gt, applied, copy_dir)
        row = {"arrangement": label, **run_one(copy_dir, config, gt_path, applied)}
        row["applied_turned"] = sum(1 for t in applied.values() if t)
        rows.append(row)
        auc = f" AUC@5 {row['auc5']:.3f}" if "auc5" in row else ""
        print(
            f"{label:20s} applied {row['applied_turned']:2d} turned {row.get('turned', '-')!s:>2} "
            f"turns right={row.get('turns_right')!s:5s} registered {row['registered']}/"
            f"{row['images']} in {row['models']} model(s){auc} {row['seconds']:.0f} s"
            + (f" ERROR {row['error']}" if "error" in row else ""),
            flush=True,
        )
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")
    summarize(rows, args.scene.name)


if __name__ == "__main__":
    main()
