"""Each picture is a non-empty PNG of the expected size (headless)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from reconstruct.errors import InputError
from reconstruct.gt import CameraPose
from reconstruct.models import dinov2
from reconstruct.models.patch_features import PatchFeaturesConfig
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import load_config
from reconstruct.viz import (
    choose_pair,
    draw_matches,
    draw_model,
    draw_pca,
    find_model_dir,
    fundamental_inliers,
    model_view,
    render_matches,
    render_model,
)

NAMES = ["view_000.jpg", "view_001.jpg", "view_002.jpg", "view_003.jpg"]


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, which must be non-empty and decodable."""
    assert path.is_file() and path.stat().st_size > 1000
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image.shape[1], image.shape[0]


@pytest.fixture(scope="module")
def sift_run(synthetic_scene, tmp_path_factory):
    """A SIFT run on four views: features.h5, matches.h5, sparse/ and model/."""
    root = tmp_path_factory.mktemp("viz")
    images = root / "images"
    images.mkdir()
    for name in NAMES:
        shutil.copy(synthetic_scene.image_dir / name, images / name)
    config = load_config(
        overrides={
            "keypoints": {"extractor": "sift", "max_keypoints": 1024},
            "matching": {"matcher": "mnn"},
        }
    )
    run_pipeline(images, root / "out", config, device="cpu")
    return images, root / "out"


def test_draw_matches_png_size_and_default_name(sift_run, tmp_path):
    images, out = sift_run
    path = draw_matches(images, out, "view_001.jpg", "view_000.jpg", tmp_path / "m.png")
    assert png_size(path) == (2 * 640, 480 + 32)
    # No image folder given: the one recorded in run.json.
    small = draw_matches(None, out, "view_000.jpg", "view_002.jpg", max_lines=10, height=240)
    assert small == out / "viz" / "matches_view_000.jpg_view_002.jpg.png"
    assert png_size(small) == (2 * 320, 240 + 32)


def test_draw_matches_says_what_is_missing(sift_run, tmp_path):
    images, out = sift_run
    with pytest.raises(InputError, match="no features"):
        draw_matches(images, out, "view_000.jpg", "nope.jpg", tmp_path / "x.png")
    with pytest.raises(InputError, match="--images"):
        draw_matches(None, tmp_path, "view_000.jpg", "view_001.jpg")


def test_inliers_and_lines_follow_the_geometry():
    rng = np.random.default_rng(0)
    k0 = rng.uniform(0, 100, (40, 2))
    k1 = k0 + [20.0, 0.0]  # a pure translation: every point is consistent
    k1[:5] = rng.uniform(0, 100, (5, 2))  # five outliers
    inl = fundamental_inliers(k0, k1, 1.0)
    assert inl.shape == (40,) and inl[5:].mean() > 0.9
    assert not fundamental_inliers(k0[:7], k1[:7]).any()  # too few for a model
    image = np.zeros((50, 100, 3), np.uint8)
    picture = render_matches(image, image, k0 / 2, k1 / 2, inl, max_lines=10, height=100)
    assert picture.shape == (132, 400, 3)
    assert (picture[32:] == [40, 200, 40]).all(axis=2).any()  # some inlier green
    assert (picture[32:] == [230, 40, 40]).all(axis=2).any() or inl.all()


def test_draw_model_png_size(sift_run, tmp_path):
    _, out = sift_run
    assert find_model_dir(out) == out / "model"
    path = draw_model(out, tmp_path / "model.png", views=3, panel_size=200)
    assert png_size(path) == (600, 200)
    default = draw_model(out / "sparse", views=2)
    assert default == out / "sparse" / "viz" / "model.png" and png_size(default) == (960, 480)


def test_draw_pca_png_size(synthetic_scene, tmp_path):
    torch.manual_seed(0)
    module = dinov2.build_model("vits14", depth=2, embed_dim=64, num_heads=2)
    model = dinov2.DinoModel(module, "vits14", torch.device("cpu"), "random-0")
    cfg = PatchFeaturesConfig(backbone="vits14", resolution=224)
    path = draw_pca(synthetic_scene.image_dir / NAMES[0], tmp_path / "pca.png", cfg, model=model)
    assert png_size(path) == (3 * 480, 360 + 32)


def test_choose_pair_picks_most_and_fewest_inliers(sift_run):
    _, out = sift_run
    best, worst = choose_pair(out), choose_pair(out, worst=True)
    # Views along an arc: neighbours overlap most, the two ends least.
    assert {best.name0, best.name1} != {worst.name0, worst.name1}
    assert best.num_inliers > worst.num_inliers
    assert best.num_candidates == worst.num_candidates == 6  # 4 views, exhaustive pairs
    assert "most RANSAC inliers" in best.reason and "fewest" in worst.reason


