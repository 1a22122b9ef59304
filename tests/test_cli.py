"""The command line as a user meets it: --version, pipes, -q, exit codes, help, stage commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from reconstruct import __version__, paths
from reconstruct.cli import build_parser, main

CLI = [sys.executable, "-m", "reconstruct.cli"]


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"reconstruct {__version__}"


def test_closed_pipe_ends_quietly():
    # As `reconstruct config | head -0`: the reader is gone before the command writes.
    proc = subprocess.Popen(CLI + ["config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141


def _two_images(synthetic_scene, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ["view_000.jpg", "view_001.jpg"]:
        shutil.copy(synthetic_scene.image_dir / name, images / name)
    return images


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_hides_progress_bars(synthetic_scene, tmp_path, quiet):
    images = _two_images(synthetic_scene, tmp_path)
    cmd = CLI + ["extract", str(images), "-o", str(tmp_path / "out"), "--device", "cpu"]
    cmd += ["--set", "keypoints.extractor=sift"] + (["-q"] if quiet else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shows_bar = "keypoints:" in proc.stderr and "img" in proc.stderr
    assert shows_bar is not quiet, proc.stderr


def test_folder_of_unreadable_images_is_an_input_error(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "b.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["run", str(images), "-o", str(out), "--device", "cpu"]) == 3
    assert "none of the 2 images" in capsys.readouterr().err
    assert not (out / paths.FEATURES).exists() and not (out / paths.MATCHES).exists()
    assert main(["extract", str(images), "-o", str(out), "--device", "cpu"]) == 3


def _help(*argv: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])


def test_stage_help_shows_only_its_settings_and_fits_100_columns(capsys):
    for argv, own, foreign in [
        (["pairs"], "pairs.strategy", "keypoints.max_keypoints"),
        (["extract"], "keypoints.max_keypoints", "mapping."),
        (["map"], "mapping.", "matching.mnn_ratio"),
    ]:
        _help(*argv)
        text = capsys.readouterr().out
        settings = text.split("settings (--set")[1]
        assert own in settings and foreign not in settings, argv
        assert max(len(line) for line in text.splitlines()) <= 100, argv
    _help("run")
    text = capsys.readouterr().out
    assert "pairs.strategy" in text and "mapping." in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_preset_by_name_works_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--config", "fast"]) == 0
    assert json.loads(capsys.readouterr().out)["keypoints"]["max_keypoints"] == 512


def test_summary_names_model_points_and_run_json(tmp_path, make_summary):
    summary = make_summary({"images": 2, "pairs": 1, "matches": 10})
    text = summary.format()
    for name in (paths.MODEL, paths.PLY, paths.RUN_SUMMARY):
        assert str(tmp_path / name) in text, text
    assert "poses are likely wrong" not in text


def test_summary_warns_of_a_model_contradicting_its_matches(make_summary):
    counts = {"images": 2, "pairs": 1, "matches": 10}
    summary = make_summary({**counts, "explained_matches": 0.187, "model_consistent": False})
    text = summary.format()
    assert "explains only 19% of the verified inlier matches" in text and "likely wrong" in text
    summary.counts.update(explained_matches=0.9, model_consistent=True)
    assert "likely wrong" not in summary.format()


@pytest.mark.slow
def test_staged_commands_build_and_score_a_model(staged_run, capsys):
    out, scene = staged_run
    assert (out / paths.ROTATIONS).is_file()
    assert (out / paths.MODEL / "points3D.txt").is_file() and (out / paths.PLY).is_file()
    tmp = out / "eval_cli.json"
    assert main(["eval", str(out), "--gt", str(scene.gt_path), "--json", str(tmp)]) == 0
    metrics = json.loads(tmp.read_text())
    assert metrics["auc"]["5"] > 0.8
    assert "AUC" in capsys.readouterr().out
    # export again: model/ is swapped, never missing, and keeps the same points
    before = (out / paths.MODEL / "points3D.txt").read_text()
    assert main(["export", str(out)]) == 0
    assert (out / paths.MODEL / "points3D.txt").read_text() == before
    assert not list(out.glob(".model*"))


def test_stale_output_refusal_names_the_changed_setting(synthetic_scene, tmp_path, capsys):
    images = _two_images(synthetic_scene, tmp_path)
    base = ["extract", str(images), "-o", str(tmp_path / "out"), "--device", "cpu", "-q"]
    base += ["--set", "keypoints.extractor=sift"]
    assert main(base) == 0
    code = main([*base, "--set", "keypoints.sift_contrast_threshold=0.05"])
    assert code != 0
    assert "sift_contrast_threshold: 0.02 -> 0.05" in capsys.readouterr().err


@pytest.fixture
def fake_video_run(tmp_path, monkeypatch):
    """`reconstruct run VIDEO` with frame extraction and the pipeline replaced by recorders:
    returns (video path, list of the configs run_pipeline was called with)."""
    from reconstruct import pipeline, video

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded: extract_frames is replaced")
    seen = []

    def fake_extract(video_path, out, config, *, overwrite=False):
        (out / paths.FRAMES).mkdir(parents=True, exist_ok=True)
        return out / paths.FRAMES

    class Summary:
        frames_read = frames_kept = dropped_blurry = dropped_duplicate = 0

        def format(self):
            return "fake run"

    monkeypatch.setattr(video, "extract_frames", fake_extract)
    monkeypatch.setattr(video, "read_summary", lambda frames: Summary())
    monkeypatch.setattr(
        pipeline,
        "run_pipeline",
        lambda image_dir, out, config, **kw: seen.append(config) or Summary(),
    )
    return clip, seen


def test_video_pairs_in_sequence_unless_the_yaml_says_otherwise(fake_video_run, tmp_path):
    clip, seen = fake_video_run
    assert main(["run", str(clip), "-o", str(tmp_path / "a"), "-q"]) == 0
    assert seen[-1].pairs.strategy == "sequential"
    yaml_file = tmp_path / "exhaustive.yaml"
    yaml_file.write_text("pairs:\n  strategy: exhaustive\n")
    assert (
        main(["run", str(clip), "-o", str(tmp_path / "b"), "--config", str(yaml_file), "-q"]) == 0
    )
    assert seen[-1].pairs.strategy == "exhaustive"
    code = main(["run", str(clip), "-o", str(tmp_path / "c"), "--set", "pairs.strategy=auto", "-q"])
    assert code == 0
    assert seen[-1].pairs.strategy == "auto"


def test_python_dash_m_reconstruct_is_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "reconstruct", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reconstruct {__version__}"


def test_summary_says_why_a_smaller_rescued_model_was_kept(make_summary):
    rescue = {
        "images": ["a.jpg"],
        "max_keypoints": 2048,
        "pairs_matched_again": 4,
        "before": {"largest": 6, "models": 5, "consistent": False},
        "after": {"largest": 5, "models": 5, "consistent": True},
        "kept": True,
    }
    summary = make_summary({"images": 16, "pairs": 120, "matches": 900}, rescue)
    assert "6 -> 5 images, kept (the previous largest model contradicted its matches)." in (
        summary.format()
    )
    rescue["before"]["consistent"] = True
    rescue["after"]["largest"] = 7
    assert "6 -> 7 images, kept." in summary.format()


def test_summary_of_a_contrast_rescue_after_mapping_built_no_model(make_summary):
    summary = make_summary({"images": 8, "pairs": 28, "matches": 300})
    none = {"largest": 0, "models": 0, "consistent": False, "explained": 0.0}
    summary.contrast_rescue = {
        "keypoints_contrast": "clahe",
        "num_images": 8,
        "before": none,
        "after": {"largest": 8, "models": 1, "consistent": True, "explained": 0.8},
        "kept": True,
    }
    assert "clahe; no model -> 8 images, kept." in summary.format()
    summary.contrast_rescue.update(after=None, kept=False)
    assert "no model; the rescue's mapping built no model either, not kept." in summary.format()
