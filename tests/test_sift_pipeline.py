"""SIFT + mutual-NN ratio matching end to end on the synthetic scene with known poses."""

from __future__ import annotations

import pytest

from reconstruct.evaluation import relative_pose_errors
from reconstruct.export import read_all_poses
from reconstruct.gt import read_cameras_txt
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import load_config

SIFT = {"keypoints": {"extractor": "sift"}, "matching": {"matcher": "mnn"}}


@pytest.mark.slow
def test_sift_registers_every_image_accurately(synthetic_scene, tmp_path):
    out = tmp_path / "sift"
    summary = run_pipeline(
        synthetic_scene.image_dir, out, load_config(overrides=SIFT), device="cpu"
    )
    gt = read_cameras_txt(synthetic_scene.gt_path)
    models = read_all_poses(out / "sparse")
    assert summary.counts["registered_images"] == len(gt) == 8
    assert set(models[0]) == set(gt)
    errors = relative_pose_errors(gt, models)
    assert len(errors) == 8 * 7 // 2
    worst = max(e.rotation_error_deg for e in errors)
    assert worst < 1.0, f"worst relative rotation error {worst:.3f} deg"  # measured 0.06
    assert max(e.translation_error_deg for e in errors) < 2.0  # measured 0.26
    assert summary.config["keypoints"]["extractor"] == "sift"
    assert summary.config["matching"]["matcher"] == "mnn"
