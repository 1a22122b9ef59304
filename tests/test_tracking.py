"""Point tracking: flow accuracy against known projections, lost-marking, DINOv2 plumbing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from reconstruct.errors import InputError
from reconstruct.synthetic import (
    VideoSceneConfig,
    make_video,
    plane_index_map,
    point_map,
    project,
)
from reconstruct.tracking import CSV_COLUMNS, TrackingConfig, parse_point, read_csv, track_points


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("track") / "scene.mp4", VideoSceneConfig())


def _interior_points(video, count: int = 40, margin: int = 12):
    """Frame-0 corners whose 25 x 25 neighbourhood lies on one plane in every frame (no
    occlusion edges), as COLMAP pixel centres, with their known 3D points."""
    scene = VideoSceneConfig().scene
    w, h = scene.width, scene.height
    capture = cv2.VideoCapture(str(video.path))
    ok, frame = capture.read()
    capture.release()
    assert ok
    corners = cv2.goodFeaturesToTrack(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), count, 0.02, 15)
    points = point_map(video.world.planes, video.cameras[0], w, h)
    maps = [plane_index_map(video.world.planes, cam, w, h) for cam in video.cameras[::3]]
    seeds, world = [], []
    for x, y in corners.reshape(-1, 2):
        j, i = int(round(x)), int(round(y))
        X = points[i, j]
        if not np.isfinite(X).all():
            continue
        single_plane = True
        for cam, index in zip(video.cameras[::3], maps, strict=True):
            u, v = np.round(project(cam, X)).astype(int)
            window = index[max(v - margin, 0) : v + margin + 1, max(u - margin, 0) : u + margin + 1]
            single_plane &= window.size > 0 and len(np.unique(window)) == 1 and window[0, 0] >= 0
        if single_plane:
            seeds.append((j + 0.5, i + 0.5))
            world.append(X)
    return seeds, np.array(world)


def test_flow_tracker_follows_the_known_projection(synthetic, tmp_path):
    seeds, world = _interior_points(synthetic)
    assert len(seeds) >= 10
    out = track_points(synthetic.path, seeds, tmp_path / "tracked.mp4", TrackingConfig())
    assert out == tmp_path / "tracked.mp4" and out.stat().st_size > 0
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(synthetic.cameras)
    capture.release()
    result = read_csv(out.with_suffix(".csv"))
    assert result.positions.shape == (len(synthetic.cameras), len(seeds), 2)
    truth = np.array([[project(cam, X) for X in world] for cam in synthetic.cameras])
    error = np.linalg.norm(result.positions - truth, axis=2)
    tracked = ~result.lost
    assert np.isnan(result.positions[result.lost]).all()  # lost points are not placed anywhere
    # measured (28 frames, 3 motion-blurred, mp4v): median 1.13 px, p90 3.1 px, max 5.7 px,
    # 91% of point-frames tracked; the error grows ~0.1 px per frame (template drift)
    assert tracked.mean() > 0.8
    assert np.median(error[tracked]) < 1.6
    assert np.percentile(error[tracked], 90) < 4.0
    assert error[tracked].max() < 8.0
    assert error[1][tracked[1]].max() < 0.5  # one frame in, before any drift


@pytest.mark.slow
def test_aliked_tracker_follows_the_known_projection(synthetic, tmp_path):
    from reconstruct.keypoints import build_extractor
    from reconstruct.matching import build_matcher

    seeds, world = _interior_points(synthetic)
    frames = 10  # frame 5 is motion-blurred; small images and few frames keep this seconds
    config = TrackingConfig(method="aliked", max_keypoints=512, max_frames=frames)
    out = track_points(synthetic.path, seeds, tmp_path / "aliked.mp4", config)
    result = read_csv(out.with_suffix(".csv"))
    assert result.positions.shape == (frames, len(seeds), 2)
    truth = np.array([[project(cam, X) for X in world] for cam in synthetic.cameras[:frames]])
    error = np.linalg.norm(result.positions - truth, axis=2)
    tracked = ~result.lost
    assert np.isnan(result.positions[result.lost]).all()
    assert (result.scores[1:][tracked[1:]] >= config.min_support).all()  # inlier support
    # measured (21 points, 512 keypoints, these 10 frames, an AMD EPYC without bfloat16):
    # 96% of point-frames tracked, median 0.44 px, p90 1.26 px, max 3.52 px (the worst point on
    # the motion-blurred frame 5, 8 inliers after 12: reported, not made its reference, 0.6 px
    # on frame 6), frame 1 max 0.90 px. Re-anchoring on every frame instead: max 7.92 px (the
    # blurred frame's error carried forward).
    # A point left where it was is ~3 px off per frame, so these bounds catch a tracker that
    # does not follow the motion.
    assert tracked.mean() > 0.85
    assert np.median(error[tracked]) < 1.0
    assert np.percentile(error[tracked], 90) < 3.0
    assert error[tracked].max() < 5.0
    assert error[1][tracked[1]].max() < 1.5
    # the models are built once per process: a second run builds nothing new
    misses = build_extractor.cache_info().misses, build_matcher.cache_info().misses
    track_points(synthetic.path, seeds[:2], tmp_path / "again.mp4", config)
    assert (build_extractor.cache_info().misses, build_matcher.cache_info().misses) == misses


@pytest.mark.parametrize("method", ["flow", pytest.param("aliked", marks=pytest.mark.slow)])
def test_points_are_lost_after_a_cut(synthetic, tmp_path, method):
    seeds, _ = _interior_points(synthetic)
    cut = tmp_path / "cut.mp4"
    writer = cv2.VideoWriter(str(cut), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    capture = cv2.VideoCapture(str(synthetic.path))
    for _ in range(5):
        writer.write(capture.read()[1])
    capture.release()
    rng = np.random.default_rng(0)
    for _ in range(8):  # a different "scene": noise
        writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.release()
    config = TrackingConfig(method=method, max_keypoints=512)
    if method == "aliked":  # 4 noise frames: each point retried max_gap=3 times, then dropped
        config = TrackingConfig(method=method, max_keypoints=512, max_frames=9)
    result = read_csv(track_points(cut, seeds, tmp_path / "t.mp4", config).with_suffix(".csv"))
    assert not result.lost[:4].all(axis=1).any()  # tracked before the cut (frame 4 is sharp)
    assert result.lost[5:].all()  # every point lost from the first noise frame on
    assert np.isnan(result.positions[5:]).all()


def test_csv_columns_and_rows(synthetic, tmp_path):
    out = track_points(synthetic.path, [(100.5, 120.5)], tmp_path / "t.mp4", TrackingConfig())
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert tuple(lines[0].split(",")) == CSV_COLUMNS
    assert len(lines) == 1 + len(synthetic.cameras)
    assert lines[1].split(",")[:5] == ["0", "0.000", "0", "100.500", "120.500"]


def test_bad_input(synthetic, tmp_path):
    with pytest.raises(InputError, match=r"point 1 \(320, 10\) is outside the first frame"):
        track_points(synthetic.path, [(5, 5), (320, 10)], tmp_path / "t.mp4", TrackingConfig())
    with pytest.raises(InputError, match="outside"):
        track_points(synthetic.path, [(-0.1, 10)], tmp_path / "t.mp4", TrackingConfig())
    with pytest.raises(InputError, match="no points"):
        track_points(synthetic.path, [], tmp_path / "t.mp4", TrackingConfig())
    text = tmp_path / "x.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError, match="as a video"):
        track_points(text, [(5, 5)], tmp_path / "t.mp4", TrackingConfig())
    assert not (tmp_path / "t.mp4").exists()
    assert parse_point("12.5,7") == (12.5, 7.0)
    for bad in ("12", "a,b", "1,2,3", "nan,1"):
        with pytest.raises(InputError, match="--point"):
            parse_point(bad)


# ----------------------------------------------------------------------------- DINOv2 (plumbing)


def _random_extractor():
    """A patch extractor on a tiny random-init ViT: exercises the code path, not accuracy."""
    from reconstruct.models import dinov2
    from reconstruct.models.patch_features import PatchExtractor, PatchFeaturesConfig

    model = dinov2.build_model("vits14", depth=2, embed_dim=64, num_heads=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    config = PatchFeaturesConfig(resolution=224, download=False)
    model = dinov2.DinoModel(model.eval(), "vits14", "cpu", "random-0")
    return PatchExtractor(config, model=model)


def _static_video(path, frame: np.ndarray, count: int):
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for _ in range(count):
        writer.write(frame)
    writer.release()
    return path


def test_dinov2_tracker_plumbing_with_a_random_network(synthetic, tmp_path):
    extractor = _random_extractor()
    capture = cv2.VideoCapture(str(synthetic.path))
    frame = capture.read()[1]
    capture.release()
    video = _static_video(tmp_path / "still.mp4", frame, 4)
    # 320 px wide at resolution 224: 16 x 12 patches of 20 px; (110, 70) is a patch centre
    exact = TrackingConfig(method="dinov2", resolution=224, search_radius=2, refine=False)
    out = track_points(video, [(110.0, 70.0)], tmp_path / "d.mp4", exact, extractor=extractor)
    result = read_csv(out.with_suffix(".csv"))
    assert not result.lost.any()
    assert np.abs(result.positions - [110.0, 70.0]).max() < 0.01  # same frame: same patch
    assert (result.scores > 0.97).all()
    config = TrackingConfig(method="dinov2", resolution=224, search_radius=2)
    out = track_points(video, [(110.0, 70.0)], tmp_path / "r.mp4", config, extractor=extractor)
    refined = read_csv(out.with_suffix(".csv")).positions
    assert np.abs(refined - [110.0, 70.0]).max() <= 10.0  # refinement stays within the patch
    strict = TrackingConfig(method="dinov2", resolution=224, min_similarity=1.01)
    out = track_points(video, [(110.0, 70.0)], tmp_path / "s.mp4", strict, extractor=extractor)
    result = read_csv(out.with_suffix(".csv"))
    assert not result.lost[0].any() and result.lost[1:].all()
    assert np.isnan(result.positions[1:]).all()
    # a moving video runs through (the random net gives no accuracy to assert)
    out = track_points(
        synthetic.path, [(160, 120)], tmp_path / "m.mp4", config, extractor=extractor
    )
    result = read_csv(out.with_suffix(".csv"))
    assert result.scores.shape == (len(synthetic.cameras), 1)
    assert (np.abs(result.scores) <= 1.0 + 1e-4).all()
