"""The local global descriptor (VLAD of the ALIKED features) and the model choice of pairs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from reconstruct import paths
from reconstruct.aggregation import LocalDescriptorConfig, fit_codebook, local_header, vlad
from reconstruct.config import override
from reconstruct.errors import ModelWeightsError
from reconstruct.models import dinov2
from reconstruct.pairs import PairsConfig, check_models, resolve_retrieval_model, select_pairs
from reconstruct.storage import GLOBAL_SCHEMA, read_global_descriptors, read_header, read_pairs

pytestmark = pytest.mark.usefixtures("caches")


def test_vlad_exact_values():
    codebook = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0]], np.float32)
    desc = np.array([[1.0, 0.0], [0.0, 3.0], [9.0, 4.0]], np.float32)
    # residual sums: centre 0 (1, 3), centre 1 (-1, 4), centre 2 empty
    # signed sqrt: (1, sqrt 3), (-1, 2); intra-normalised: /2, /sqrt 5; then the whole /sqrt 2
    s5 = np.sqrt(5.0)
    expected = np.array([0.5, np.sqrt(3) / 2, -1 / s5, 2 / s5, 0.0, 0.0]) / np.sqrt(2.0)
    got = vlad(desc, codebook)
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)


def test_vlad_of_no_descriptors_is_zero():
    np.testing.assert_array_equal(vlad(np.zeros((0, 2), np.float32), np.ones((2, 2))), 0.0)


def test_codebook_is_deterministic_and_finds_clusters():
    rng = np.random.default_rng(1)
    truth = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    sample = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in truth])
    a = fit_codebook(sample, 3, seed=7)
    b = fit_codebook(sample, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    found = sorted(map(tuple, np.round(a).astype(int).tolist()))
    assert found == sorted(map(tuple, truth.astype(int).tolist()))
    assert fit_codebook(sample[:2], 8).shape == (2, 2)  # never more centres than descriptors


def test_config_validation():
    with pytest.raises(ValueError, match="codebook_size"):
        LocalDescriptorConfig(codebook_size=0)


def test_check_models(tmp_path, caplog):
    auto = PairsConfig()
    assert check_models(auto, 5) == {"retrieval_model": None, "weights": None}  # exhaustive
    with caplog.at_level(logging.WARNING, logger="reconstruct.pairs"):
        assert check_models(auto, 30)["retrieval_model"] == "local"
    explicit = override(PairsConfig(), {"retrieval": {"model": "dinov2", "download": False}})
    with pytest.raises(ModelWeightsError, match="pairs.retrieval.model=local"):
        check_models(explicit, 30)
    assert check_models(explicit, 5)["retrieval_model"] is None
    seq = override(PairsConfig(), {"strategy": "sequential", "retrieval": {"model": "dinov2"}})
    with pytest.raises(ModelWeightsError):
        check_models(seq, 30)  # loop closure needs the model, and the download is blocked
    no_loop = override(seq, {"loop_closure": False})
    assert check_models(no_loop, 30)["retrieval_model"] is None
    # Weights present on disk: auto picks DINOv2 (presence only, nothing is loaded).
    spec = dinov2.get_spec("vitb14")
    fake = tmp_path / "w.pth"
    fake.write_bytes(b"x")
    with_weights = override(PairsConfig(), {"retrieval": {"weights": str(fake)}})
    assert resolve_retrieval_model(with_weights) == "dinov2"
    assert spec.name == "vitb14"


@pytest.fixture(scope="module")
def scene_features(tmp_path_factory):
    from reconstruct.keypoints import KeypointsConfig, extract_keypoints
    from reconstruct.synthetic import SceneConfig, make_scene

    root = tmp_path_factory.mktemp("scene")
    make_scene(root, SceneConfig(num_images=20, width=320, height=240))
    out = root / "out"
    cfg = override(KeypointsConfig(), {"max_keypoints": 256})
    extract_keypoints(root / "images", out, cfg, device="cpu")
    return root / "images", out


def test_default_selection_offline_uses_local_descriptor(scene_features, caplog):
    image_dir, out = scene_features
    cfg = override(PairsConfig(), {"top_k": 4, "min_pairs": 2})  # default exhaustive_if_less=20
    with caplog.at_level(logging.WARNING, logger="reconstruct.pairs"):
        path = select_pairs(image_dir, out, cfg, device="cpu")
    report = json.loads((out / "pairs_report.json").read_text())
    assert report["retrieval_model"] == "local"
    assert report["strategy_used"] == "retrieval"
    pairs = read_pairs(path)
    assert 0 < len(pairs) < 20 * 19 // 2
    assert report["global_descriptors"] == str(out / paths.GLOBAL_LOCAL)
    header = read_header(out / paths.GLOBAL_LOCAL, GLOBAL_SCHEMA)
    assert header.extra["model"] == "local"
    names, desc = read_global_descriptors(out / paths.GLOBAL_LOCAL)
    assert len(names) == 20 and desc.shape[1] == 32 * 128
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    # Views along an arc: each image's shortlist should favour its neighbours in the sequence.
    idx = {n: i for i, n in enumerate(sorted(names))}
    gaps = np.array([abs(idx[a] - idx[b]) for a, b in pairs])
    assert np.median(gaps) <= 3, gaps
    # Deterministic: a second run reuses the file and gives the same pairs.
    assert read_pairs(select_pairs(image_dir, out, cfg, device="cpu")) == pairs


def test_local_and_dinov2_files_coexist_in_one_folder(scene_features):
    """Switching the descriptor needs no --overwrite: each model has its own file and resumes."""
    from reconstruct.retrieval import RetrievalConfig, descriptor_header
    from reconstruct.storage import ResultWriter

    image_dir, out = scene_features
    cfg = override(PairsConfig(), {"top_k": 4, "min_pairs": 2, "retrieval": {"model": "local"}})
    first = read_pairs(select_pairs(image_dir, out, cfg, device="cpu"))
    # A DINOv2 file as a dinov2 run leaves it (another hash, other vectors).
    dino = out / paths.GLOBAL
    with ResultWriter(dino, descriptor_header(RetrievalConfig(), "fake-sha")) as w:
        w.add(("x.jpg",), {"descriptor": np.ones(4, np.float32) / 2})
    dino_bytes = dino.read_bytes()
    local_mtime = (out / paths.GLOBAL_LOCAL).stat().st_mtime_ns
    again = read_pairs(select_pairs(image_dir, out, cfg, device="cpu"))  # no overwrite
    assert again == first
    assert dino.read_bytes() == dino_bytes, "the DINOv2 file is left alone"
    assert (out / paths.GLOBAL_LOCAL).stat().st_mtime_ns == local_mtime, "local file reused"


def test_codebook_sample_is_bounded(scene_features, tmp_path, monkeypatch):
    from reconstruct import aggregation

    image_dir, out = scene_features
    sizes = []
    real = aggregation.fit_codebook

    def spy(sample, k, **kw):
        sizes.append(len(sample))
        return real(sample, k, **kw)

    monkeypatch.setattr(aggregation, "fit_codebook", spy)
    names = sorted(p.name for p in image_dir.iterdir())
    config = LocalDescriptorConfig(sample_per_image=50, sample_total=100)  # 100 // 20 = 5 each
    features = out / paths.FEATURES
    path, have = aggregation.compute_local_descriptors(features, names, tmp_path, config)
    assert sizes == [5 * 20] and have == names and path == tmp_path / paths.GLOBAL_LOCAL
    config = LocalDescriptorConfig(sample_per_image=3, sample_total=100)
    aggregation.compute_local_descriptors(features, names, tmp_path, config)
    assert sizes[-1] == 3 * 20


def test_local_header_follows_the_turns_features_were_extracted_with():
    cfg, names = LocalDescriptorConfig(), ["a.jpg", "b.jpg"]
    plain = local_header(cfg, "f00d", names).config_hash
    # unturned images hash as before (no turn listed), turned ones change the hash, per turn
    assert local_header(cfg, "f00d", names, {"a.jpg": 0, "b.jpg": 0}).config_hash == plain
    turned = local_header(cfg, "f00d", names, {"b.jpg": 2}).config_hash
    assert turned != plain
    assert local_header(cfg, "f00d", names, {"b.jpg": 1}).config_hash not in (plain, turned)
    assert local_header(cfg, "f00d", names, {"a.jpg": 2}).config_hash != turned
