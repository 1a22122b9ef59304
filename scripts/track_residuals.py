"""Keypoint errors of a model's tracks, judged with ground-truth cameras.

    python scripts/track_residuals.py MODEL_DIR GT/cameras.txt

Every track of 3 or more observations of the COLMAP model in MODEL_DIR is triangulated again
(linear, DLT) with the true cameras of `GT/cameras.txt`, and each observation's residual (its
keypoint minus the reprojection) is collected: the root mean square, the median length and the
mean vector, overall and by distance from the image centre. The mean vector is a bias of the
keypoints themselves (the poses are not estimated), the figure behind the README's paragraph on
ALIKED against SIFT on the synthetic rings. Not part of the package; a diagnostic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pycolmap

from reconstruct.gt import read_cameras_txt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("gt", type=Path)
    args = parser.parse_args()
    gt = read_cameras_txt(args.gt)
    rec = pycolmap.Reconstruction(str(args.model))
    projection = {
        n: c.K @ np.hstack([c.rotation, np.reshape(c.translation, (3, 1))]) for n, c in gt.items()
    }
    residuals, radii = [], []
    for point in rec.points3D.values():
        obs = []
        for el in point.track.elements:
            image = rec.images[el.image_id]
            camera = rec.cameras[image.camera_id]
            xy = np.asarray(image.points2D[el.point2D_idx].xy)
            centre = np.array([camera.width, camera.height]) / 2
            obs.append((projection[image.name], xy, np.linalg.norm(xy - centre)))
        if len(obs) < 3:
            continue
        rows = [r for p, xy, _ in obs for r in (xy[0] * p[2] - p[0], xy[1] * p[2] - p[1])]
        x = np.linalg.svd(np.array(rows))[2][-1]
        x = x / x[3]
        for p, xy, r in obs:
            q = p @ x
            residuals.append(xy - q[:2] / q[2])
            radii.append(r)
    res, rad = np.array(residuals), np.array(radii)
    print(
        f"{len(res)} observations: rms {np.sqrt((res**2).sum(1).mean()):.3f} px, median "
        f"{np.median(np.linalg.norm(res, axis=1)):.3f} px, mean (x, y) "
        f"({res[:, 0].mean():+.3f}, {res[:, 1].mean():+.3f}) px"
    )
    edges = np.quantile(rad, [0, 0.25, 0.5, 0.75, 1.0])
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (rad >= lo) & (rad <= hi)
        print(
            f"  {lo:6.0f}-{hi:4.0f} px from the centre: mean (x, y) "
            f"({res[sel, 0].mean():+.3f}, {res[sel, 1].mean():+.3f}) px"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
