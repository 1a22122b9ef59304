"""The rescue of images left out of the largest model, end to end on a small synthetic scene."""

import json

import numpy as np
import pytest

from reconstruct.errors import MappingError
from reconstruct.evaluation import relative_pose_errors
from reconstruct.export import read_all_poses
from reconstruct.gt import read_cameras_txt
from reconstruct.pipeline import run_pipeline
from reconstruct.rescue import RescueConfig
from reconstruct.settings import load_config
from reconstruct.storage import (
    FEATURES_SCHEMA,
    FeaturesReader,
    MatchesReader,
    read_header,
    read_pairs,
)
from reconstruct.synthetic import SceneConfig, make_scene

# 48 ALIKED keypoints per 320x240 view are too few to link most of the views (measured: 2 of
# 8 in the largest model); 96 are enough for all of them.
SPARSE = {"keypoints": {"max_keypoints": 48}, "orientation": {"enabled": False}}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(
        tmp_path_factory.mktemp("scene"), SceneConfig(width=320, height=240, arc_degrees=90)
    )


def test_images_left_out_are_extracted_denser_and_mapped_again(scene, tmp_path):
    off = run_pipeline(
        scene.image_dir,
        tmp_path / "off",
        load_config(overrides={**SPARSE, "rescue": {"enabled": False}}),
        device="cpu",
    )
    assert off.rescue is None and off.counts["registered_images"] < 8

    out = tmp_path / "on"
    summary = run_pipeline(scene.image_dir, out, load_config(overrides=SPARSE), device="cpu")
    r = summary.rescue
    assert r is not None and r["kept"] is True and r["max_keypoints"] == 96
    assert r["before"]["largest"] == off.counts["registered_images"]
    after = dict(r["after"])
    assert after.pop("explained") > 0  # verified inlier matches the model explains
    assert after == {"largest": 8, "models": 1, "consistent": True}
    assert json.loads((out / "rescue" / "rescue.json").read_text()) == r
    assert "Rescue: " in summary.format() and "kept" in summary.format()
    assert summary.timings["rescue"] > 0
    # the exported model is the rescued one, and it is right
    gt = read_cameras_txt(scene.gt_path)
    models = read_all_poses(out / "sparse")
    assert len(models) == 1 and set(models[0]) == set(gt)
    errors = relative_pose_errors(gt, models)
    assert max(e.rotation_error_deg for e in errors) < 2.0
    assert summary.counts["registered_images"] == 8

    # rescue/features.h5: the left-out images dense, every other image's features unchanged,
    # so the run's matches of pairs between those images index them still
    weak = set(r["images"])
    with (
        FeaturesReader(out / "features.h5") as base,
        FeaturesReader(out / "rescue" / "features.h5") as combined,
    ):
        assert combined.names() == base.names()
        for name in base.names():
            if name in weak:
                assert combined.num_keypoints(name) > base.num_keypoints(name) == 48
            else:
                a, b = base.read_item(name), combined.read_item(name)
                assert a[1] == b[1] and a[0].keys() == b[0].keys()
                assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0])
    # only the pairs touching a left-out image were matched again
    again = {tuple(p) for p in read_pairs(out / "rescue" / "pairs.txt")}
    expected = {p for p in read_pairs(out / "pairs.txt") if weak & set(p)}
    assert again == expected and again
    with MatchesReader(out / "rescue" / "matches.h5") as m:
        assert set(m.pairs()) == again

    # a second run on the same folder resumes the rescue's files instead of refusing them
    stamp = (out / "rescue" / "matches.h5").stat().st_mtime_ns
    second = run_pipeline(scene.image_dir, out, load_config(overrides=SPARSE), device="cpu")
    assert second.counts["registered_images"] == 8
    if second.rescue and second.rescue["images"] == r["images"]:
        assert (out / "rescue" / "matches.h5").stat().st_mtime_ns == stamp


# A faint texture (2% contrast) at 96 keypoints per view: measured, 7 of 8 views in a model
# that explains 47% of its verified inlier matches, poses wrong (AUC@5 0.00); the same views
# with contrast enhancement: 8 of 8, explained 0.82, AUC@5 0.77.
# The rescue of left-out images is off, so that the contrast rescue alone is measured.
FAINT = {
    "keypoints": {"max_keypoints": 96},
    "orientation": {"enabled": False},
    "rescue": {"dense": False},
}


