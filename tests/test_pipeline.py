"""End to end: synthetic scenes with known cameras, real ALIKED + LightGlue weights, pycolmap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reconstruct.cli import main
from reconstruct.errors import MappingError, StaleOutputError
from reconstruct.evaluation import relative_pose_errors
from reconstruct.export import read_all_poses
from reconstruct.gt import read_cameras_txt
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import load_config
from reconstruct.storage import MatchesReader


@pytest.mark.slow
def test_demo_registers_every_image_accurately(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Registered 8 of 8 images" in printed
    gt = read_cameras_txt(out / "scene" / "gt" / "cameras.txt")
    models = read_all_poses(out / "sparse")
    assert len(models) == 1 and set(models[0]) == set(gt)
    errors = relative_pose_errors(gt, models)
    assert max(e.rotation_error_deg for e in errors) < 1.0
    assert max(e.translation_error_deg for e in errors) < 5.0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["registered_images"] == 8
    assert set(run["timings"]) >= {"keypoints", "pairs", "matching", "mapping", "export", "total"}
    assert run["versions"]["pycolmap"].startswith("4.")
    assert (out / "model" / "cameras.bin").is_file() and (out / "model" / "points3D.txt").is_file()
    assert (out / "points.ply").stat().st_size > 1000
    ev = json.loads((out / "eval.json").read_text())
    assert ev["auc"]["5"] > 0.9


@pytest.fixture()
def small_scene(synthetic_scene, tmp_path):
    """Four images of the synthetic scene, one corrupt JPEG and a text file."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ["view_000.jpg", "view_001.jpg", "view_002.jpg", "view_003.jpg"]:
        shutil.copy(synthetic_scene.image_dir / name, images / name)
    data = (synthetic_scene.image_dir / "view_004.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(data[:5000])
    (images / "readme.txt").write_text("not an image")
    return images


FAST = {"keypoints": {"max_keypoints": 512, "resize": 640}}


@pytest.mark.slow
def test_bad_files_are_skipped_and_reported(small_scene, tmp_path):
    summary = run_pipeline(small_scene, tmp_path / "out", load_config(overrides=FAST))
    assert summary.counts["registered_images"] == 4
    # the consistency check of mapping.json reaches the run's counts (a sound synthetic model)
    assert summary.counts["model_consistent"] is True
    assert summary.counts["explained_matches"] > 0.8
    assert list(summary.unreadable_images) == ["corrupt.jpg"]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "corrupt.jpg" in run["unreadable_images"]


@pytest.mark.slow
def test_output_of_another_config_is_refused(small_scene, tmp_path, capsys):
    out = tmp_path / "out"
    run_pipeline(small_scene, out, load_config(overrides=FAST))
    other = {"keypoints": {"max_keypoints": 400, "resize": 640}}
    with pytest.raises(StaleOutputError, match="--overwrite"):
        run_pipeline(small_scene, out, load_config(overrides=other))
    code = main(
        ["extract", str(small_scene), "-o", str(out), "--set", "keypoints.max_keypoints=400"]
    )
    assert code == StaleOutputError.exit_code
    assert "--overwrite" in capsys.readouterr().err
    summary = run_pipeline(small_scene, out, load_config(overrides=other), overwrite=True)
    assert summary.config["keypoints"]["max_keypoints"] == 400


def test_nothing_registrable_is_a_typed_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    import cv2

    images = tmp_path / "noise"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (200, 260), np.uint8))
    cfg = load_config(overrides={"keypoints": {"max_keypoints": 128}})
    with pytest.raises(MappingError, match="geometric verification|could not build"):
        run_pipeline(images, tmp_path / "out", cfg)
    # what was done is still reported: the contrast rescue was tried and built nothing either
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["contrast_rescue"]["after"] is None and report["contrast_rescue"]["kept"] is False
    assert report["contrast_rescue"]["before"]["largest"] == 0 and "rescue" in report["timings"]
    off = load_config(overrides={"keypoints": {"max_keypoints": 128}, "rescue": {"enabled": False}})
    with pytest.raises(MappingError, match="geometric verification|could not build"):
        run_pipeline(images, tmp_path / "off", off)
    report = json.loads((tmp_path / "off" / "run.json").read_text())
    assert report["contrast_rescue"] is None and "rescue" not in report["timings"]
    code = main(
        ["run", str(images), "-o", str(tmp_path / "out2"), "--set", "keypoints.max_keypoints=128"]
    )
    assert code == MappingError.exit_code
    assert "error:" in capsys.readouterr().err


def test_cli_reports_empty_and_missing_folders(tmp_path, capsys):
    assert main(["run", str(tmp_path), "-o", str(tmp_path / "o")]) == 3
    assert "no images found" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert main(["config", "--set", "keypoints.model=n99"]) == 2
    assert "keypoints.model" in capsys.readouterr().err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconstruct.cli", *args]


@pytest.mark.slow
def test_killed_matching_resumes_to_the_same_result(synthetic_scene, tmp_path):
    names = [f"view_00{i}.jpg" for i in range(5)]
    images = tmp_path / "images"
    images.mkdir()
    for n in names:
        shutil.copy(synthetic_scene.image_dir / n, images / n)
    settings = ["--set", "keypoints.max_keypoints=512", "--set", "keypoints.resize=640"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    for d in (ref, out):
        for stage in ("extract", "pairs"):
            subprocess.run(_cli(stage, str(images), "-o", str(d), *settings, "-q"), check=True)
    subprocess.run(_cli("match", str(ref), *settings, "-q"), check=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_cli("match", str(out), *settings, "-q"), env=env)
    parts = out / "matches.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("*.npz")))
    assert 2 <= done_before < 10, "the run was not killed in the middle of matching"
    assert not (out / "matches.h5").exists()

    subprocess.run(_cli("match", str(out), *settings, "-q"), check=True)
    assert not parts.exists()
    with MatchesReader(ref / "matches.h5") as a, MatchesReader(out / "matches.h5") as b:
        assert a.pairs() == b.pairs() and len(a.pairs()) == 10
        for pair in a.pairs():
            np.testing.assert_array_equal(a.read(*pair)[0], b.read(*pair)[0])


@pytest.mark.slow
@pytest.mark.realdata
def test_sacre_coeur_registers(real_data, tmp_path):
    images = real_data / "sacre_coeur" / "images"
    summary = run_pipeline(images, tmp_path / "out", load_config())
    assert summary.counts["registered_images"] >= 9, summary.format()


def test_pairs_file_is_plain_two_names_per_line(tmp_path):
    # hloc's parser splits every line into exactly two names; metadata and scores go beside it.
    from reconstruct.storage import (
        pairs_sidecar,
        read_pairs_header,
        read_pairs_with_scores,
        write_pairs,
    )

    path = write_pairs(
        tmp_path / "pairs.txt",
        [("a b.jpg", "c.jpg"), ("c.jpg", "d.jpg")],
        scores=[0.5, 0.25],
        header={"strategy_used": "retrieval"},
    )
    lines = path.read_text().splitlines()
    assert all(len(line.split()) == 2 and not line.startswith("#") for line in lines), lines
    assert pairs_sidecar(path).name == "pairs.json"
    assert [s for _, s in read_pairs_with_scores(path)] == [0.5, 0.25]
    assert read_pairs_header(path) == {"strategy_used": "retrieval"}
    path.write_text("c.jpg d.jpg\n")  # edited by hand: the sidecar no longer applies
    assert read_pairs_with_scores(path) == [(("c.jpg", "d.jpg"), None)]
