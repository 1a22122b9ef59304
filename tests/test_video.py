"""Video input: exact frame-sampling counts on a synthetic video, and bad input."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from reconstruct.errors import InputError, StaleOutputError
from reconstruct.images import list_images
from reconstruct.synthetic import VideoSceneConfig, make_video
from reconstruct.video import (
    VideoConfig,
    extract_frames,
    frame_name,
    is_video,
    read_summary,
)

# the synthetic camera moves ~3 px per frame at 320 px, the pause frames < 0.1 px (measured)
ADAPTIVE = VideoConfig(min_motion=1.0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "scene.mp4", VideoSceneConfig())


def _corrupt(src: Path, dst: Path, start_fraction: float) -> Path:
    """Overwrite the media data of an mp4 from `start_fraction` of it on with noise."""
    data = bytearray(src.read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    assert 0 < mdat < moov, "expected mdat before moov (as cv2.VideoWriter writes mp4)"
    start = mdat + 4 + int((moov - 4 - mdat - 4) * start_fraction)
    noise = np.random.default_rng(0).integers(0, 256, moov - 4 - start, dtype=np.uint8)
    data[start : moov - 4] = noise.tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_frame_names_sort_in_time_order():
    assert frame_name(12.345) == "t000012.345.jpg"
    times = [0.0, 0.1, 2.0, 10.0, 99.95, 1234.5]
    assert sorted(frame_name(t) for t in times) == [frame_name(t) for t in times]


def test_adaptive_sampling_drops_exactly_the_blurred_and_paused_frames(synthetic, tmp_path):
    assert len(synthetic.blurred) == 3 and len(synthetic.duplicates) == 4
    frames_dir = extract_frames(synthetic.path, tmp_path, ADAPTIVE)
    assert frames_dir == tmp_path / "frames"
    summary = read_summary(frames_dir)
    n = len(synthetic.cameras)
    assert summary.frames_read == n == 28
    assert summary.dropped_blurry == 3
    assert summary.dropped_duplicate == 4
    assert summary.frames_kept == n - 7
    assert not summary.truncated
    assert (summary.width, summary.height) == (320, 240)
    dropped = set(synthetic.blurred) | set(synthetic.duplicates)
    expected = [frame_name(t) for i, t in enumerate(synthetic.times) if i not in dropped]
    assert sorted(p.name for p in frames_dir.glob("*.jpg")) == expected
    record = json.loads((tmp_path / "frames.json").read_text())
    assert record["schema"] == "reconstruct.frames" and record["summary"]["frames_kept"] == n - 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".frames.")]


def test_a_large_min_motion_keeps_fewer_frames(synthetic, tmp_path):
    # ~3 px per frame: 7 px needs at least 3 frames of motion
    summary = read_summary(extract_frames(synthetic.path, tmp_path, VideoConfig(min_motion=7.0)))
    assert 5 <= summary.frames_kept <= 10
    assert summary.dropped_blurry == 3


def test_fps_mode_and_max_frames(synthetic, tmp_path):
    # 10 fps video, 2.5 fps sampling: candidates at frames 0, 4, 8, ..., 24 (7 of them)
    config = VideoConfig(mode="fps", fps=2.5, min_sharpness=0.0)
    summary = read_summary(extract_frames(synthetic.path, tmp_path / "a", config))
    assert summary.frames_kept == 7 and summary.dropped_by_step == 21
    names = sorted(p.name for p in (tmp_path / "a" / "frames").glob("*.jpg"))
    assert names == [frame_name(0.4 * k) for k in range(7)]
    capped = VideoConfig(min_motion=1.0, max_frames=5)
    summary = read_summary(extract_frames(synthetic.path, tmp_path / "b", capped))
    assert summary.frames_kept == 5 and not summary.truncated


def test_reuse_stale_and_overwrite(synthetic, tmp_path):
    frames_dir = extract_frames(synthetic.path, tmp_path, ADAPTIVE)
    stamp = (tmp_path / "frames.json").stat().st_mtime_ns
    assert extract_frames(synthetic.path, tmp_path, ADAPTIVE) == frames_dir
    assert (tmp_path / "frames.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = VideoConfig(min_motion=7.0)
    with pytest.raises(StaleOutputError, match="--overwrite"):
        extract_frames(synthetic.path, tmp_path, other)
    extract_frames(synthetic.path, tmp_path, other, overwrite=True)
    assert read_summary(frames_dir).frames_kept < len(synthetic.cameras) - 7


def test_frames_folder_holds_only_images_so_a_rerun_warns_of_nothing(synthetic, tmp_path, caplog):
    frames_dir = extract_frames(synthetic.path, tmp_path, ADAPTIVE)
    assert (tmp_path / "frames.json").is_file()  # the summary sits beside frames/
    assert {p.suffix for p in frames_dir.iterdir()} == {".jpg"}
    with caplog.at_level(logging.WARNING):
        assert extract_frames(synthetic.path, tmp_path, ADAPTIVE) == frames_dir  # re-run: reuse
        names = list_images(frames_dir)  # what every later stage does
    assert len(names) == len(synthetic.cameras) - 7
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_frames_without_a_summary_are_redone(synthetic, tmp_path):
    # an extraction interrupted after frames/ was renamed in, before frames.json was written
    frames_dir = extract_frames(synthetic.path, tmp_path, ADAPTIVE)
    (tmp_path / "frames.json").unlink()
    (frames_dir / "t000999.000.jpg").write_bytes(b"left over")
    assert extract_frames(synthetic.path, tmp_path, ADAPTIVE) == frames_dir
    assert read_summary(frames_dir).frames_kept == len(synthetic.cameras) - 7
    assert not (frames_dir / "t000999.000.jpg").exists()
    assert len(list(frames_dir.glob("*.jpg"))) == len(synthetic.cameras) - 7


def test_is_video(synthetic, tmp_path):
    assert is_video(synthetic.path)
    (tmp_path / "photo.jpg").write_bytes(b"x")
    assert not is_video(tmp_path / "photo.jpg")
    assert not is_video(tmp_path)
    assert not is_video(tmp_path / "missing.mp4")


def test_bad_input_is_an_input_error(synthetic, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError, match="cannot open .*notes.mp4 as a video"):
        extract_frames(text, tmp_path / "out", ADAPTIVE)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        extract_frames(empty, tmp_path / "out", ADAPTIVE)
    with pytest.raises(InputError, match="does not exist"):
        extract_frames(tmp_path / "missing.mp4", tmp_path / "out", ADAPTIVE)
    broken = _corrupt(synthetic.path, tmp_path / "broken.mp4", 0.0)
    with pytest.raises(InputError, match="no decodable frames"):
        extract_frames(broken, tmp_path / "out", ADAPTIVE)
    assert not (tmp_path / "out" / "frames").exists()


def test_corrupt_tail_keeps_the_decodable_frames_and_warns(synthetic, tmp_path):
    tail = _corrupt(synthetic.path, tmp_path / "tail.mp4", 0.6)
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        frames_dir = extract_frames(tail, tmp_path / "out", ADAPTIVE)
    summary = read_summary(frames_dir)
    assert summary.truncated and summary.frames_expected == len(synthetic.cameras)
    assert 5 <= summary.frames_read < len(synthetic.cameras)
    assert summary.frames_kept >= 5


def test_truncated_avi_warns(synthetic, tmp_path):
    avi = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    capture = cv2.VideoCapture(str(synthetic.path))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(frame)
    writer.release()
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = read_summary(extract_frames(avi, tmp_path / "out", ADAPTIVE))
    assert summary.truncated and 5 <= summary.frames_read < 28
    assert any("truncated" in str(w.message) for w in caught)


@pytest.mark.skipif(
    not os.environ.get("RECONSTRUCT_DATA"), reason="set RECONSTRUCT_DATA to the shared data folder"
)
def test_real_phone_video_decodes_upright(tmp_path):
    path = Path(os.environ["RECONSTRUCT_DATA"]) / "video" / "beer.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    config = VideoConfig(mode="fps", fps=1.0)
    summary = read_summary(extract_frames(path, tmp_path, config))
    assert (summary.width, summary.height) == (720, 1280)  # rotation metadata applied
    assert 20 <= summary.frames_kept <= 25 and not summary.truncated


def test_a_folder_of_videos_is_video_input(synthetic, tmp_path):
    from reconstruct.cli import _video_inputs

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "b.mp4").write_bytes(synthetic.path.read_bytes())
    (folder / "a.mov").write_bytes(synthetic.path.read_bytes())
    (folder / "notes.txt").write_text("x")
    assert _video_inputs(folder) == [folder / "a.mov", folder / "b.mp4"]
    assert _video_inputs(folder / "b.mp4") == [folder / "b.mp4"]
    (folder / "photo.jpg").write_bytes(b"x")  # a folder with photos is a photo folder
    assert _video_inputs(folder) == []
