"""The CLI faces added this round: the output-folder lock, video input, tracking, app, executors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest

from reconstruct import paths
from reconstruct.cli import main
from reconstruct.errors import MissingExtraError, OutputLockedError
from reconstruct.synthetic import VideoSceneConfig, make_video

CLI = [sys.executable, "-m", "reconstruct.cli"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "scene.mp4", VideoSceneConfig())


def test_second_writer_on_a_folder_stops_with_its_exit_code(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from reconstruct.lock import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["extract", str(tmp_path), "-o", str(out)])
        err = capsys.readouterr().err
        assert code == OutputLockedError.exit_code
        assert str(holder.pid) in err and str(out) in err, err
        # read-only commands need no lock
        assert main(["config"]) == 0
    finally:
        holder.kill()
        holder.wait()


def test_output_path_that_is_a_file_is_an_error_not_a_traceback(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code = main(["extract", str(tmp_path), "-o", str(target)])
    err = capsys.readouterr().err
    assert code not in (0, 1) and "Traceback" not in err
    assert str(target) in err


def test_ray_executor_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    (tmp_path / "out").mkdir()
    code = main(["match", str(tmp_path / "out"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == MissingExtraError.exit_code
    assert ".[distributed]" in err


@pytest.mark.slow
def test_run_on_a_video_reconstructs_its_frames(video, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(video.path),
            "-o",
            str(out),
            "--set",
            "video.min_motion=1",
            "--set",
            "keypoints.max_keypoints=512",
            "--set",
            "pairs.loop_closure=false",
            "-q",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "kept" in printed and "dropped" in printed
    run = json.loads((out / paths.RUN_SUMMARY).read_text())
    assert run["config"]["pairs"]["strategy"] == "sequential"
    kept = run["counts"]["images"]
    assert kept >= 15  # measured: 21 of 28 frames kept (3 blurred, 4 duplicates dropped)
    assert run["counts"]["registered_images"] == kept


def test_track_writes_a_video_and_a_csv(video, tmp_path):
    out = tmp_path / "tracked.mp4"
    code = main(["track", str(video.path), "--point", "160,120", "-o", str(out), "-q"])
    assert code == 0
    assert out.is_file() and out.stat().st_size > 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) > 10


def test_track_point_outside_the_frame_is_an_input_error(video, tmp_path, capsys):
    code = main(["track", str(video.path), "--point", "5000,5000", "-o", str(tmp_path / "t.mp4")])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err, err


def test_app_command_serves_the_page(tmp_path, free_port):
    pytest.importorskip("streamlit", reason="the web app extra is not installed: .[app]")
    port = free_port
    proc = subprocess.Popen(
        CLI + ["app", "--port", str(port), "--workdir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Probe from a child process: this test process blocks its own sockets (conftest.py).
    probe = [
        sys.executable,
        "-c",
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).status)",
        f"http://127.0.0.1:{port}/",
    ]
    try:
        deadline = time.monotonic() + 90
        while True:
            done = subprocess.run(probe, capture_output=True, text=True)
            if done.returncode == 0:
                assert done.stdout.strip() == "200"
                break
            assert proc.poll() is None, "reconstruct app exited early"
            assert time.monotonic() < deadline, done.stderr
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