@pytest.fixture(scope="module")
def faint_scene(tmp_path_factory):
    return make_scene(
        tmp_path_factory.mktemp("faint"), SceneConfig(width=320, height=240, contrast=0.02)
    )


def test_a_failed_faint_scene_is_extracted_again_with_contrast_enhancement(faint_scene, tmp_path):
    gt = read_cameras_txt(faint_scene.gt_path)
    without = {**FAINT, "rescue": {"dense": False, "contrast": False}}
    off = run_pipeline(faint_scene.image_dir, tmp_path / "off", load_config(overrides=without))
    assert off.contrast_rescue is None and not (tmp_path / "off" / "rescue" / "contrast").exists()
    assert not off.counts["model_consistent"]  # flagged: the check sees the failure

    out = tmp_path / "on"
    summary = run_pipeline(faint_scene.image_dir, out, load_config(overrides=FAINT), device="cpu")
    r = summary.contrast_rescue
    assert r is not None and r["kept"] is True and r["keypoints_contrast"] == "clahe"
    assert r["num_images"] == 8 and r["before"]["consistent"] is False
    assert r["after"]["consistent"] is True and r["after"]["largest"] == 8
    assert json.loads((out / "rescue" / "contrast" / "contrast.json").read_text()) == r
    assert json.loads((out / "run.json").read_text())["contrast_rescue"] == r
    assert "Contrast rescue: all 8 images" in summary.format()
    # the features it made are an ordinary features file, made with the enhancement
    header = read_header(out / "rescue" / "contrast" / "features.h5", FEATURES_SCHEMA)
    assert header.config["contrast"] == "clahe"
    # the exported model is the rescued one, and it is right
    assert summary.counts["registered_images"] == 8 and summary.counts["model_consistent"]
    errors = relative_pose_errors(gt, read_all_poses(out / "sparse"))
    assert np.median([e.rotation_error_deg for e in errors]) < 2.0
    assert np.median([e.rotation_error_deg for e in relative_pose_errors(
        gt, read_all_poses(tmp_path / "off" / "sparse"))]) > 10.0  # fmt: skip

    # a second run on the same folder resumes the rescue's files instead of making them again
    files = [out / "rescue" / "contrast" / name for name in ("features.h5", "matches.h5")]
    stamps = [f.stat().st_mtime_ns for f in files]
    second = run_pipeline(faint_scene.image_dir, out, load_config(overrides=FAINT))
    assert second.contrast_rescue["kept"] and second.counts["registered_images"] == 8
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_when_mapping_builds_no_model_the_contrast_rescue_still_may(faint_scene, tmp_path):
    """At 48 keypoints per faint view the mapper builds no model at all (measured); the run
    does not stop there: the contrast rescue maps all 8 views."""
    sparse = {**FAINT, "keypoints": {"max_keypoints": 48}}
    without = {**sparse, "rescue": {"dense": False, "contrast": False}}
    with pytest.raises(MappingError, match="could not build any model"):
        run_pipeline(faint_scene.image_dir, tmp_path / "off", load_config(overrides=without))
    out = tmp_path / "on"
    summary = run_pipeline(faint_scene.image_dir, out, load_config(overrides=sparse))
    r = summary.contrast_rescue
    assert r["before"] == {"largest": 0, "models": 0, "consistent": False, "explained": 0.0}
    assert r["kept"] is True and r["after"]["largest"] == 8
    assert summary.counts["registered_images"] == 8 and (out / "model").is_dir()
    errors = relative_pose_errors(
        read_cameras_txt(faint_scene.gt_path), read_all_poses(out / "sparse")
    )
    assert np.median([e.rotation_error_deg for e in errors]) < 5.0


def test_nothing_to_rescue_when_every_image_registers(tmp_path, synthetic_scene):
    config = load_config(overrides={"keypoints": {"max_keypoints": 512, "resize": 640}})
    summary = run_pipeline(synthetic_scene.image_dir, tmp_path, config, device="cpu")
    assert summary.counts["registered_images"] == 8
    assert summary.rescue is None and not (tmp_path / "rescue").exists()
    assert summary.contrast_rescue is None  # a sound, whole model: no second extraction
    assert "rescue" not in summary.timings  # timed only when it runs


def test_config_validation():
    with pytest.raises(ValueError, match="keypoints_factor"):
        RescueConfig(keypoints_factor=1)
