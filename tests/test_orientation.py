import json
import shutil

import numpy as np
import pytest

from reconstruct.evaluation import relative_pose_errors
from reconstruct.export import read_all_poses
from reconstruct.gt import rotate_camera
from reconstruct.images import read_image
from reconstruct.orientation import match_graph
from reconstruct.pipeline import load_config, run_pipeline


def test_match_graph_components_exact():
    names = ["a", "b", "c", "d", "e"]
    counts = {("a", "b"): 300, ("b", "c"): 99, ("c", "d"): 100, ("a", "e"): 5}
    labels = match_graph(names, counts, min_matches=100)
    groups = {}
    for n, lab in zip(names, labels, strict=True):
        groups.setdefault(lab, []).append(n)
    assert sorted(groups.values()) == [["a", "b"], ["c", "d"], ["e"]]


@pytest.mark.slow
def test_turned_images_register(synthetic_scene, tmp_path):
    """Two of six views upside down and one in portrait, no EXIF: all register, poses right."""
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    turns = {"view_001.jpg": 2, "view_003.jpg": 2, "view_004.jpg": 1}
    gt = {}
    for i in range(6):
        name = f"view_00{i}.jpg"
        k = turns.get(name, 0)
        pixels = read_image(synthetic_scene.image_dir / name)
        h, w = pixels.shape[:2]
        turned = np.ascontiguousarray(np.rot90(pixels, k))
        cv2.imwrite(str(images / name), cv2.cvtColor(turned, cv2.COLOR_RGB2BGR))
        gt[name] = rotate_camera(synthetic_scene.cameras[name], k, w, h)
    cfg = load_config(overrides={"keypoints": {"max_keypoints": 512}})
    summary = run_pipeline(images, tmp_path / "out", cfg)
    assert summary.counts["registered_images"] == 6, summary.format()
    found = json.loads((tmp_path / "out" / "rotations.json").read_text())["rotations"]
    # turns are relative to the largest upright group: the three unturned views stay at 0
    assert found == {"view_001.jpg": 2, "view_003.jpg": 2, "view_004.jpg": 3}
    errors = relative_pose_errors(gt, read_all_poses(tmp_path / "out" / "sparse"))
    assert max(e.rotation_error_deg for e in errors) < 1.0

    # a re-run reuses everything: nothing is extracted or matched again
    again = run_pipeline(images, tmp_path / "out", cfg)
    assert again.counts["registered_images"] == 6
    assert again.timings["keypoints"] < 2.0 and again.timings["matching"] < 2.0
    shutil.rmtree(tmp_path / "out")
