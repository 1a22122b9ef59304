"""Mask images (COLMAP naming) and keypoint filtering."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reconstruct.errors import ImageReadError, InputError
from reconstruct.masks import filter_by_mask, keypoints_in_mask, load_mask, mask_path


def write_mask(path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8))


def test_mask_path_follows_colmap_naming(tmp_path):
    assert mask_path(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg.png"
    assert mask_path(tmp_path, "x y%.png") == tmp_path / "x y%.png.png"


def test_load_mask_missing_is_none_and_values_are_nonzero(tmp_path):
    assert load_mask(tmp_path, "a/b.jpg", (4, 6, 3)) is None
    m = np.zeros((4, 6), np.uint8)
    m[1:3, 2:5] = 255
    m[0, 0] = 1  # any non-zero value keeps the pixel
    write_mask(tmp_path / "a" / "b.jpg.png", m)
    got = load_mask(tmp_path, "a/b.jpg", (4, 6, 3))
    assert got.dtype == bool and got.shape == (4, 6)
    np.testing.assert_array_equal(got, m > 0)


def test_load_mask_resizes_same_aspect_and_refuses_others(tmp_path):
    m = np.zeros((4, 6), np.uint8)
    m[:, 3:] = 255  # right half
    write_mask(tmp_path / "img.jpg.png", m)
    big = load_mask(tmp_path, "img.jpg", (8, 12))
    assert big.shape == (8, 12) and big[:, 6:].all() and not big[:, :6].any()
    with pytest.raises(InputError, match="rotated"):
        load_mask(tmp_path, "img.jpg", (6, 4))
    with pytest.raises(InputError, match="aspect ratio"):
        load_mask(tmp_path, "img.jpg", (4, 4))


def test_colour_mask_and_corrupt_mask(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 1, 2] = 9
    write_mask(tmp_path / "c.png.png", m)
    got = load_mask(tmp_path, "c.png", (4, 4))
    assert got.sum() == 1 and got[0, 1]
    (tmp_path / "bad.jpg.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.jpg.png"):
        load_mask(tmp_path, "bad.jpg", (4, 4))


def test_keypoints_in_mask_uses_colmap_pixel_convention():
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True  # the pixel covering x in [2, 3), y in [1, 2)
    kpts = np.array(
        [[2.5, 1.5], [2.0, 1.0], [2.999, 1.999], [3.0, 1.5], [1.999, 1.5], [-5, -5], [99, 1.5]],
        np.float32,
    )
    np.testing.assert_array_equal(
        keypoints_in_mask(kpts, mask), [True, True, True, False, False, False, False]
    )


def test_filter_by_mask_keeps_order_and_all_per_keypoint_arrays():
    mask = np.zeros((10, 10), bool)
    mask[:, 5:] = True
    feats = {
        "keypoints": np.array([[6.5, 0.5], [1.5, 1.5], [9.5, 9.5]], np.float32),
        "descriptors": np.arange(6, dtype=np.float32).reshape(3, 2),
        "scores": np.array([0.3, 0.2, 0.1], np.float32),
    }
    out = filter_by_mask(feats, mask)
    np.testing.assert_array_equal(out["keypoints"], [[6.5, 0.5], [9.5, 9.5]])
    np.testing.assert_array_equal(out["descriptors"], [[0, 1], [4, 5]])
    np.testing.assert_array_equal(out["scores"], np.array([0.3, 0.1], np.float32))
    assert all(v.dtype == np.float32 for v in out.values())
    assert filter_by_mask(feats, None) is feats


def test_filter_by_mask_empty_features():
    feats = {
        "keypoints": np.zeros((0, 2), np.float32),
        "descriptors": np.zeros((0, 128), np.float32),
        "scores": np.zeros((0,), np.float32),
    }
    out = filter_by_mask(feats, np.ones((5, 5), bool))
    assert out["keypoints"].shape == (0, 2) and out["descriptors"].shape == (0, 128)
