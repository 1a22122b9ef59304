"""Keypoint refinement before mapping: tracks and anchors, ECC patch alignment, the stage's
files and its use by mapping."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from reconstruct import paths
from reconstruct.mapping import MappingConfig, run_mapping
from reconstruct.refinement import (
    REFINED,
    RefinementConfig,
    align_patch,
    anchor_clusters,
    refine_keypoints,
)
from reconstruct.storage import (
    MATCHES_SCHEMA,
    FeaturesReader,
    MatchesReader,
    ResultWriter,
    read_header,
)
from reconstruct.synthetic import SceneConfig, TrueCorrespondences, build_world, make_cameras


def test_anchor_clusters_hand_made():
    # images of 3, 2 and 2 keypoints: ids 0-2, 3-4 and 5-6. Keypoints 0, 3, 6 match each
    # other; 1-4-5-2 is a chain through a near miss: it holds keypoints 1 and 2 of image 0
    edges = np.array([[0, 3], [0, 6], [3, 6], [1, 4], [4, 5], [5, 2]])
    cluster = anchor_clusters([3, 2, 2], edges)
    # 0 (two matches, lowest id) takes 3 and 6; 4 takes 1 and 5; 2's only match is taken
    assert cluster.tolist() == [0, 4, -1, 0, 4, 4, 0]
    assert anchor_clusters([2, 2], np.zeros((0, 2), np.int64)).tolist() == [-1] * 4


def _texture(size: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(128, 60, (size, size)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0), 0, 255).astype(np.uint8)


def test_align_patch_recovers_a_known_affine_to_hundredths_of_a_pixel():
    image_a = _texture()
    # image_b(A x) = image_a(x): rotated 8 degrees, scaled 1.1, moved by a sub-pixel amount
    affine = cv2.getRotationMatrix2D((80, 80), 8, 1.1)
    affine[:, 2] += (0.37, -0.61)
    image_b = cv2.warpAffine(image_a, affine, (160, 160), flags=cv2.INTER_CUBIC)
    anchor = np.array([79.3, 81.6])  # pixel-centre indices in image_a
    w = 10
    x0, y0 = int(round(anchor[0])) - w, int(round(anchor[1])) - w
    template = image_a[y0 : y0 + 2 * w + 1, x0 : x0 + 2 * w + 1].astype(np.float32)
    point = anchor - (x0, y0)
    truth = affine[:, :2] @ anchor + affine[:, 2]
    # start 1.2 px off, with a rougher linear map: as a neighbouring keypoint would put it
    start_linear = cv2.getRotationMatrix2D((0, 0), 6, 1.05)[:, :2]
    guess = truth + (1.2, -0.8)
    start = np.hstack([start_linear, (guess - start_linear @ point)[:, None]])

    found, outcome = align_patch(template, point, image_b, start, 2.5, 0.7)
    assert outcome == "refined"
    assert np.abs(found - 0.5 - truth).max() < 0.03  # COLMAP convention: +0.5

    assert align_patch(template, point, image_b, start, 0.5, 0.7) == (None, "far")
    flat = np.full_like(image_b, 100)
    assert align_patch(template, point, flat, start, 2.5, 0.7)[0] is None


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="window"):
        RefinementConfig(window=1)
    with pytest.raises(ValueError, match="min_correlation"):
        RefinementConfig(min_correlation=2)


@pytest.fixture(scope="module")
def refined(staged_run, tmp_path_factory):
    """refine_keypoints on the staged run's features and matches: (run folder, scene,
    output folder, features, matches, report)."""
    out, scene = staged_run
    dst = tmp_path_factory.mktemp("refined")
    features, matches, report = refine_keypoints(
        scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, dst
    )
    return out, scene, dst, features, matches, report


def _errors(truth, features, matches) -> np.ndarray:
    errs = []
    with FeaturesReader(features) as f, MatchesReader(matches) as m:
        for a, b in m.pairs():
            idx, _ = m.read(a, b)
            xb = f.read(b).keypoints[idx[:, 1]]
            moved = truth.transfer(a, b, f.read(a).keypoints[idx[:, 0]])
            err = np.linalg.norm(xb - moved, axis=1)
            errs.append(err[np.isfinite(err)])
    return np.concatenate(errs)


def test_refined_matches_are_closer_to_the_truth(refined):
    out, scene, _, features, matches, report = refined
    config = SceneConfig()
    truth = TrueCorrespondences(
        build_world(config).planes, make_cameras(config), config.width, config.height
    )
    before = _errors(truth, out / paths.FEATURES, out / paths.MATCHES)
    after = _errors(truth, features, matches)
    assert report["keypoints"]["refined"] > 0.3 * report["matches"] / 2
    assert np.median(after) < 0.5 * np.median(before)
    assert np.median(after) < 0.2
    assert np.mean(after > 2) < np.mean(before > 2)


def test_refined_files_keep_everything_but_the_positions(refined):
    out, _, dst, features, matches, report = refined
    assert features == dst / REFINED / paths.FEATURES
    with FeaturesReader(out / paths.FEATURES) as f0, FeaturesReader(features) as f1:
        assert f0.names() == f1.names()
        moved = 0
        for n in f0.names():
            a, b = f0.read(n), f1.read(n)
            np.testing.assert_array_equal(a.descriptors, b.descriptors)
            assert a.image_size == b.image_size
            shift = np.linalg.norm(a.keypoints - b.keypoints, axis=1)
            assert shift.max() <= RefinementConfig().max_shift + 1e-3  # extracted at full size
            moved += int((shift > 0).sum())
    assert moved == report["keypoints"]["refined"]
    kept = 0
    with MatchesReader(out / paths.MATCHES) as m0, MatchesReader(matches) as m1:
        assert m0.pairs() == m1.pairs()
        for a, b in m0.pairs():
            old = {tuple(r) for r in m0.read(a, b)[0].tolist()}
            new = m1.read(a, b)[0]
            assert new.dtype == np.uint32
            assert {tuple(r) for r in new.tolist()} <= old
            kept += len(new)
    assert kept == report["matches_kept"] < report["matches"]
    saved = json.loads((dst / REFINED / "refined.json").read_text())
    assert saved == report


def test_refinement_reuses_its_files_and_remakes_them_for_other_settings(refined):
    out, scene, dst, features, _, report = refined
    stamp = features.stat().st_mtime_ns
    again = refine_keypoints(scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, dst)
    assert again[2] == report and features.stat().st_mtime_ns == stamp
    other = RefinementConfig(keep_unrefined=True)
    _, matches, changed = refine_keypoints(
        scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, dst, other
    )
    assert changed["digest"] != report["digest"]
    assert changed["matches_kept"] == changed["matches"] == report["matches"]
    # back to the defaults: made again, the same as the first time
    _, _, back = refine_keypoints(scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, dst)
    assert {k: v for k, v in back.items() if k != "seconds"} == {
        k: v for k, v in report.items() if k != "seconds"
    }


def test_mapping_records_the_refinement_and_falls_back_when_it_leaves_nothing(staged_run, tmp_path):
    out, scene = staged_run
    sparse = run_mapping(
        scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, tmp_path / "a",
        MappingConfig(), pairs_path=out / paths.PAIRS,
    )  # fmt: skip
    summary = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    assert summary["features"].endswith(f"{REFINED}/{paths.FEATURES}")
    assert summary["keypoint_refinement"]["keypoints"]["refined"] > 0
    assert "unrefined" not in summary["keypoint_refinement"]  # mapped whole: no second run

    # a correlation no patch reaches: nothing refined, no match kept, the unrefined files map
    strict = dataclasses.replace(MappingConfig().refine, min_correlation=1.0)
    sparse = run_mapping(
        scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, tmp_path / "b",
        MappingConfig(refine=strict), pairs_path=out / paths.PAIRS,
    )  # fmt: skip
    summary = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    assert summary["keypoint_refinement"]["matches_kept"] == 0
    assert summary["keypoint_refinement"]["unrefined"]["kept"] == "unrefined"
    assert summary["features"] == str((out / paths.FEATURES).resolve())
    assert summary["models"][0]["registered"] == 8


def test_mapping_without_refinement_maps_the_files_as_they_are(staged_run, tmp_path):
    out, scene = staged_run
    off = MappingConfig(refine=RefinementConfig(enabled=False))
    sparse = run_mapping(
        scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, tmp_path, off,
        pairs_path=out / paths.PAIRS,
    )  # fmt: skip
    summary = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    assert summary["keypoint_refinement"] is None
    assert not (tmp_path / REFINED).exists()


def test_refinement_is_made_again_when_the_matches_change(staged_run, tmp_path):
    out, scene = staged_run
    first = refine_keypoints(scene.image_dir, out / paths.FEATURES, out / paths.MATCHES, tmp_path)
    # the same settings and features, but the first pair has lost half its matches (as a
    # matching stage re-run on a changed image would leave it)
    header = read_header(out / paths.MATCHES, MATCHES_SCHEMA)
    fewer = tmp_path / "fewer.h5"
    with MatchesReader(out / paths.MATCHES) as m, ResultWriter(fewer, header) as w:
        for i, (a, b) in enumerate(m.pairs()):
            idx, scores = m.read(a, b)
            keep = slice(None) if i else slice(0, len(idx) // 2)
            w.add((a, b), {"matches": idx[keep], "scores": scores[keep]}, m.attrs(a, b))
    second = refine_keypoints(scene.image_dir, out / paths.FEATURES, fewer, tmp_path)
    assert second[2]["digest"] != first[2]["digest"]
    assert second[2]["matches"] < first[2]["matches"]
