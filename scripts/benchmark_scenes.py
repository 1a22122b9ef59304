#!/usr/bin/env python
"""Accuracy on every kind of scene: ours against COLMAP SIFT, and the principal-point policies.

    python scripts/benchmark_scenes.py [--scenes narrow2,narrow3.5,...] [--dev DIR ...]
        [--work DIR] [--json out.jsonl] [--no-colmap]

Synthetic scenes (rendered by `reconstruct.synthetic`, ground truth exact):

- ``narrowF``: focal length F x the image width (F in 2..5), 12 views on a 100 degree arc;
- ``narrowF-pp``: the same with the principal point 1.5% off the centre;
- ``medium``: focal length 1 x the width (53 degree field of view), principal point at the centre;
- ``wide``: focal length 0.6 x the width (80 degree field of view), principal point off-centre;
- ``textureless``: texture contrast 6% of the usual;
- ``mixed``: ``medium`` with a third of the views downsized to 480x360 and a third upsized to
  800x600 (mixed image sizes as in internet photos, so several cameras);
- ``ring2.4``: 47 views on a closed 360 degree ring around boxes on the ground (the synthetic
  ``object`` layout), focal length 2.4 x the width, as the held-out object ring;
- ``ring2.4-turned``: the same with every third view upside down (turned 180 degrees, no EXIF);
- ``ring1``: 36 views on the ring at focal length 1 x the width;
- ``ring-textureless``: 16 views on the ring, 22.5 degrees apart, texture contrast 6% (as the
  held-out ring of an untextured object, 23 degrees apart); ``ring-textureless2``: contrast 2%;
- ``pedestal2.4``, ``pedestal5``: that ring with the boxes alone on a black background (the
  ``pedestal`` layout), focal length 2.4 and 5 x the width: every feature is on the object.

`--dev` adds real scenes (a folder with `images/` and optionally `gt/cameras.txt`).

Per scene: our default pipeline (`refine_principal_point=auto`), the same features and matches
mapped again with ``never`` and ``always`` (only mapping differs), and COLMAP's SIFT pipeline.
Each row: registered images in the largest model, number of models, AUC@5 (with ground
truth) and for ``auto`` whether the refined principal point was kept. Accuracy is what counts
here; the machine is shared, so no times are compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import cv2

from reconstruct import paths
from reconstruct.cli import _setup_logging
from reconstruct.errors import ReconstructError
from reconstruct.evaluation import evaluate
from reconstruct.export import read_all_poses
from reconstruct.gt import CameraPose, read_cameras_txt, rotate_camera, write_cameras_txt
from reconstruct.mapping import run_mapping
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import PipelineConfig
from reconstruct.synthetic import SceneConfig, make_scene

sys.path.insert(0, str(Path(__file__).parent))
from colmap_baseline import run_colmap_sift  # noqa: E402 - scripts/ is on the path above

BASE = {"num_images": 12, "arc_degrees": 100.0, "width": 640, "height": 480}
RING = {"layout": "object", "arc_degrees": 360.0, "width": 640, "height": 480}


def synthetic_configs() -> dict[str, SceneConfig]:
    out = {}
    for f in (2.0, 2.4, 3.5, 5.0):
        out[f"narrow{f:g}"] = SceneConfig(**BASE, focal=f * 640)
        out[f"narrow{f:g}-pp"] = SceneConfig(**BASE, focal=f * 640, principal_offset=(9.0, -6.0))
    out["medium"] = SceneConfig(**BASE)
    out["wide"] = SceneConfig(**BASE, focal=0.6 * 640, principal_offset=(9.0, -6.0))
    out["textureless"] = SceneConfig(**BASE, contrast=0.06)
    out["mixed"] = SceneConfig(**BASE)
    out["ring2.4"] = SceneConfig(**RING, num_images=47, focal=2.4 * 640)
    out["ring2.4-turned"] = SceneConfig(**RING, num_images=47, focal=2.4 * 640)
    out["ring1"] = SceneConfig(**RING, num_images=36)
    out["ring-textureless"] = SceneConfig(**RING, num_images=16, contrast=0.06)
    out["ring-textureless2"] = SceneConfig(**RING, num_images=16, contrast=0.02)
    pedestal = {**RING, "layout": "pedestal", "num_images": 16, "contrast": 0.06}
    out["pedestal2.4"] = SceneConfig(**pedestal, focal=2.4 * 640)
    out["pedestal5"] = SceneConfig(**pedestal, focal=5 * 640, distance=14.0, camera_height=5.0)
    return out


def turn_views(root: Path) -> None:
    """Every third view (from the second) turned upside down, ground truth turned with it."""
    gt = read_cameras_txt(root / "gt" / "cameras.txt")
    cams = []
    for i, name in enumerate(sorted(gt)):
        c = gt[name]
        if i % 3 == 1:
            path = root / "images" / name
            image = cv2.imread(str(path))
            cv2.imwrite(str(path), cv2.rotate(image, cv2.ROTATE_180))
            c = rotate_camera(c, 2, image.shape[1], image.shape[0])
        cams.append(c)
    write_cameras_txt(root / "gt" / "cameras.txt", cams)


def resize_views(root: Path) -> None:
    """Mixed sizes: every third view from the first at 480x360, from the second at 800x600."""
    gt = read_cameras_txt(root / "gt" / "cameras.txt")
    cams = []
    for i, name in enumerate(sorted(gt)):
        c = gt[name]
        scale = {0: 0.75, 1: 1.25}.get(i % 3, 1.0)
        if scale != 1.0:
            path = root / "images" / name
            image = cv2.imread(str(path))
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            cv2.imwrite(str(path), cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            c = CameraPose(
                name,
                c.fx * scale,
                c.fy * scale,
                c.cx * scale,
                c.cy * scale,
                c.rotation,
                c.translation,
            )
        cams.append(c)
    write_cameras_txt(root / "gt" / "cameras.txt", cams)


def score(sparse: Path, gt: Path | None, num_images: int) -> dict:
    try:
        models = read_all_poses(sparse)
    except ReconstructError:
        models = []
    row = {
        "registered": len(models[0]) if models else 0,
        "models": len(models),
        "images": num_images,
    }
    if gt is not None and gt.is_file():
        row["auc5"] = round(float(evaluate(read_cameras_txt(gt), models).to_dict()["auc"]["5"]), 4)
    summary = sparse / paths.MAPPING_SUMMARY  # ours only: the check of mapping.check_consistency
    if summary.is_file():
        consistency = json.loads(summary.read_text()).get("consistency") or {}
        row["explained"] = consistency.get("explained")
    return row


def run_scene(name: str, images: Path, gt: Path | None, work: Path, colmap: bool) -> list[dict]:
    num = sum(1 for p in images.iterdir() if p.is_file())
    rows = []
    out = work / name / "ours"
    shutil.rmtree(out, ignore_errors=True)
    config = PipelineConfig()
    try:
        run_pipeline(images, out, config, overwrite=True)
    except ReconstructError as e:
        print(f"{name}: ours failed: {str(e).splitlines()[0]}", flush=True)
    row = {"scene": name, "method": "ours (pp auto)", **score(out / paths.SPARSE, gt, num)}
    info_path = out / paths.SPARSE / paths.MAPPING_SUMMARY
    if info_path.is_file():
        pp = json.loads(info_path.read_text()).get("principal_point", [{}])[0]
        row["pp"] = {
            k: pp.get(k)
            for k in (
                "accepted",
                "reason",
                "evidence",
                "penalty",
                "max_shift",
                "rms_fixed",
                "rms_refined",
            )
        }
    rows.append(row)
    if (out / paths.MATCHES).is_file():
        for policy in ("never", "always"):
            mdir = work / name / f"map-{policy}"
            shutil.rmtree(mdir, ignore_errors=True)
            mcfg = dataclasses.replace(config.mapping, refine_principal_point=policy)
            try:
                sparse = run_mapping(
                    images,
                    out / paths.FEATURES,
                    out / paths.MATCHES,
                    mdir,
                    mcfg,
                    pairs_path=out / paths.PAIRS,
                )
            except ReconstructError:
                sparse = mdir / paths.SPARSE
            rows.append({"scene": name, "method": f"ours (pp {policy})", **score(sparse, gt, num)})
    if colmap:
        cdir = work / name / "colmap"
        shutil.rmtree(cdir, ignore_errors=True)
        try:
            sparse, _ = run_colmap_sift(images, cdir)
        except ReconstructError:
            sparse = cdir / paths.SPARSE
        rows.append({"scene": name, "method": "COLMAP SIFT", **score(sparse, gt, num)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenes", default=",".join(synthetic_configs()), help="synthetic scenes")
    p.add_argument("--dev", type=Path, action="append", default=[], help="a real scene folder")
    p.add_argument("--work", type=Path)
    p.add_argument("--json", type=Path, help="append one JSON line per row")
    p.add_argument("--no-colmap", action="store_true")
    args = p.parse_args()
    _setup_logging(0, True)
    work = args.work or Path(tempfile.mkdtemp(prefix="reconstruct-scenes-"))
    configs = synthetic_configs()
    jobs = []
    for name in [s for s in args.scenes.split(",") if s]:
        if name not in configs:
            raise SystemExit(f"unknown scene {name!r}; choose from {', '.join(configs)}")
        root = work / name / "scene"
        scene = make_scene(root, configs[name])
        if name == "mixed":
            resize_views(root)
        if name.endswith("-turned"):
            turn_views(root)
        jobs.append((name, scene.image_dir, scene.gt_path))
    for d in args.dev:
        jobs.append((d.name, d / "images", d / "gt" / "cameras.txt"))
    for name, images, gt in jobs:
        for row in run_scene(name, images, gt, work, not args.no_colmap):
            auc = f" AUC@5 {row['auc5']:.3f}" if "auc5" in row else ""
            pp = f" pp {row['pp']}" if "pp" in row else ""
            if row.get("explained") is not None:
                pp = f" explained {row['explained']:.2f}{pp}"
            print(
                f"{row['scene']:14s} {row['method']:16s} {row['registered']:3d}/{row['images']} "
                f"in {row['models']} model(s){auc}{pp}",
                flush=True,
            )
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
