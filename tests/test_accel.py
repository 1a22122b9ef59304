"""Several images / pairs at once, one torch thread each (accel.py): same results as one job,
jobs resolved per device and memory, and the performance block of run.json."""

import itertools
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from reconstruct import accel
from reconstruct.keypoints import KeypointsConfig, extract_keypoints, extraction_jobs
from reconstruct.matching import MatchingConfig, match_pairs, matching_jobs
from reconstruct.storage import FeaturesReader, MatchesReader

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_resolve_jobs_per_device_and_setting(monkeypatch):
    assert accel.resolve_jobs(0, CUDA) == 1  # a GPU runs one item at a time
    assert accel.resolve_jobs(3, CUDA) == 1
    assert accel.resolve_jobs(3, CPU) == 3
    assert accel.resolve_jobs(0, CPU) == torch.get_num_threads()
    with pytest.raises(ValueError, match="jobs must be"):
        accel.resolve_jobs(-1, CPU)


def test_auto_jobs_are_capped_by_memory(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(accel, "available_memory", lambda: 10 * 2**30)
    assert accel.resolve_jobs(0, CPU, bytes_per_job=4 * 2**30) == 2  # 10 GB hold two 4 GB jobs
    assert accel.resolve_jobs(0, CPU, bytes_per_job=100 * 2**30) == 1
    assert accel.resolve_jobs(0, CPU, bytes_per_job=1) == 8
    assert accel.resolve_jobs(5, CPU, bytes_per_job=100 * 2**30) == 5  # explicit wins
    monkeypatch.setattr(accel, "available_memory", lambda: None)
    assert accel.resolve_jobs(0, CPU, bytes_per_job=100 * 2**30) == 8


def test_stage_jobs(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(accel, "available_memory", lambda: 64 * 2**30)
    assert extraction_jobs(KeypointsConfig(), CPU) == 2
    assert extraction_jobs(KeypointsConfig(extractor="sift"), CPU) == 1
    assert extraction_jobs(KeypointsConfig(), CUDA) == 1
    # full-size images are budgeted as 24 MP (49 GB for two): one at a time
    monkeypatch.setattr(accel, "available_memory", lambda: 32 * 2**30)
    assert extraction_jobs(KeypointsConfig(resize=None), CPU) == 1
    assert matching_jobs(MatchingConfig(), CPU) == 2
    assert matching_jobs(MatchingConfig(jobs=1), CPU) == 1
    assert matching_jobs(MatchingConfig(), CUDA) == 1
    with pytest.raises(ValueError, match="jobs"):
        KeypointsConfig(jobs=-1)
    with pytest.raises(ValueError, match="jobs"):
        MatchingConfig(jobs=-2)


def test_job_threads_sets_one_thread_in_every_thread_and_restores():
    before = torch.get_num_threads()
    with accel.job_threads(2) as per_job:
        assert per_job == 1 and torch.get_num_threads() == 1
        with ThreadPoolExecutor(2) as pool:
            seen = set(pool.map(lambda _: torch.get_num_threads(), range(4)))
        assert seen == {1}
    assert torch.get_num_threads() == before
    with accel.job_threads(1) as per_job:
        assert per_job == before and torch.get_num_threads() == before
    with pytest.raises(RuntimeError), accel.job_threads(2):
        raise RuntimeError("a failing stage")
    assert torch.get_num_threads() == before


def _same_features(a, b, kp_tol=1e-3):
    with FeaturesReader(a) as ra, FeaturesReader(b) as rb:
        assert ra.names() == rb.names() and ra.failed() == rb.failed()
        for name in ra.names():
            fa, fb = ra.read(name), rb.read(name)
            assert fa.image_size == fb.image_size
            assert fa.keypoints.shape == fb.keypoints.shape
            # The same keypoints within kp_tol; keypoints of near-equal score (stored best first)
            # may swap places when the thread count changes the last bits of the scores.
            dist, idx = cKDTree(fb.keypoints).query(fa.keypoints)
            assert dist.max() < kp_tol and len(set(idx.tolist())) == len(idx)
            assert (idx != np.arange(len(idx))).mean() < 0.01
            np.testing.assert_allclose(fa.descriptors, fb.descriptors[idx], atol=1e-4, rtol=0)
            np.testing.assert_allclose(fa.scores, fb.scores[idx], atol=1e-4, rtol=0)


def _identical_match_share(a, b) -> float:
    same = total = 0
    with MatchesReader(a) as ra, MatchesReader(b) as rb:
        assert ra.counts().keys() == rb.counts().keys()
        for pair in ra.counts():
            ma = {tuple(m) for m in ra.read(*pair)[0].tolist()}
            mb = {tuple(m) for m in rb.read(*pair)[0].tolist()}
            same += len(ma & mb)
            total += max(len(ma), len(mb))
    return same / max(total, 1)


def _run_both(images, tmp_path, kcfg: dict, names):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for a, b in itertools.pairwise(names)))
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        feats = extract_keypoints(
            images, out, KeypointsConfig(jobs=jobs, **kcfg), device="cpu", image_names=names
        )
        match_pairs(pairs, feats, out, MatchingConfig(jobs=jobs), device="cpu")
        outs.append(out)
    return outs


