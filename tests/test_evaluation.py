"""Evaluation metrics on synthetic cameras whose answers are known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from reconstruct.errors import ConfigError, InputError
from reconstruct.evaluation import (
    align_sim3,
    evaluate,
    format_metrics,
    pose_auc,
    relative_pose_errors,
)
from reconstruct.gt import CameraPose


def make_cameras(n: int, seed: int = 0) -> dict[str, CameraPose]:
    """n cameras with random orientations and random, well spread (non-collinear) centres."""
    rng = np.random.default_rng(seed)
    rotations = Rotation.random(n, random_state=seed).as_matrix()
    centers = rng.normal(size=(n, 3)) * 5.0
    return {
        f"img{k:02d}.jpg": camera(f"img{k:02d}.jpg", rotations[k], centers[k]) for k in range(n)
    }


def camera(name: str, rotation: np.ndarray, center: np.ndarray) -> CameraPose:
    """A camera from its cam_from_world rotation and its centre in world coordinates."""
    return CameraPose(name, 500.0, 500.0, 320.0, 240.0, rotation, -rotation @ center)


def transform(cams: dict[str, CameraPose], scale, rot, trans) -> dict[str, CameraPose]:
    """The same cameras in the world frame X' = scale * rot @ X + trans.

    cam_from_world' = (R rot^T, scale * t - R rot^T trans): camera coordinates are scaled too.
    """
    out = {}
    for name, c in cams.items():
        r = c.rotation @ rot.T
        out[name] = CameraPose(name, c.fx, c.fy, c.cx, c.cy, r, scale * c.translation - r @ trans)
    return out


def random_sim3(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 0.37, Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 20


def names_of(cams: dict[str, CameraPose], indices) -> dict[str, CameraPose]:
    keys = sorted(cams)
    return {keys[k]: cams[keys[k]] for k in indices}


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
    return math.degrees(math.acos(np.clip(cos, -1.0, 1.0)))


def test_transform_helper_moves_centres_as_a_similarity():
    gt = make_cameras(4)
    s, r, t = random_sim3(1)
    moved = transform(gt, s, r, t)
    for name in gt:
        np.testing.assert_allclose(moved[name].center, s * r @ gt[name].center + t, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Relative pose metrics


def test_identical_poses_score_perfectly():
    gt = make_cameras(8)
    m = evaluate(gt, [gt])
    assert m.num_registered == 8 and m.registration_ratio == 1.0 and m.num_models == 1
    assert m.num_pairs == 28 and m.num_pairs_failed == 0 and m.num_pairs_zero_baseline == 0
    assert m.maa == 1.0
    assert m.pose_accuracy == (1.0,) * 10
    np.testing.assert_allclose(m.auc, [1.0, 1.0, 1.0], atol=1e-9)
    assert m.center_accuracy == (1.0, 1.0, 1.0) and m.center_maa == 1.0
    assert m.median_rotation_error_deg < 1e-9 and m.median_translation_error_deg < 1e-9


def test_rotation_perturbation_of_one_camera_gives_the_known_errors():
    gt = make_cameras(6, seed=3)
    names = sorted(gt)
    k = names[2]
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    delta = Rotation.from_rotvec(np.radians(2.5) * axis).as_matrix()
    est = dict(gt)
    # Rotate camera k by 2.5 degrees about its own centre (the centre does not move).
    est[k] = camera(k, delta @ gt[k].rotation, gt[k].center)

    errors = relative_pose_errors(gt, [est])
    assert [(e.name0, e.name1) for e in errors] == [
        (a, b) for i, a in enumerate(names) for b in names[i + 1 :]
    ]
    for e in errors:
        if k not in (e.name0, e.name1):
            assert e.rotation_error_deg < 1e-9 and e.translation_error_deg < 1e-9
            continue
        # R_rel_est^T R_rel_gt is delta (or a conjugate of it): exactly 2.5 degrees.
        assert e.rotation_error_deg == pytest.approx(2.5, abs=1e-6)
        if e.name0 == k:
            # t_rel = R1 (c0 - c1) does not involve camera 0's rotation.
            assert e.translation_error_deg < 1e-6
        else:
            # t_rel = R_k (c0 - c_k), rotated by delta in the estimate.
            w = gt[k].rotation @ (gt[e.name0].center - gt[k].center)
            expected = angle_deg(w, delta @ w)
            assert 0.1 < expected <= 2.5
            assert e.translation_error_deg == pytest.approx(expected, abs=1e-6)
        assert e.error_deg == pytest.approx(2.5, abs=1e-6)

    m = evaluate(gt, [est])
    # 5 of the 15 pairs have error 2.5: they fail the 1 and 2 degree thresholds only.
    assert m.pose_accuracy[:2] == pytest.approx((10 / 15, 10 / 15))
    assert m.pose_accuracy[2:] == (1.0,) * 8
    assert m.maa == pytest.approx((2 * 10 / 15 + 8) / 10)
    # AUC@5 by hand: the curve rises linearly from (0, 10/15) to (2.5, 11/15), jumps to 1 and
    # stays flat: area = 2.5 * (10/15 + 11/15) / 2 + 2.5 * 1 = 4.25, normalised by 5.
    assert m.auc[0] == pytest.approx(4.25 / 5, abs=1e-6)
    assert m.center_accuracy == (1.0, 1.0, 1.0)


def test_an_error_equal_to_a_threshold_does_not_pass_it():
    # Integer matrices keep the arithmetic exact: camera a turns by exactly 90 degrees.
    quarter_turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    gt = {"a": camera("a", np.eye(3), np.zeros(3)), "b": camera("b", np.eye(3), np.ones(3))}
    est = {"a": camera("a", quarter_turn, np.zeros(3)), "b": gt["b"]}
    (pair,) = relative_pose_errors(gt, [est])
    assert pair.error_deg == 90.0
    m = evaluate(gt, [est], thresholds_deg=(90, 91), auc_thresholds_deg=(90,))
    assert m.pose_accuracy == (0.0, 1.0)
    assert m.auc == (0.0,)


def test_translation_error_is_the_change_of_baseline_direction():
    gt = make_cameras(5, seed=4)
    names = sorted(gt)
    first = names[0]
    moved_center = gt[first].center + np.array([1.0, -2.0, 0.5])
    est = dict(gt)
    est[first] = camera(first, gt[first].rotation, moved_center)
    for e in relative_pose_errors(gt, [est]):
        assert e.rotation_error_deg < 1e-9
        if e.name0 == first:
            # t_rel = R1 (c0 - c1): its change of direction is that of the world baseline.
            c1 = gt[e.name1].center
            expected = angle_deg(gt[first].center - c1, moved_center - c1)
            assert expected > 1.0
            assert e.translation_error_deg == pytest.approx(expected, abs=1e-6)
        else:
            assert e.translation_error_deg < 1e-9


def test_reversed_baseline_scores_180_degrees():
    gt = make_cameras(4, seed=5)
    a, b = sorted(gt)[:2]
    est = dict(gt)
    # Swap the centres of a and b, keep their rotations: the baseline a-b is reversed.
    est[a] = camera(a, gt[a].rotation, gt[b].center)
    est[b] = camera(b, gt[b].rotation, gt[a].center)
    pair = next(e for e in relative_pose_errors(gt, [est]) if (e.name0, e.name1) == (a, b))
    assert pair.rotation_error_deg < 1e-9
    assert pair.translation_error_deg == pytest.approx(180.0, abs=1e-6)


def test_similarity_transform_of_the_model_does_not_change_the_scores():
    gt = make_cameras(12, seed=6)
    rng = np.random.default_rng(7)
    noisy = {}
    for name, c in gt.items():
        r = Rotation.from_rotvec(np.radians(rng.uniform(0, 4)) * _unit(rng)).as_matrix()
        center = c.center + rng.normal(size=3) * 0.1
        noisy[name] = camera(name, r @ c.rotation, center)
    reference = evaluate(gt, [noisy])
    # The test means something only if the scores are neither perfect nor zero.
    assert 0.2 < reference.maa < 0.9
    assert 0.0 < reference.center_accuracy[0] < 1.0 and reference.center_accuracy[2] > 0.5

    moved = evaluate(gt, [transform(noisy, *random_sim3(8))])
    assert moved.pose_accuracy == pytest.approx(reference.pose_accuracy, abs=1e-12)
    assert moved.maa == pytest.approx(reference.maa, abs=1e-12)
    assert moved.auc == pytest.approx(reference.auc, abs=1e-9)
    assert moved.center_accuracy == reference.center_accuracy

    # And the exact poses in another frame score perfectly (a world_from_cam mix-up would not).
    exact = evaluate(gt, [transform(gt, *random_sim3(9))])
    assert exact.maa == 1.0 and exact.center_maa == 1.0
    np.testing.assert_allclose(exact.auc, 1.0, atol=1e-9)


def test_missing_images_lower_registration_and_fail_their_pairs():
    gt = make_cameras(5, seed=10)
    est = names_of(gt, [0, 1, 2, 3])  # the last image is not registered
    m = evaluate(gt, [est])
    assert m.num_registered == 4 and m.registration_ratio == 0.8
    # 10 pairs, the 4 pairs with the missing image fail: 6/10 correct at every threshold.
    assert m.num_pairs == 10 and m.num_pairs_failed == 4
    assert m.pose_accuracy == (0.6,) * 10 and m.maa == pytest.approx(0.6)
    np.testing.assert_allclose(m.auc, 0.6, atol=1e-9)
    assert m.center_accuracy == (0.8, 0.8, 0.8)
    missing = sorted(gt)[4]
    for e in relative_pose_errors(gt, [est]):
        failed = missing in (e.name0, e.name1)
        assert math.isinf(e.error_deg) == failed
        assert math.isinf(e.rotation_error_deg) == failed


def test_pairs_across_disconnected_models_fail():
    gt = make_cameras(6, seed=11)
    model_a = names_of(gt, [0, 1, 2])
    model_b = transform(names_of(gt, [3, 4, 5]), *random_sim3(12))  # its own frame and scale
    m = evaluate(gt, [model_a, model_b])
    assert m.num_models == 2 and m.num_registered == 6
    # 15 pairs: 3 + 3 within the models are exact, the 9 across them fail.
    assert m.num_pairs_failed == 9
    assert m.maa == pytest.approx(6 / 15)
    # Each model is aligned on its own, so every centre is right.
    assert m.center_accuracy == (1.0, 1.0, 1.0)
    assert [a.num_evaluated for a in m.models] == [3, 3]
    assert all(a.aligned for a in m.models)


def test_image_in_several_models_is_evaluated_in_the_largest():
    gt = make_cameras(5, seed=13)
    names = sorted(gt)
    large = names_of(gt, [0, 1, 2, 3])
    small = names_of(gt, [3, 4])
    wrong = Rotation.from_rotvec([0.0, 0.0, 1.0]).as_matrix()
    small[names[3]] = camera(names[3], wrong @ gt[names[3]].rotation, gt[names[3]].center)
    m = evaluate(gt, [small, large])  # order does not matter, size does
    assert m.num_registered == 5
    # Pairs among images 0..3 are exact (6 pairs); the 4 pairs with image 4 cross models.
    assert m.num_pairs_failed == 4 and m.maa == pytest.approx(0.6)
    assert [a.num_evaluated for a in m.models] == [1, 4]


def test_zero_baseline_pairs_are_scored_on_rotation_only():
    gt = make_cameras(4, seed=14)
    a, b = sorted(gt)[:2]
    gt[b] = camera(b, gt[b].rotation, gt[a].center)  # a and b share their centre
    est = dict(gt)
    delta = Rotation.from_rotvec(np.radians(1.5) * np.array([0.0, 1.0, 0.0])).as_matrix()
    # Rotating b also changes the direction of its pairs with the other cameras.
    est[b] = camera(b, delta @ gt[b].rotation, gt[b].center)
    pair = next(e for e in relative_pose_errors(gt, [est]) if (e.name0, e.name1) == (a, b))
    assert math.isnan(pair.translation_error_deg)
    assert pair.error_deg == pytest.approx(1.5, abs=1e-6)
    m = evaluate(gt, [est])
    assert m.num_pairs_zero_baseline == 1 and m.num_pairs_failed == 0


def test_estimated_zero_baseline_where_the_gt_has_one_scores_180_degrees():
    gt = make_cameras(4, seed=15)
    a, b = sorted(gt)[:2]
    est = dict(gt)
    est[b] = camera(b, gt[b].rotation, gt[a].center)
    pair = next(e for e in relative_pose_errors(gt, [est]) if (e.name0, e.name1) == (a, b))
    assert pair.translation_error_deg == 180.0 and pair.error_deg == 180.0


# --------------------------------------------------------------------------------------------
# Degenerate input


def test_model_with_fewer_than_three_cameras_cannot_be_aligned():
    gt = make_cameras(5, seed=16)
    m = evaluate(gt, [names_of(gt, [0, 1])])  # no exception
    assert m.num_registered == 2
    assert m.models[0].aligned is False and m.models[0].num_centers_correct == (0, 0, 0)
    assert m.center_accuracy == (0.0, 0.0, 0.0) and m.center_maa == 0.0
    # The one registered pair is still exact: 1 of 10 pairs.
    assert m.maa == pytest.approx(0.1) and m.num_pairs_failed == 9


def test_collinear_or_identical_centres_cannot_be_aligned():
    gt = make_cameras(5, seed=17)
    names = sorted(gt)
    rotations = [gt[n].rotation for n in names]
    line = {
        n: camera(n, r, np.array([k, 2 * k, 0.5]))
        for k, (n, r) in enumerate(zip(names, rotations, strict=False))
    }
    m = evaluate(gt, [line])  # estimated centres collinear
    assert m.models[0].aligned is False and m.center_maa == 0.0
    same = {n: camera(n, gt[n].rotation, np.zeros(3)) for n in names}
    m = evaluate(gt, [same])  # estimated centres identical: every baseline is lost
    assert m.models[0].aligned is False and m.center_maa == 0.0
    assert m.maa == 0.0
    gt_line = {
        n: camera(n, r, np.array([k, 0.0, 0.0]))
        for k, (n, r) in enumerate(zip(names, rotations, strict=False))
    }
    m = evaluate(gt_line, [gt_line])  # GT centres collinear: pair metrics are still fine
    assert m.models[0].aligned is False and m.center_maa == 0.0 and m.maa == 1.0


def test_too_small_ground_truth_or_bad_thresholds_are_rejected():
    gt = make_cameras(3)
    with pytest.raises(InputError, match="at least 2"):
        evaluate(names_of(gt, [0]), [gt])
    with pytest.raises(ConfigError, match="thresholds_deg"):
        evaluate(gt, [gt], thresholds_deg=(0, 1))
    bad = dict(gt)
    name = min(gt)
    bad[name] = CameraPose(name, 1, 1, 0, 0, np.eye(3) * 2, np.zeros(3))
    with pytest.raises(InputError, match=name):
        evaluate(gt, [bad])


def test_no_models_at_all():
    gt = make_cameras(4)
    m = evaluate(gt, [])
    assert m.num_registered == 0 and m.num_models == 0 and m.maa == 0.0
    assert m.auc == (0.0, 0.0, 0.0) and m.center_maa == 0.0
    assert m.median_rotation_error_deg is None


# --------------------------------------------------------------------------------------------
# Sim(3) alignment


@pytest.mark.parametrize("n", [3, 10, 40])  # 40 points: random samples instead of all triplets
def test_align_sim3_recovers_a_known_similarity(n):
    rng = np.random.default_rng(n)
    src = rng.normal(size=(n, 3))
    s, r, t = random_sim3(n)
    dst = s * src @ r.T + t
    scale, rot, trans = align_sim3(src, dst, inlier_threshold=1e-3)
    assert scale == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(rot, r, atol=1e-10)
    np.testing.assert_allclose(trans, t, atol=1e-9)


@pytest.mark.parametrize("n", [15, 60])
def test_align_sim3_is_robust_to_30_percent_outliers(n):
    rng = np.random.default_rng(100 + n)
    src = rng.normal(size=(n, 3))
    s, r, t = 2.5, Rotation.random(random_state=n).as_matrix(), np.array([1.0, -4.0, 2.0])
    dst = s * src @ r.T + t
    outliers = rng.choice(n, size=int(0.3 * n), replace=False)
    dst[outliers] += rng.normal(size=(len(outliers), 3)) * 3.0 + 2.0
    scale, rot, trans = align_sim3(src, dst, inlier_threshold=0.05)
    assert scale == pytest.approx(s, rel=1e-9)
    np.testing.assert_allclose(rot, r, atol=1e-9)
    np.testing.assert_allclose(trans, t, atol=1e-8)
    # A plain least-squares fit is visibly wrong on the same data.
    naive_scale, _, _ = align_sim3(src, dst, inlier_threshold=1e6)
    assert abs(naive_scale - s) > 0.01


def test_align_sim3_refits_on_the_inliers():
    rng = np.random.default_rng(30)
    src = rng.normal(size=(30, 3))
    s, r, t = random_sim3(31)
    dst = s * src @ r.T + t + rng.normal(size=(30, 3)) * 0.005
    dst[:8] += 5.0  # outliers
    robust = align_sim3(src, dst, inlier_threshold=0.1)
    # The answer is the least-squares fit of the 22 inliers, not that of a minimal sample.
    least_squares = align_sim3(src[8:], dst[8:], inlier_threshold=1e6)
    assert robust[0] == pytest.approx(least_squares[0], abs=1e-12)
    np.testing.assert_allclose(robust[1], least_squares[1], atol=1e-12)
    np.testing.assert_allclose(robust[2], least_squares[2], atol=1e-12)
    assert abs(robust[0] - s) < 0.01


def test_align_sim3_returns_a_rotation_for_mirrored_points():
    rng = np.random.default_rng(32)
    src = rng.normal(size=(12, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a reflection: no similarity fits exactly
    _, rot, _ = align_sim3(src, dst, inlier_threshold=0.5)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)


def test_align_sim3_rejects_degenerate_points():
    pts = np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]])
    with pytest.raises(InputError, match="collinear"):
        align_sim3(pts, pts, inlier_threshold=0.1)
    with pytest.raises(InputError):
        align_sim3(pts[:2] + [[0, 1, 0]], pts[:2], inlier_threshold=0.1)
    with pytest.raises(InputError, match="shapes"):
        align_sim3(np.zeros((4, 3)), np.zeros((5, 3)), inlier_threshold=0.1)


# --------------------------------------------------------------------------------------------
# AUC and output


def test_pose_auc_on_a_hand_made_list():
    errors = [3.0, math.inf, 1.0, 6.0]
    # Sorted: 1, 3, 6, inf with recall 1/4, 2/4, 3/4, 1, starting from (0, 0).
    # Up to 5: trapezoids (0..1) 0.125 + (1..3) 0.75 + flat 0.5 over (3..5) 1.0 = 1.875.
    # Up to 10: 0.125 + 0.75 + (3..6) 3 * 0.625 + flat 0.75 over (6..10) 3.0 = 5.75.
    # Up to 0.5: only (0, 0) lies below: 0.
    assert pose_auc(errors, [5, 10, 0.5]) == pytest.approx([1.875 / 5, 5.75 / 10, 0.0])
    assert pose_auc([], [5]) == [0.0]
    assert pose_auc([math.nan, 0.0], [1]) == pytest.approx([0.5])  # NaN counts as a failure


def test_to_dict_is_json_and_format_is_readable():
    gt = make_cameras(6, seed=20)
    stats = {"num_points": np.int64(1234), "mean_track_length": np.float32(4.5), "x": math.inf}
    m = evaluate(gt, [names_of(gt, [0, 1, 2, 3, 4])], model_statistics=stats)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["registration_ratio"] == pytest.approx(5 / 6)
    assert set(d["pose_accuracy"]) == {str(k) for k in range(1, 11)}
    assert set(d["auc"]) == {"5", "10", "20"} and set(d["center_accuracy"]) == {
        "0.01",
        "0.02",
        "0.05",
    }
    assert d["model_statistics"] == {"num_points": 1234, "mean_track_length": 4.5, "x": None}
    assert d["models"][0]["num_evaluated"] == 5 and d["models"][0]["aligned"] is True
    text = format_metrics(m)
    assert "registered 5/6" in text and "mAA" in text and "num_points 1234" in text
    with pytest.raises(InputError, match="bad"):
        evaluate(gt, [gt], model_statistics={"bad": object()})


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------
# Per-image errors


def perturbed(cam: CameraPose, angle_deg: float, axis: np.ndarray, shift: np.ndarray):
    """`cam` turned by `angle_deg` about `axis` (in camera coordinates) and moved by `shift`."""
    turn = Rotation.from_rotvec(np.radians(angle_deg) * axis).as_matrix()
    return camera(cam.name, turn @ cam.rotation, cam.center + shift)


def test_per_image_errors_after_alignment_put_the_perturbed_camera_first():
    gt = make_cameras(8, seed=30)
    est = dict(gt)
    # In GT coordinates: img03 turned by 7 degrees and moved by 3 units, then the whole model is
    # put in another frame. The alignment (from the other 7) undoes the frame exactly.
    axis, shift = _unit(np.random.default_rng(1)), np.array([0.0, 1.8, -2.4])  # |shift| = 3
    est["img03.jpg"] = perturbed(gt["img03.jpg"], 7.0, axis, shift)
    s, r, t = random_sim3(31)
    m = evaluate(gt, [transform(est, s, r, t)])
    assert [e.name for e in m.images][0] == "img03.jpg"
    worst = m.images[0]
    assert worst.status == "aligned" and worst.model == 0
    assert worst.rotation_error_deg == pytest.approx(7.0, abs=1e-9)
    assert worst.center_error == pytest.approx(3.0, abs=1e-9)
    assert worst.center_error_relative == pytest.approx(3.0 / m.scene_extent, abs=1e-12)
    for e in m.images[1:]:
        assert e.rotation_error_deg < 1e-9 and e.center_error < 1e-9
    assert sorted(e.name for e in m.images) == sorted(gt)


def test_per_image_rows_are_sorted_by_the_larger_relative_error():
    gt = make_cameras(10, seed=32)
    est = dict(gt)
    still = np.zeros(3)
    est["img01.jpg"] = perturbed(gt["img01.jpg"], 2.0, np.array([1.0, 0, 0]), still)
    est["img02.jpg"] = perturbed(gt["img02.jpg"], 4.0, np.array([0, 1.0, 0]), still)
    est["img04.jpg"] = perturbed(gt["img04.jpg"], 1.0, np.array([0, 0, 1.0]), np.r_[3.0, 0, 0])
    m = evaluate(gt, [est])
    # Relative to the loosest thresholds: img04's 3-unit shift is several times 5 % of the
    # extent; 4 degrees is 0.4 and 2 degrees 0.2 of 10 degrees; the rest are exact.
    assert 2 * 0.05 * m.scene_extent < 3.0
    assert [e.name for e in m.images[:3]] == ["img04.jpg", "img02.jpg", "img01.jpg"]
    assert m.images[0].center_error == pytest.approx(3.0, abs=1e-9)
    assert m.images[0].rotation_error_deg == pytest.approx(1.0, abs=1e-9)
    assert m.images[1].rotation_error_deg == pytest.approx(4.0, abs=1e-9)
    assert m.images[2].rotation_error_deg == pytest.approx(2.0, abs=1e-9)
    assert m.images[3].rotation_error_deg < 1e-9


def test_unregistered_and_unaligned_images_are_listed_as_such_in_text_and_json():
    gt = make_cameras(8, seed=33)
    big, small = names_of(gt, [0, 1, 2, 3, 4]), names_of(gt, [5, 6])  # img07 is in no model
    m = evaluate(gt, [big, small])
    status = {e.name: e.status for e in m.images}
    assert status["img07.jpg"] == "not registered"
    assert status["img05.jpg"] == status["img06.jpg"] == "not aligned"  # two cameras only
    assert [e.name for e in m.images[:3]] == ["img07.jpg", "img05.jpg", "img06.jpg"]
    assert {e.model for e in m.images[1:3]} == {1}
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    rows = {r["name"]: r for r in d["images"]}
    assert [r["name"] for r in d["images"]] == [e.name for e in m.images]
    assert rows["img07.jpg"] == {
        "name": "img07.jpg",
        "status": "not registered",
        "model": None,
        "rotation_error_deg": None,
        "center_error": None,
        "center_error_relative": None,
    }
    assert rows["img00.jpg"]["rotation_error_deg"] == pytest.approx(0.0, abs=1e-9)
    text = format_metrics(m)
    assert "per-image errors" in text
    assert "img07.jpg  not registered" in text and "not aligned (model 1)" in text
    short = format_metrics(m, max_images=2)
    assert "img06.jpg" not in short and "6 more images" in short