def test_draw_matches_without_names_shows_the_best_pair(sift_run, tmp_path):
    _, out = sift_run
    best = choose_pair(out)
    path = draw_matches(None, out, max_lines=10, height=120)
    assert path == out / "viz" / f"matches_{best.name0}_{best.name1}.png"
    with pytest.raises(InputError, match="both image names"):
        draw_matches(None, out, "view_000.jpg", None)
    with pytest.raises(InputError, match="--worst"):
        draw_matches(None, out, "view_000.jpg", "view_001.jpg", worst=True)


# ----------------------------------------------------------------------------- model view

# Cameras looking along +y with image-down along -z: the picture's up frame is the world frame.
LOOK_Y = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])


def far_camera_model(rng: np.random.Generator):
    """Nine cameras 5 units in front of a unit cube of 400 points, one camera 1000x farther,
    and three points 10^4 units away."""
    centres = [np.array([x, -5.0, 0.5 * abs(x) / 2]) for x in np.linspace(-2, 2, 9)]
    centres.append(np.array([5000.0, -5.0, 0.0]))
    poses = [
        CameraPose(f"c{i}.jpg", 500.0, 500.0, 320.0, 240.0, LOOK_Y, -LOOK_Y @ c)
        for i, c in enumerate(centres)
    ]
    xyz = np.concatenate([rng.uniform(-1, 1, (400, 3)), np.full((3, 3), 1e4)])
    rgb = rng.integers(0, 256, (len(xyz), 3)).astype(np.uint8)
    return poses, xyz, rgb


def test_model_view_follows_the_robust_extent_not_a_far_camera():
    poses, xyz, rgb = far_camera_model(np.random.default_rng(0))
    fig, view = render_model(poses, xyz, rgb, views=2, panel_size=200)
    assert view.cameras_outside == 1 and view.points_outside == 3
    # The box to show: the near cameras and the 2-98 % of the points.
    near = np.array([p.center for p in poses[:9]])
    want_lo = np.minimum(near.min(axis=0), np.percentile(xyz, 2, axis=0))
    want_hi = np.maximum(near.max(axis=0), np.percentile(xyz, 98, axis=0))
    side = float(np.max(want_hi - want_lo))  # 5.96: y from -5 to about +0.96
    for ax in fig.axes:
        limits = np.array([ax.get_xlim(), ax.get_ylim(), ax.get_zlim()])  # (3, 2)
        assert np.all(limits[:, 0] <= want_lo) and np.all(limits[:, 1] >= want_hi)
        np.testing.assert_allclose(limits[:, 1] - limits[:, 0], 1.2 * side, rtol=1e-9)
        assert "scene units" in ax.get_xlabel() and "up" in ax.get_zlabel()
    assert "outside the view: 1 of 10 cameras, 3 of 403 points" in fig._suptitle.get_text()


def test_model_view_keeps_every_camera_of_a_normal_model():
    # Cameras all on one side of the points: a percentile cut over both would drop them.
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 1, (2000, 3))
    centres = np.stack([np.linspace(-3, 3, 12), np.full(12, -6.0), np.zeros(12)], axis=1)
    view = model_view(points, centres)
    assert view.cameras_outside == 0 and view.contains(centres).all()
    assert view.points_outside < 0.05 * len(points)


def write_text_model(folder, poses, xyz, rgb):
    """A COLMAP text model by hand: one pinhole camera, the images, points without tracks."""
    folder.mkdir()
    (folder / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    lines = []
    for i, p in enumerate(poses, 1):
        q = Rotation.from_matrix(p.rotation).as_quat(scalar_first=True)
        values = " ".join(f"{v:.17g}" for v in (*q, *p.translation))
        lines += [f"{i} {values} 1 {p.name}", ""]
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "points3D.txt").write_text(
        "".join(
            f"{i} {x:.17g} {y:.17g} {z:.17g} {r} {g} {b} 0.5\n"
            for i, ((x, y, z), (r, g, b)) in enumerate(zip(xyz, rgb, strict=True), 1)
        )
    )
    return folder


def test_draw_model_of_a_hand_made_model_with_a_far_camera(tmp_path):
    poses, xyz, rgb = far_camera_model(np.random.default_rng(2))
    folder = write_text_model(tmp_path / "model", poses, xyz, rgb)
    path = draw_model(folder, tmp_path / "far.png", views=1, panel_size=300)
    assert png_size(path) == (300, 300)
