import numpy as np
import pytest

from reconstruct.errors import StaleOutputError
from reconstruct.keypoints import (
    KeypointsConfig,
    enhance_contrast,
    extract_item,
    extract_keypoints,
    rotate_image,
    unrotate_keypoints,
)
from reconstruct.storage import FeaturesReader, read_header


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_unrotate_keypoints_inverts_rotate_image(k):
    h, w = 4, 6
    image = np.zeros((h, w), np.uint8)
    image[1, 4] = 255  # pixel (x=4, y=1): its centre is (4.5, 1.5) in COLMAP's convention
    rotated = rotate_image(image, k)
    ys, xs = np.nonzero(rotated)
    centre_in_rotated = np.array([[xs[0] + 0.5, ys[0] + 0.5]], np.float32)
    np.testing.assert_allclose(unrotate_keypoints(centre_in_rotated, k, w, h), [[4.5, 1.5]])


def test_unrotate_exact_values():
    xy = np.array([[1.0, 2.0]], np.float32)
    # k=1 (CCW) of a 10x20 (w x h) image: rotated is 20 wide, 10 high; (u, v) -> (v, 10 - u)
    np.testing.assert_allclose(unrotate_keypoints(np.array([[2.0, 9.0]]), 1, 10, 20), xy)
    np.testing.assert_allclose(unrotate_keypoints(np.array([[9.0, 18.0]]), 2, 10, 20), xy)
    np.testing.assert_allclose(unrotate_keypoints(np.array([[18.0, 1.0]]), 3, 10, 20), xy)


@pytest.fixture(scope="module")
def two_images(synthetic_scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    images = root / "images"
    images.mkdir()
    for name in ["view_000.jpg", "view_001.jpg"]:
        (images / name).write_bytes((synthetic_scene.image_dir / name).read_bytes())
    data = (synthetic_scene.image_dir / "view_002.jpg").read_bytes()
    (images / "broken.jpg").write_bytes(data[: len(data) // 3])
    return images


def test_aliked_features_follow_the_contract(two_images, tmp_path):
    cfg = KeypointsConfig(max_keypoints=256, resize=320)
    path = extract_keypoints(two_images, tmp_path, cfg, device="cpu")
    with FeaturesReader(path) as r:
        assert r.names() == ["view_000.jpg", "view_001.jpg"]
        assert list(r.failed()) == ["broken.jpg"] and "truncated" in r.failed()["broken.jpg"]
        f = r.read("view_000.jpg")
    assert f.keypoints.shape == (256, 2) and f.keypoints.dtype == np.float32
    assert f.descriptors.shape == (256, 128)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-4)
    assert f.image_size == (640, 480)
    # stored at the original resolution (640x480) although detected at 320x240
    assert f.keypoints[:, 0].max() > 330 and f.keypoints[:, 1].max() > 250
    assert (f.keypoints >= 0).all() and (f.keypoints[:, 0] <= 640).all()
    assert np.all(np.diff(f.scores) <= 0)  # best first
    assert read_header(path, "reconstruct.features").config["max_keypoints"] == 256


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotated_extraction_maps_keypoints_back(two_images, tmp_path, k):
    """Keypoints found on a rotated copy land on the same image structures. SIFT's detector is
    (nearly) equivariant to 90-degree turns, so it checks the mapping; ALIKED is not."""
    cfg = KeypointsConfig(extractor="sift", max_keypoints=300, resize=None)
    upright = extract_keypoints(two_images, tmp_path / "a", cfg)
    rotated = extract_keypoints(two_images, tmp_path / "b", cfg, rotations={"view_000.jpg": k})
    with FeaturesReader(upright) as r0, FeaturesReader(rotated) as r1:
        a = r0.read("view_000.jpg").keypoints
        b = r1.read("view_000.jpg").keypoints
        assert r1.attrs("view_000.jpg")["rotation"] == k
        assert r1.read("view_000.jpg").image_size == (640, 480)

    def found_again(points):
        return np.mean(np.linalg.norm(a[:, None] - points[None], axis=2).min(1) < 1.0)

    assert found_again(b) > 0.85
    assert found_again(np.c_[640 - b[:, 0], b[:, 1]]) < 0.1  # a wrong (mirrored) mapping


def test_sift_features(two_images, tmp_path):
    cfg = KeypointsConfig(extractor="sift", max_keypoints=300)
    with FeaturesReader(extract_keypoints(two_images, tmp_path, cfg)) as r:
        f = r.read("view_001.jpg")
    assert 100 < len(f.keypoints) <= 300 and f.descriptors.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-4)  # RootSIFT


def test_other_config_is_refused_then_overwritten(two_images, tmp_path):
    extract_keypoints(two_images, tmp_path, KeypointsConfig(extractor="sift", max_keypoints=50))
    with pytest.raises(StaleOutputError, match="--overwrite"):
        extract_keypoints(two_images, tmp_path, KeypointsConfig(extractor="sift", max_keypoints=60))
    path = extract_keypoints(
        two_images, tmp_path, KeypointsConfig(extractor="sift", max_keypoints=60), overwrite=True
    )
    with FeaturesReader(path) as r:
        assert len(r.read("view_000.jpg").keypoints) == 60


def _faint_texture(shape=(96, 128), amplitude=3.0, seed=0):
    """A mid-grey image whose texture spans only a few grey levels (an untextured object)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(shape[0] // 8, shape[1] // 8))
    blurred = np.kron(noise, np.ones((8, 8)))  # blobs of 8 px
    return np.clip(128 + amplitude * blurred, 0, 255).astype(np.uint8)


def test_enhance_contrast_lifts_faint_texture_and_keeps_grey_grey():
    gray = _faint_texture()
    out = enhance_contrast(gray)
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert out.std() > 2 * gray.std()  # measured 2.2x at clip limit 3
    # brighter stays brighter: the equalisation is monotonic within a tile
    a, b = (
        np.unravel_index(np.argmin(gray), gray.shape),
        np.unravel_index(np.argmax(gray), gray.shape),
    )
    assert out[a] < out[b]
    rgb = np.repeat(gray[..., None], 3, axis=2)
    out_rgb = enhance_contrast(rgb)
    assert out_rgb.shape == rgb.shape
    # grey pixels stay grey (only the lightness is equalised), within Lab rounding
    assert np.abs(out_rgb.astype(int) - out_rgb[..., :1].astype(int)).max() <= 1
    assert out_rgb[..., 0].std() > 2 * gray.std()  # equalised on Lab's L, not on grey
    # a flat image stays flat: the clip limit keeps CLAHE from inventing texture
    flat = np.full((64, 64), 90, np.uint8)
    assert np.ptp(enhance_contrast(flat)) == 0


def test_extraction_with_contrast_enhancement_sees_the_faint_texture():
    """SIFT on a faintly textured image finds almost nothing (its contrast threshold); with
    keypoints.contrast=clahe the same image gives many keypoints."""
    from reconstruct.keypoints import build_extractor

    image = np.repeat(_faint_texture((240, 320), amplitude=1.5)[..., None], 3, axis=2)
    counts = {}
    for contrast in ("none", "clahe"):
        config = KeypointsConfig(extractor="sift", contrast=contrast)
        feats, attrs = extract_item(build_extractor(config, "cpu"), config, "x.png", image)
        counts[contrast] = len(feats["keypoints"])
        assert attrs["image_size"] == (320, 240)
    assert counts["clahe"] > 5 * max(counts["none"], 1)