def test_two_jobs_give_the_features_and_matches_of_one(synthetic_scene, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = ["view_000.jpg", "view_001.jpg", "view_002.jpg"]
    for name in names:
        shutil.copy(synthetic_scene.image_dir / name, images / name)
    data = (synthetic_scene.image_dir / "view_003.jpg").read_bytes()
    (images / "broken.jpg").write_bytes(data[: len(data) // 3])  # an error mid-stream
    one, two = _run_both(
        images, tmp_path, {"max_keypoints": 128, "resize": 256}, ["broken.jpg", *names]
    )
    _same_features(one / "features.h5", two / "features.h5")
    with FeaturesReader(two / "features.h5") as r:
        assert list(r.failed()) == ["broken.jpg"]
    assert _identical_match_share(one / "matches.h5", two / "matches.h5") >= 0.99


@pytest.mark.realdata
def test_two_jobs_on_real_photos(real_data, tmp_path):
    """Herz-Jesu-P8 at the default 1024 px: keypoints within 1e-3 px, >= 99% same matches."""
    images = real_data / "Herz-Jesu-P8" / "images"
    one, two = _run_both(images, tmp_path, {}, ["0000.jpg", "0001.jpg"])
    _same_features(one / "features.h5", two / "features.h5")
    assert _identical_match_share(one / "matches.h5", two / "matches.h5") >= 0.99


def test_performance_summary_fields():
    timings = {"keypoints": 8.0, "pairs": 0.1, "matching": 14.0, "total": 30.0}
    out = accel.performance_summary(
        KeypointsConfig(jobs=2),
        MatchingConfig(jobs=1),
        "cpu",
        timings,
        images=8,
        pairs=28,
    )
    assert out["keypoints_s_per_image"] == 1.0 and out["matching_s_per_pair"] == 0.5
    assert out["keypoints_jobs"] == 2 and out["keypoints_threads_per_job"] == 1
    assert out["matching_jobs"] == 1
    assert out["matching_threads_per_job"] == out["torch_threads"] == torch.get_num_threads()
    assert out["device"] == "cpu" and out["executor"] == "local"
    assert out["lightglue_precision"] in ("float32", "bfloat16")
    exact = accel.performance_summary(
        KeypointsConfig(), MatchingConfig(mixed_precision=False), "cpu", {}, images=0, pairs=0
    )
    assert exact["lightglue_precision"] == "float32"
    assert "lightglue_precision" not in accel.performance_summary(
        KeypointsConfig(), MatchingConfig(matcher="mnn"), "cpu", {}, images=0, pairs=0
    )
    none = accel.performance_summary(
        KeypointsConfig(), MatchingConfig(), "cpu", {}, images=0, pairs=0
    )
    assert none["keypoints_s_per_image"] is None and none["matching_s_per_pair"] is None


@pytest.mark.slow
def test_run_json_has_the_performance_block(synthetic_scene, tmp_path):
    from reconstruct.pipeline import run_pipeline
    from reconstruct.settings import load_config

    images = tmp_path / "images"
    images.mkdir()
    for name in ["view_000.jpg", "view_001.jpg", "view_002.jpg", "view_003.jpg"]:
        shutil.copy(synthetic_scene.image_dir / name, images / name)
    config = load_config(None, {"keypoints": {"max_keypoints": 256, "resize": 320}})
    summary = run_pipeline(images, tmp_path / "out", config, device="cpu")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    perf = run["performance"]
    assert perf == summary.performance
    assert perf["keypoints_s_per_image"] == pytest.approx(run["timings"]["keypoints"] / 4, 1e-3)
    pairs = run["counts"]["matched_pairs"]
    assert perf["matching_s_per_pair"] == pytest.approx(run["timings"]["matching"] / pairs, 1e-3)
    assert perf["keypoints_jobs"] >= 1 and perf["torch_threads"] >= 1
    assert {"keypoints", "pairs", "matching", "mapping", "total"} <= set(run["timings"])
