"""Video input: decode a video file and keep the frames worth reconstructing from.

Decoder choice: OpenCV's ``cv2.VideoCapture`` (FFmpeg backend). opencv-python is already a
dependency, its wheels bundle FFmpeg (libavcodec), so it decodes H.264/H.265 in MP4/MOV/MKV as
phone cameras write them, applies the rotation metadata of portrait phone videos
(``CAP_PROP_ORIENTATION_AUTO``, on by default) and reports each frame's presentation time, so
variable-frame-rate videos get true timestamps. It decodes the 720x1280 H.264 test video at about
2 ms per frame on one core. PyAV would give finer error reporting but is one more native
dependency for the same libavcodec.

Sampling (see :class:`VideoConfig`):

- ``mode="fps"`` keeps the first frame at or after every ``1 / fps`` seconds;
- ``mode="adaptive"`` looks at every frame and keeps it when it is sharp enough and has moved
  enough from the last kept frame.

Sharpness is the variance of the Laplacian of the grey frame at ``analysis_width``; a frame is
*blurry* when it is below ``min_sharpness`` times the median sharpness of the preceding
``sharpness_window`` frames, so the threshold adapts to each video's content. Motion is the median
displacement, in pixels at ``analysis_width``, of corners of the last kept frame tracked into the
frame by pyramidal Lucas-Kanade; a frame is a *duplicate* when it is below ``min_motion``. The blur
test comes first, so a frame that is both is counted as blurry.

On disk (frames written to a temporary folder, then renamed, so an interrupt leaves no half
folder; the summary is written last, atomically, and a frames folder without it is redone)::

    <output_dir>/frames/t000012.345.jpg ...   kept frames named by their time in seconds
    <output_dir>/frames.json                  source, config and counts (see FrameSummary)

The summary sits beside frames/, not in it, so frames/ holds only images: listing it (every
later stage does) finds no non-image file to warn about, and it can be used as a photo folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm import tqdm

from . import paths
from .config import config_hash, option, to_dict
from .errors import InputError, StaleOutputError, StorageError
from .storage import atomic_write_json

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mts", ".m2ts", ".3gp", ".mpg", ".mpeg"}
)
SCHEMA = "reconstruct.frames"
SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class VideoConfig:
    """How frames are sampled from a video (`video.*`)."""

    mode: Literal["fps", "adaptive"] = option(
        "adaptive", "fps: one frame per 1/fps seconds; adaptive: keep sharp frames that moved"
    )
    fps: float = option(2.0, "fps mode: frames kept per second of video")
    # 24 px = 7.5% of the 320 px analysis width: frame i+10, the far end of the sequential pairs'
    # default window of 10, has then moved ~75% of a width and still overlaps ~25%, so the
    # window spans the frames that can match and no more (cost ~ kept frames x window). On
    # beer.mp4 it keeps 63 of 706 frames, 26 px apart (median), like the every-10th-frame COLMAP
    # model that registers fully (25 px); 16/20 keep 109/89 frames for more pairs, 32/40/48 keep
    # 49/37/29; from ~60-80 px on, the Lucas-Kanade motion measure (3 levels) turns unreliable.
    # Measured there: verified matches fall from 592 at window offset 1 to 12-20 at offsets
    # 9-10 (COLMAP's 15-inlier minimum), so the window ends where the overlap does.
    # (scripts/sweep_min_motion.py, scripts/window_inliers.py; the synthetic video moves 3 px
    # per frame, so tests set it explicitly.) One video only: the argument is the overlap one.
    min_motion: float = option(
        24.0, "adaptive: median corner displacement (px at analysis_width) from the last kept frame"
    )
    min_sharpness: float = option(
        0.5, "drop frames whose Laplacian variance is below this times the running median; 0: off"
    )
    sharpness_window: int = option(15, "frames in the running median of sharpness")
    max_frames: int = option(0, "stop after keeping this many frames; 0: no limit")
    analysis_width: int = option(320, "frames are downscaled to this width to measure motion/blur")
    jpeg_quality: int = option(95, "JPEG quality of the written frames")

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"video.fps must be positive, got {self.fps}")
        if self.min_motion < 0 or self.min_sharpness < 0:
            raise ValueError("video.min_motion and video.min_sharpness must be >= 0")
        if self.sharpness_window < 1 or self.max_frames < 0:
            raise ValueError("video.sharpness_window must be >= 1 and video.max_frames >= 0")
        if not 32 <= self.analysis_width <= 4096:
            raise ValueError(f"video.analysis_width must be in 32..4096, got {self.analysis_width}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"video.jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True, kw_only=True)
class FrameSummary:
    """What :func:`extract_frames` did (stored in frames.json)."""

    frames_read: int  # frames decoded
    frames_kept: int  # frames written
    dropped_blurry: int  # below min_sharpness x running median
    dropped_duplicate: int  # moved less than min_motion from the last kept frame
    dropped_by_step: int  # fps mode: between time steps
    frames_expected: int  # the container's frame count (0: unknown)
    truncated: bool  # decoding stopped well before the container's frame count
    width: int
    height: int
    duration_s: float  # timestamp of the last decoded frame
    seconds: float  # wall time of decode + sampling + writing


def is_video(path: Path) -> bool:
    """True when `path` is a file whose suffix is a video container's (.mp4, .mov, ...)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def frame_name(seconds: float) -> str:
    """``t000012.345.jpg``: the frame's time, zero-padded so names sort in time order."""
    return f"t{seconds:010.3f}.jpg"


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of a grey uint8 image (higher is sharper)."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def motion(gray0: np.ndarray, corners0: np.ndarray | None, gray1: np.ndarray) -> float:
    """Median displacement (px) of `corners0` of `gray0` tracked into `gray1`.

    No corners (a textureless frame): the mean absolute grey difference stands in (0 for equal
    frames). Fewer than 5 corners tracked: inf (the view changed too much to track).
    """
    if corners0 is None or len(corners0) == 0:
        return float(np.abs(gray0.astype(np.int16) - gray1).mean())
    p1, status, _ = cv2.calcOpticalFlowPyrLK(
        gray0, gray1, corners0, None, winSize=(21, 21), maxLevel=3
    )
    ok = status.ravel() == 1
    if ok.sum() < 5:
        return math.inf
    return float(np.median(np.linalg.norm((p1 - corners0).reshape(-1, 2)[ok], axis=1)))


