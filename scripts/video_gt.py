"""Ground-truth cameras for the frames `reconstruct run VIDEO` kept, from a COLMAP model of
every N-th frame of the same video (pseudo ground truth, e.g. beer_colmap/sparse/0).

    python scripts/video_gt.py VIDEO MODEL OUT_DIR/frames [--every 10] [--name '{:04d}.jpg']
        [--gt-dir DIR]

The model's image ``name.format(k)`` is video frame ``every * k`` (0-based decode order; see the
data's SOURCE.md). Our frames are named by their timestamp, so each is mapped back to its decode
index by decoding the video's timestamps. Writes two camera files (reconstruct.gt format):

- ``gt_exact.txt``: our frames that are model frames (index a multiple of `every`): true pseudo
  ground truth;
- ``gt_interpolated.txt``: every kept frame, its pose interpolated between the two model frames
  around it (rotation by slerp, camera centre linearly, focal linearly). Hand-held motion over
  1/3 s is smooth but not linear, so this is approximate: report it as such.

Run ``reconstruct eval OUT_DIR --gt DIR/gt_exact.txt`` (and the interpolated one) afterwards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation, Slerp

from reconstruct.gt import CameraPose, write_cameras_txt
from reconstruct.video import frame_name, read_frames


def _model_cameras(model_dir: Path) -> dict[str, tuple]:
    """name -> (cam_from_world R, t, f, cx, cy) of a COLMAP model (single-focal models)."""
    rec = pycolmap.Reconstruction(str(model_dir))
    out = {}
    for image in rec.images.values():
        pose = image.cam_from_world()
        camera = rec.cameras[image.camera_id]
        f, cx, cy = camera.params[:3]  # SIMPLE_PINHOLE / SIMPLE_RADIAL / RADIAL: f, cx, cy first
        out[image.name] = (pose.rotation.matrix(), np.asarray(pose.translation), f, cx, cy)
    return out


def _leave_one_out(model: dict, pattern: str) -> tuple[float, float]:
    """Median rotation error (deg) and centre error (fraction of the camera-path extent) of
    model frame k interpolated halfway between frames k-1 and k+1."""
    names = [pattern.format(k) for k in range(len(model))]
    if not all(n in model for n in names) or len(names) < 3:
        return float("nan"), float("nan")
    centres = np.stack([-model[n][0].T @ model[n][1] for n in names])
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    rot, pos = [], []
    for k in range(1, len(names) - 1):
        r0, r, r1 = (model[names[j]][0] for j in (k - 1, k, k + 1))
        mid = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([r0, r1])))([0.5])
        rot.append(np.degrees((mid * Rotation.from_matrix(r).inv()).magnitude()[0]))
        pos.append(np.linalg.norm(0.5 * (centres[k - 1] + centres[k + 1]) - centres[k]) / extent)
    return float(np.median(rot)), float(np.median(pos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("frames", type=Path, help="the frames/ folder of our run")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--name", default="{:04d}.jpg")
    parser.add_argument("--gt-dir", type=Path, default=None, help="default: beside frames/")
    args = parser.parse_args()
    gt_dir = args.gt_dir or args.frames.parent
    index_of = {frame_name(t): i for i, (t, _) in enumerate(read_frames(args.video))}
    model = _model_cameras(args.model)
    kept = sorted(p.name for p in args.frames.glob("*.jpg"))
    missing = [n for n in kept if n not in index_of]
    if missing:
        raise SystemExit(f"{len(missing)} frames have no decoded timestamp, e.g. {missing[0]}")
    exact, interpolated = [], []
    for name in kept:
        i = index_of[name]
        k0, k1 = i // args.every, -(-i // args.every)
        a, b = args.name.format(k0), args.name.format(k1)
        if a not in model or b not in model:
            continue
        (r0, t0, f0, cx, cy), (r1, t1, f1, _, _) = model[a], model[b]
        w = 0.0 if k0 == k1 else (i - k0 * args.every) / args.every
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([r0, r1])))
        rotation = slerp([w]).as_matrix()[0]
        center = (1 - w) * (-r0.T @ t0) + w * (-r1.T @ t1)
        f = (1 - w) * f0 + w * f1
        camera = CameraPose(name, f, f, cx, cy, rotation, -rotation @ center)
        interpolated.append(camera)
        if k0 == k1:
            exact.append(camera)
    write_cameras_txt(gt_dir / "gt_exact.txt", exact)
    loo_rotation, loo_centre = _leave_one_out(model, args.name)
    write_cameras_txt(gt_dir / "gt_interpolated.txt", interpolated)
    print(
        json.dumps(
            {
                "kept": len(kept),
                "exact": len(exact),
                "interpolated": len(interpolated),
                "exact_frames": [index_of[c.name] for c in exact],
                # interpolating model frame k from k-1 and k+1 (twice our gap): an upper bound
                "interpolation_check_median_rotation_deg": round(loo_rotation, 3),
                "interpolation_check_median_centre_error_of_extent": round(loo_centre, 4),
                "gt_dir": str(gt_dir),
            }
        )
    )


if __name__ == "__main__":
    main()
