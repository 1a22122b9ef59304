"""Time frame extraction (decode + sampling) and point tracking on a video.

    python scripts/benchmark_video.py VIDEO [--out DIR] [--track-frames N]

Prints frames read / kept / dropped and seconds per decoded frame for the adaptive and the fps
sampling modes, then the seconds per frame of the flow tracker on N frames from 5 corners.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2

from reconstruct.tracking import TrackingConfig, track_points
from reconstruct.video import VideoConfig, extract_frames, read_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--track-frames", type=int, default=120)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_video_"))
    rows = {}
    for label, config in {
        "adaptive (defaults)": VideoConfig(),
        "fps=2": VideoConfig(mode="fps", fps=2.0),
    }.items():
        start = time.perf_counter()
        frames_dir = extract_frames(args.video, out / label.split()[0], config, overwrite=True)
        seconds = time.perf_counter() - start
        s = read_summary(frames_dir)
        rows[label] = {
            "read": s.frames_read,
            "kept": s.frames_kept,
            "blurry": s.dropped_blurry,
            "duplicate": s.dropped_duplicate,
            "between_steps": s.dropped_by_step,
            "s_per_frame_read": round(seconds / s.frames_read, 4),
            "seconds": round(seconds, 2),
        }
    capture = cv2.VideoCapture(str(args.video))
    ok, frame = capture.read()
    capture.release()
    corners = cv2.goodFeaturesToTrack(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 5, 0.05, 50)
    points = [(float(x) + 0.5, float(y) + 0.5) for x, y in corners.reshape(-1, 2)]
    config = TrackingConfig(max_frames=args.track_frames)
    start = time.perf_counter()
    track_points(args.video, points, out / "tracked.mp4", config)
    seconds = time.perf_counter() - start
    rows["track flow (5 points, incl. decode + video write)"] = {
        "frames": args.track_frames,
        "s_per_frame": round(seconds / args.track_frames, 4),
    }
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