def corners(gray: np.ndarray) -> np.ndarray | None:
    """Up to 200 Shi-Tomasi corners of a grey frame (the points :func:`motion` tracks)."""
    return cv2.goodFeaturesToTrack(gray, maxCorners=200, qualityLevel=0.01, minDistance=7)


def _source_id(video_path: Path) -> dict:
    st = video_path.stat()
    return {"path": str(video_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _open(video_path: Path) -> cv2.VideoCapture:
    if not video_path.exists():
        raise InputError(f"video {video_path} does not exist")
    if not video_path.is_file():
        raise InputError(f"video {video_path} is not a file")
    if video_path.stat().st_size == 0:
        raise InputError(f"video {video_path} is empty (0 bytes); record or copy it again")
    capture = cv2.VideoCapture(str(video_path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise InputError(
            f"cannot open {video_path} as a video: it is not a video file or its format is not "
            "supported by OpenCV's FFmpeg reader; convert it to H.264 MP4 "
            "(ffmpeg -i IN -c:v libx264 OUT.mp4)"
        )
    return capture


def read_frames(video_path: Path):
    """Yield (time in seconds, BGR uint8 frame) of every decodable frame; InputError if none.

    The caller gets a warning (and the iterator just stops) when decoding ends well before the
    container's frame count, e.g. a truncated or corrupt tail.
    """
    video_path = Path(video_path)
    capture = _open(video_path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        n = 0
        last_t = -math.inf
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            t = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not math.isfinite(t) or t <= last_t:  # no or non-monotonic timestamps
                t = n / fps if fps > 0 else float(n)
                t = max(t, last_t + 1e-3)
            last_t = t
            n += 1
            yield t, frame
    finally:
        capture.release()
    if n == 0:
        raise InputError(
            f"video {video_path} has no decodable frames (the container opened, but its video "
            "stream could not be decoded); check it plays, or re-encode it to H.264 MP4"
        )


def _truncated(read: int, expected: int) -> bool:
    # containers' frame counts are estimates (duration x fps); allow a few frames of slack
    return expected > 0 and read < expected - max(2, int(0.02 * expected))


def extract_frames(
    video_path: Path, output_dir: Path, config: VideoConfig = VideoConfig(), *, overwrite=False
) -> Path:
    """Decode `video_path`, sample frames as `config` says and write them to output_dir/frames.

    Returns the frames folder. An existing folder made from the same video with the same config
    is reused; one made otherwise raises StaleOutputError unless `overwrite`. A file that is not
    a video, is empty or has no decodable frame raises InputError; a corrupt tail is a warning
    (the frames before it are used).
    """
    video_path = Path(video_path)
    output_dir = Path(output_dir)
    frames_dir = output_dir / paths.FRAMES
    summary_path = output_dir / paths.FRAMES_SUMMARY
    capture = _open(video_path)  # fail fast on bad input, before touching the output
    expected = int(max(capture.get(cv2.CAP_PROP_FRAME_COUNT), 0))
    capture.release()
    source = _source_id(video_path)
    chash = config_hash(config)
    if frames_dir.exists():
        previous = _read_summary(summary_path)
        if (
            previous is not None
            and previous.get("config_hash") == chash
            and previous.get("source") == source
            and not overwrite
        ):
            logger.info("reusing %d frames in %s", previous["summary"]["frames_kept"], frames_dir)
            return frames_dir
        if previous is not None and not overwrite:
            raise StaleOutputError(
                f"{frames_dir} holds frames of another video or video config; "
                "pass --overwrite to replace them or choose another output folder"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".frames.", dir=output_dir))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp_dir.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; frames/ gets a folder's usual mode
        summary = _sample(video_path, tmp_dir, config, expected)
        record = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "source": source,
            "config": to_dict(config),
            "config_hash": chash,
            "summary": asdict(summary),
        }
        # frames/ is only reused with a matching summary: drop the old one before replacing it
        summary_path.unlink(missing_ok=True)
        paths.replace_dir(tmp_dir, frames_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    atomic_write_json(summary_path, record)
    logger.info(
        "video %s: %d frames read, %d kept, %d dropped as blurry, %d as duplicates%s (%.1fs)",
        video_path.name,
        summary.frames_read,
        summary.frames_kept,
        summary.dropped_blurry,
        summary.dropped_duplicate,
        f", {summary.dropped_by_step} between time steps" if config.mode == "fps" else "",
        summary.seconds,
    )
    return frames_dir


def _read_summary(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def read_summary(frames_dir: Path) -> FrameSummary:
    """The FrameSummary stored by :func:`extract_frames` beside `frames_dir`."""
    summary_path = Path(frames_dir).parent / paths.FRAMES_SUMMARY
    data = _read_summary(summary_path)
    if data is None:
        raise StaleOutputError(f"{summary_path} is missing or invalid; re-run frame extraction")
    return FrameSummary(**data["summary"])


def _sample(video_path: Path, out_dir: Path, config: VideoConfig, expected: int) -> FrameSummary:
    start = time.perf_counter()
    read = kept = blurry = duplicate = by_step = 0
    width = height = 0
    last_t = 0.0
    history: list[float] = []
    last_gray = last_corners = None
    next_t = 0.0
    step = 1.0 / config.fps
    progress = tqdm(total=expected or None, desc="video frames", unit="frame", leave=False)
    for t, frame in read_frames(video_path):
        read += 1
        last_t = t
        progress.update(1)
        height, width = frame.shape[:2]
        if config.mode == "fps":
            if t + 1e-6 < next_t:
                by_step += 1
                continue
            next_t = (math.floor(t / step + 1e-6) + 1) * step
        scale = config.analysis_width / width
        size = (config.analysis_width, max(1, round(height * scale)))
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        sharp = sharpness(gray)
        reference = float(np.median(history)) if history else sharp
        history = (history + [sharp])[-config.sharpness_window :]
        if sharp < config.min_sharpness * reference:
            blurry += 1
            continue
        moved = (
            config.mode != "adaptive"
            or last_gray is None
            or motion(last_gray, last_corners, gray) >= config.min_motion
        )
        if not moved:
            duplicate += 1
            continue
        name = frame_name(t)
        if (out_dir / name).exists():  # two frames within a millisecond
            duplicate += 1
            continue
        params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
        if not cv2.imwrite(str(out_dir / name), frame, params):
            raise StorageError(f"cannot write frame {out_dir / name}")
        kept += 1
        last_gray, last_corners = gray, corners(gray)
        if config.max_frames and kept >= config.max_frames:
            logger.warning(
                "video %s: stopped at video.max_frames=%d kept frames (t=%.1fs)",
                video_path.name,
                kept,
                t,
            )
            break
    progress.close()
    truncated = not (config.max_frames and kept >= config.max_frames) and _truncated(read, expected)
    if truncated:
        message = (
            f"video {video_path}: decoded {read} of the {expected} frames its container announces; "
            "the rest is corrupt or truncated, continuing with the decoded frames"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=3)
    return FrameSummary(
        frames_read=read,
        frames_kept=kept,
        dropped_blurry=blurry,
        dropped_duplicate=duplicate,
        dropped_by_step=by_step,
        frames_expected=expected,
        truncated=truncated,
        width=width,
        height=height,
        duration_s=round(last_t, 3),
        seconds=round(time.perf_counter() - start, 3),
    )
