"""SIFT, ALIKED + LightGlue and DINOv2 patch matching on the same image pair: one table, one figure.

For each method: keypoints in each image, matches, RANSAC inliers (OpenCV MAGSAC++ fundamental
matrix at ``--ransac-px`` pixels of the original images, as mapping's geometric verification),
inlier ratio and time (extraction of both images, then matching; model loading excluded). With
known cameras (``--gt cameras.txt``, found automatically at ``IMAGE_DIR/../gt/cameras.txt`` as in
the synthetic scenes) it also reports the relative-pose error of an essential matrix estimated
from the matches (rotation and translation-direction angles, degrees).

The methods use the pipeline's own code and defaults: SIFT is `keypoints.extractor=sift` with
`matching.matcher=mnn` (mutual NN + ratio test), ALIKED + LightGlue the default pipeline, DINOv2
the patch extractor and matcher of reconstruct/models/ (patch_features.py, patch_matcher.py;
`--method` picks the patch matching rule). ``--refine`` adds a row with the same DINOv2 matches
moved by the sub-patch soft-argmax refinement, to measure whether it improves the pose.

DINOv2 weights: ``--dinov2-weights PATH``, else the cache (``reconstruct weights list``); with
neither, the DINOv2 row says the weights are missing (no silent fallback). ``--random-dinov2``
uses a randomly initialised backbone for plumbing demos; its rows are labelled RANDOM and their
numbers mean nothing about DINOv2.

Usage::

    python scripts/compare_matchers.py IMAGE_DIR NAME0 NAME1 [--out DIR] [--random-dinov2]
    python scripts/compare_matchers.py data/images 0000.jpg 0001.jpg --dinov2-weights w.pth --refine
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reconstruct.errors import ModelWeightsError, ReconstructError
from reconstruct.gt import CameraPose, read_cameras_txt
from reconstruct.images import read_image
from reconstruct.storage import Features, atomic_write_json, atomic_write_text

logger = logging.getLogger("compare_matchers")


@dataclass
class Result:
    """One row of the table (and one picture of the figure)."""

    method: str
    keypoints0: int | None = None
    keypoints1: int | None = None
    matches: int | None = None
    inliers: int | None = None
    extract_s: float | None = None
    match_s: float | None = None
    rotation_error_deg: float | None = None
    translation_error_deg: float | None = None
    note: str = ""
    kpts0: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    kpts1: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    inlier_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    @property
    def inlier_ratio(self) -> float | None:
        if not self.matches:
            return None if self.matches is None else 0.0
        return self.inliers / self.matches

    def to_dict(self) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("kpts0", "kpts1", "inlier_mask")
        }
        d["inlier_ratio"] = self.inlier_ratio
        return d


# ----------------------------------------------------------------------------- geometry


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def relative_pose_error(
    k0: np.ndarray, k1: np.ndarray, cam0: CameraPose, cam1: CameraPose, threshold_px: float
) -> tuple[float, float] | None:
    """(rotation, translation-direction) errors in degrees of the essential matrix estimated
    from matched points with the GT intrinsics, against the GT relative pose; None if no pose.

    The translation error is the angle between directions, folded to [0, 90] (its sign is not
    observable from an essential matrix without cheirality ties), as in SuperGlue's evaluation.
    """
    import cv2

    if len(k0) < 5:
        return None

    def normalise(k, cam):
        return np.stack([(k[:, 0] - cam.cx) / cam.fx, (k[:, 1] - cam.cy) / cam.fy], axis=1)

    n0, n1 = (
        normalise(np.asarray(k0, np.float64), cam0),
        normalise(np.asarray(k1, np.float64), cam1),
    )
    f = np.mean([cam0.fx, cam0.fy, cam1.fx, cam1.fy])
    cv2.setRNGSeed(0)
    E, mask = cv2.findEssentialMat(
        n0, n1, np.eye(3), method=cv2.USAC_MAGSAC, prob=0.99999, threshold=threshold_px / f
    )
    if E is None or E.shape != (3, 3):
        return None
    _, R, t, _ = cv2.recoverPose(E, n0, n1, np.eye(3), mask=mask)
    R_gt = cam1.rotation @ cam0.rotation.T
    t_gt = cam1.translation - R_gt @ cam0.translation
    rot = float(np.degrees(np.arccos(np.clip((np.trace(R @ R_gt.T) - 1) / 2, -1.0, 1.0))))
    trans = _angle_deg(t.reshape(3), t_gt)
    return rot, min(trans, 180.0 - trans)


# ----------------------------------------------------------------------------- methods


def _as_features(feats: dict, image: np.ndarray) -> Features:
    return Features(
        feats["keypoints"], feats["descriptors"], feats["scores"], (image.shape[1], image.shape[0])
    )


def run_method(name, extractor, matcher, images, resize, *, extract=None) -> tuple[Result, list]:
    """Extract both images (pipeline path: keypoints.extract_image) and match them."""
    from reconstruct.keypoints import extract_image

    t0 = time.perf_counter()
    if extract is None:
        feats = [extract_image(extractor, im, resize) for im in images]
    else:
        feats = [extract(im) for im in images]
    t1 = time.perf_counter()
    data = [matcher.to_input(_as_features(f, im)) for f, im in zip(feats, images, strict=True)]
    m, _ = matcher(*data)
    t2 = time.perf_counter()
    m = np.asarray(m, np.int64).reshape(-1, 2)
    k0 = feats[0]["keypoints"][m[:, 0]]
    k1 = feats[1]["keypoints"][m[:, 1]]
    res = Result(
        name,
        keypoints0=len(feats[0]["keypoints"]),
        keypoints1=len(feats[1]["keypoints"]),
        matches=len(m),
        extract_s=t1 - t0,
        match_s=t2 - t1,
        kpts0=k0,
        kpts1=k1,
    )
    return res, [feats, m]


def score(res: Result, ransac_px: float, cams: tuple[CameraPose, CameraPose] | None) -> Result:
    from reconstruct.viz import fundamental_inliers

    res.inlier_mask = fundamental_inliers(res.kpts0, res.kpts1, ransac_px)
    res.inliers = int(res.inlier_mask.sum())
    if cams is not None:
        err = relative_pose_error(res.kpts0, res.kpts1, cams[0], cams[1], ransac_px)
        if err is not None:
            res.rotation_error_deg, res.translation_error_deg = err
        else:
            res.note = (res.note + "; " if res.note else "") + "no pose"
    return res


def dinov2_model(args, device):
    """(DinoModel, label suffix) or raise ModelWeightsError."""
    import torch

    from reconstruct.models import dinov2
    from reconstruct.models.patch_features import PatchFeaturesConfig, load_patch_model

    if args.random_dinov2:
        torch.manual_seed(0)
        module = dinov2.build_model(args.backbone).to(device)
        return dinov2.DinoModel(module, args.backbone, device, "random-0"), " [RANDOM weights]"
    cfg = PatchFeaturesConfig(
        backbone=args.backbone, weights=args.dinov2_weights, download=args.download
    )
    return load_patch_model(cfg, device), ""


# ----------------------------------------------------------------------------- output


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def format_table(rows: list[Result]) -> str:
    head = [
        "method",
        "kpts0",
        "kpts1",
        "matches",
        "inliers",
        "inlier %",
        "extract s",
        "match s",
        "R err deg",
        "t err deg",
        "note",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = None if r.inlier_ratio is None else 100 * r.inlier_ratio
        cells = [
            r.method,
            _fmt(r.keypoints0),
            _fmt(r.keypoints1),
            _fmt(r.matches),
            _fmt(r.inliers),
            _fmt(ratio, ".1f"),
            _fmt(r.extract_s, ".2f"),
            _fmt(r.match_s, ".2f"),
            _fmt(r.rotation_error_deg, ".2f"),
            _fmt(r.translation_error_deg, ".2f"),
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[Result], images, names, height: int) -> np.ndarray:
    from reconstruct.viz import _banner, match_title, render_matches

    panels = []
    width = None
    for r in rows:
        if r.matches is None:
            continue
        title = match_title(names[0], names[1], r.inlier_mask, min(300, r.matches), r.method)
        p = render_matches(
            images[0], images[1], r.kpts0, r.kpts1, r.inlier_mask, title=title, height=height
        )
        panels.append(p)
        width = p.shape[1]
    for r in rows:
        if r.matches is None:
            w = width or 800
            panels.append(_banner(w, f"{r.method}: {r.note}", 48))
    return np.concatenate(panels, axis=0)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image_dir", type=Path)
    p.add_argument("name0")
    p.add_argument("name1")
    p.add_argument("--out", type=Path, help="output folder (default: compare_<name0>_<name1>)")
    p.add_argument("--gt", type=Path, help="known cameras (gt format); default IMAGE_DIR/../gt")
    p.add_argument("--resize", type=int, default=1024, help="keypoints.resize for SIFT/ALIKED")
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--ransac-px", type=float, default=4.0, help="RANSAC threshold, pixels")
    p.add_argument("--methods", default="sift,aliked,dinov2", help="comma-separated subset")
    p.add_argument("--backbone", default="vits14", help="DINOv2 backbone")
    p.add_argument("--resolution", type=int, default=518, help="DINOv2 long side (x14)")
    p.add_argument(
        "--method",
        default="mnn",
        choices=["mnn", "ratio", "hungarian"],
        help="DINOv2 patch matching rule",
    )
    p.add_argument("--foreground", default="none", choices=["none", "pca"])
    p.add_argument("--dinov2-weights", type=Path, help="DINOv2 weights file")
    p.add_argument("--download", action="store_true", help="download missing DINOv2 weights")
    p.add_argument(
        "--random-dinov2",
        action="store_true",
        help="random DINOv2 weights: plumbing demo, labelled RANDOM",
    )
    p.add_argument("--refine", action="store_true", help="add a DINOv2 row with refinement")
    p.add_argument("--height", type=int, default=360, help="figure row height, pixels")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import torch

    from reconstruct.device import resolve_device
    from reconstruct.keypoints import KeypointsConfig, build_extractor
    from reconstruct.matching import MatchingConfig, build_matcher
    from reconstruct.viz import write_png

    device = resolve_device(args.device)
    torch.manual_seed(0)
    names = (args.name0, args.name1)
    images = [read_image(args.image_dir / n) for n in names]
    out = args.out or Path(f"compare_{args.name0}_{args.name1}".replace("/", "_"))
    gt_path = args.gt or (args.image_dir.parent / "gt" / "cameras.txt")
    cams = None
    if gt_path.is_file():
        gt = read_cameras_txt(gt_path)
        if all(n in gt for n in names):
            cams = (gt[names[0]], gt[names[1]])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows: list[Result] = []
    for method in methods:
        if method == "sift":
            kcfg = KeypointsConfig(extractor="sift", max_keypoints=args.max_keypoints)
            res, _ = run_method(
                "SIFT + mutual NN ratio",
                build_extractor(kcfg, device),
                build_matcher(MatchingConfig(matcher="mnn"), "sift", device),
                images,
                args.resize,
            )
            rows.append(score(res, args.ransac_px, cams))
        elif method == "aliked":
            kcfg = KeypointsConfig(max_keypoints=args.max_keypoints)
            res, _ = run_method(
                "ALIKED + LightGlue",
                build_extractor(kcfg, device),
                build_matcher(MatchingConfig(), "aliked", device),
                images,
                args.resize,
            )
            rows.append(score(res, args.ransac_px, cams))
        elif method == "dinov2":
            rows.extend(run_dinov2(args, device, images, cams))
        else:
            print(f"unknown method {method!r}", file=sys.stderr)
            return 2

    table = format_table(rows)
    where = f"{args.image_dir}: {names[0]} - {names[1]}"
    gt_note = f"GT: {gt_path}" if cams else "no GT cameras (pose errors not computed)"
    text = f"{where}\n{gt_note}; RANSAC {args.ransac_px:g} px\n\n{table}\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", text)
    atomic_write_json(
        out / "results.json",
        {
            "image_dir": str(args.image_dir),
            "pair": names,
            "gt": str(gt_path) if cams else None,
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": [r.to_dict() for r in rows],
        },
    )
    png = write_png(out / "matches.png", figure(rows, images, names, args.height))
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {png}")
    return 0


def run_dinov2(args, device, images, cams) -> list[Result]:
    from reconstruct.models.patch_features import PatchExtractor, PatchFeaturesConfig
    from reconstruct.models.patch_matcher import PatchMatcher, PatchMatchingConfig, refine_matches

    label = f"DINOv2 {args.backbone} patch {args.method}"
    try:
        model, suffix = dinov2_model(args, device)
    except ModelWeightsError as e:
        print(f"DINOv2 row skipped: {e}", file=sys.stderr)
        note = (
            f"NOT RUN: no DINOv2 {args.backbone} weights found (see stderr); pass "
            "--dinov2-weights PATH, --download, or --random-dinov2 for a plumbing demo"
        )
        return [Result(label, note=note)]
    label += suffix
    cfg = PatchFeaturesConfig(
        backbone=args.backbone, resolution=args.resolution, foreground=args.foreground
    )
    extractor = PatchExtractor(cfg, device, model=model)
    matcher = PatchMatcher(PatchMatchingConfig(method=args.method), device)
    grids = []

    def extract(image):
        grid = extractor.grid(image)  # straight from the original image: no double resize
        grids.append(grid)
        return extractor.features(grid)

    res, (feats, m) = run_method(label, extractor, matcher, images, None, extract=extract)
    if suffix:
        res.note = "random weights: plumbing only"
    rows = [score(res, args.ransac_px, cams)]
    if args.refine:
        t0 = time.perf_counter()
        dense = [g.upsampled(cfg.upsample) for g in grids]
        cells0 = dense[0].cells_of(res.kpts0)
        cells1 = dense[1].cells_of(res.kpts1)
        xy0, xy1 = refine_matches(dense[0].tokens, dense[1].tokens, cells0, cells1)
        ref = Result(
            label + " + refine",
            keypoints0=res.keypoints0,
            keypoints1=res.keypoints1,
            matches=res.matches,
            extract_s=res.extract_s,
            match_s=res.match_s + time.perf_counter() - t0,
            kpts0=dense[0].to_pixels(xy0),
            kpts1=dense[1].to_pixels(xy1),
            note="per-pair positions (two-view only)" + ("; random weights" if suffix else ""),
        )
        rows.append(score(ref, args.ransac_px, cams))
    return rows


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ReconstructError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
