"""Each picture is a non-empty PNG of the expected size (headless)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from reconstruct.errors import InputError
from reconstruct.models import dinov2
from reconstruct.models.patch_matcher import PatchFeaturesConfig, PatchModel
from reconstruct.pipeline import load_config, run_pipeline
from reconstruct.viz import (
    draw_matches,
    draw_model,
    draw_pca,
    find_model_dir,
    fundamental_inliers,
    render_matches,
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
    model = PatchModel(module, "vits14", torch.device("cpu"), "random-0")
    cfg = PatchFeaturesConfig(backbone="vits14", resolution=224)
    path = draw_pca(synthetic_scene.image_dir / NAMES[0], tmp_path / "pca.png", cfg, model=model)
    assert png_size(path) == (3 * 480, 360 + 32)
