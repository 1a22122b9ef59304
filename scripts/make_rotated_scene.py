#!/usr/bin/env python
"""Copy a scene with some images turned by 90/180/270 degrees (no EXIF), with matching GT.

    python scripts/make_rotated_scene.py SRC_SCENE DST_SCENE [--seed 0]

Half of the images (at random) are turned by 180 degrees and a quarter by 90, as in the
rotation check of the tracker; `gt/cameras.txt` is rewritten for the turned cameras.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from reconstruct.gt import read_cameras_txt, rotate_camera, write_cameras_txt
from reconstruct.images import list_images, read_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    names = list_images(args.src / "images")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(names))
    turns = {}
    for rank, i in enumerate(order):
        turns[names[i]] = 2 if rank < len(names) // 2 else (1 if rank < 3 * len(names) // 4 else 0)
    gt_path = args.src / "gt" / "cameras.txt"
    gt = read_cameras_txt(gt_path) if gt_path.is_file() else {}
    shutil.rmtree(args.dst, ignore_errors=True)
    (args.dst / "images").mkdir(parents=True)
    cams = []
    for name in names:
        image = read_image(args.src / "images" / name)
        h, w = image.shape[:2]
        out = np.ascontiguousarray(np.rot90(image, turns[name]))
        cv2.imwrite(
            str(args.dst / "images" / name),
            cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        if name in gt:
            cams.append(rotate_camera(gt[name], turns[name], w, h))
        print(f"{name}: turned {90 * turns[name]} degrees")
    if cams:
        (args.dst / "gt").mkdir()
        write_cameras_txt(args.dst / "gt" / "cameras.txt", cams)


if __name__ == "__main__":
    main()
