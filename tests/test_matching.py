import numpy as np
import pytest

from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import MatchingConfig, match_pairs, mutual_nn_match
from reconstruct.storage import FeaturesReader, MatchesReader, write_pairs


def test_mutual_nn_exact():
    d0 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)
    # d1: noisy copies of d0[2], d0[0], d0[4] in that order, plus a point that is the nearest
    # neighbour of d0[3] but whose own nearest neighbour is d0[0]: not mutual.
    d1 = np.array([[0, 0.1, 1], [1, 0.1, 0], [0, 1, 1.1], [1.2, 0.5, 0]], np.float32)
    m, s = mutual_nn_match(d0, d1, ratio=1.0)
    assert m.dtype == np.uint32
    assert m.tolist() == [[0, 1], [2, 0], [4, 2]]
    np.testing.assert_allclose(s, 1 - np.array([0.1, 0.1, 0.1]), atol=1e-6)


def test_ratio_test_drops_ambiguous_matches():
    d0 = np.array([[1, 0], [0, 1]], np.float32)
    d1 = np.array([[1, 0.02], [1, -0.02], [0, 1], [5, 5]], np.float32)
    m, _ = mutual_nn_match(d0, d1, ratio=0.8)
    assert m.tolist() == [[1, 2]]  # d0[0] has two equally near neighbours: dropped


def test_empty_descriptors():
    m, s = mutual_nn_match(np.zeros((0, 4)), np.ones((3, 4)))
    assert m.shape == (0, 2) and m.dtype == np.uint32 and s.shape == (0,)


@pytest.fixture(scope="module")
def features(synthetic_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    names = ["view_000.jpg", "view_001.jpg", "view_004.jpg"]
    cfg = KeypointsConfig(max_keypoints=512, resize=640)
    path = extract_keypoints(synthetic_scene.image_dir, out, cfg, image_names=names)
    return out, path


def _epipolar_errors(scene, features_path, matches_path, a, b):
    ca, cb = scene.cameras[a], scene.cameras[b]
    R = cb.rotation @ ca.rotation.T
    t = cb.translation - R @ ca.translation
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(cb.K).T @ tx @ R @ np.linalg.inv(ca.K)
    with FeaturesReader(features_path) as fr, MatchesReader(matches_path) as mr:
        m, _ = mr.read(a, b)
        pa = fr.read(a).keypoints[m[:, 0]]
        pb = fr.read(b).keypoints[m[:, 1]]
    ha = np.c_[pa, np.ones(len(pa))]
    hb = np.c_[pb, np.ones(len(pb))]
    lines = ha @ F.T
    return np.abs((hb * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)


def test_lightglue_matches_agree_with_known_geometry(synthetic_scene, features, tmp_path):
    out, feats = features
    pairs = write_pairs(
        tmp_path / "pairs.txt", [("view_001.jpg", "view_000.jpg"), ("view_000.jpg", "view_004.jpg")]
    )
    path = match_pairs(pairs, feats, tmp_path, MatchingConfig(), device="cpu")
    with MatchesReader(path) as r:
        assert r.pairs() == [("view_000.jpg", "view_001.jpg"), ("view_000.jpg", "view_004.jpg")]
    for a, b in [("view_000.jpg", "view_001.jpg"), ("view_000.jpg", "view_004.jpg")]:
        err = _epipolar_errors(synthetic_scene, feats, path, a, b)
        assert len(err) > 150
        assert np.mean(err < 2.0) > 0.9  # keypoints in COLMAP convention match the known poses


def test_mnn_on_sift(synthetic_scene, tmp_path):
    names = ["view_000.jpg", "view_001.jpg"]
    feats = extract_keypoints(
        synthetic_scene.image_dir, tmp_path, KeypointsConfig(extractor="sift"), image_names=names
    )
    pairs = write_pairs(tmp_path / "pairs.txt", [tuple(names)])
    path = match_pairs(pairs, feats, tmp_path, MatchingConfig(matcher="mnn"))
    err = _epipolar_errors(synthetic_scene, feats, path, *names)
    assert len(err) > 100 and np.mean(err < 2.0) > 0.8


def test_lightglue_refuses_sift_features(synthetic_scene, tmp_path):
    from reconstruct.errors import ConfigError

    names = ["view_000.jpg", "view_001.jpg"]
    feats = extract_keypoints(
        synthetic_scene.image_dir, tmp_path, KeypointsConfig(extractor="sift"), image_names=names
    )
    pairs = write_pairs(tmp_path / "pairs.txt", [tuple(names)])
    with pytest.raises(ConfigError, match="matching.matcher=mnn"):
        match_pairs(pairs, feats, tmp_path, MatchingConfig())


def test_fused_cpu_attention_gives_the_matches_of_the_math_path(features):
    """LightGlue now runs with torch's fused CPU attention (flash=True): building the matcher
    leaves it on, and its matches are those of the unfused path (>= 99% identical)."""
    import torch

    from reconstruct.matching import LightGlueMatcher

    _, feats = features
    torch.backends.cuda.enable_flash_sdp(False)  # as LightGlue(flash=False) used to leave it
    matcher = LightGlueMatcher(MatchingConfig(), torch.device("cpu"))
    assert torch.backends.cuda.flash_sdp_enabled()
    with FeaturesReader(feats) as r:
        data = {n: matcher.to_input(r.read(n)) for n in ("view_000.jpg", "view_001.jpg")}
    fused, _ = matcher(data["view_000.jpg"], data["view_001.jpg"])
    try:
        torch.backends.cuda.enable_flash_sdp(False)
        plain, _ = matcher(data["view_000.jpg"], data["view_001.jpg"])
    finally:
        torch.backends.cuda.enable_flash_sdp(True)
    a, b = set(map(tuple, fused.tolist())), set(map(tuple, plain.tolist()))
    assert len(a) > 150
    assert len(a & b) >= 0.99 * max(len(a), len(b))
