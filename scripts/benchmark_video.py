"""Seconds per frame of decoding, frame sampling and each point tracker on a video.

    python scripts/benchmark_video.py VIDEO [--out DIR] [--track-frames N] [--points 5]
        [--trackers flow aliked dinov2]

Prints, as JSON:

- decode only (OpenCV, every frame, nothing else), seconds per frame;
- adaptive sampling (the defaults) and fps=2 sampling: frames read / kept / dropped and seconds per
  frame read (decode + analysis + writing the kept JPEGs);
- each tracker on the first N frames from `--points` corners: seconds per frame, including decode
  and writing the output video. ``dinov2`` runs the real ViT-S/14 architecture with random weights
  (no DINOv2 weights here): its timing is representative, its positions are not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2

from reconstruct.tracking import TrackingConfig, track_points
from reconstruct.video import VideoConfig, extract_frames, read_frames, read_summary


def _random_vits14_extractor(resolution: int):
    """The DINOv2 patch extractor on a randomly initialised ViT-S/14 (timing only)."""
    from reconstruct.models import dinov2
    from reconstruct.models.patch_features import PatchExtractor, PatchFeaturesConfig

    model = dinov2.DinoModel(dinov2.build_model("vits14"), "vits14", "cpu", "random-init")
    return PatchExtractor(PatchFeaturesConfig(resolution=resolution), model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--track-frames", type=int, default=60)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--trackers", nargs="+", default=["flow", "aliked", "dinov2"])
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_video_"))
    rows: dict = {}
    start = time.perf_counter()
    count = sum(1 for _ in read_frames(args.video))
    seconds = time.perf_counter() - start
    rows["decode only"] = {"frames": count, "s_per_frame": round(seconds / count, 4)}
    print(json.dumps(rows), flush=True)
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
        print(json.dumps({label: rows[label]}), flush=True)
    capture = cv2.VideoCapture(str(args.video))
    ok, frame = capture.read()
    capture.release()
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    corners = cv2.goodFeaturesToTrack(grey, args.points, 0.05, 50)
    points = [(float(x) + 0.5, float(y) + 0.5) for x, y in corners.reshape(-1, 2)]
    for method in args.trackers:
        config = TrackingConfig(method=method, max_frames=args.track_frames)
        extractor = _random_vits14_extractor(config.resolution) if method == "dinov2" else None
        if method == "aliked":  # load the models before timing, as the dinov2 one is
            from reconstruct.tracking import KeypointTracker

            KeypointTracker(config)
        start = time.perf_counter()
        track_points(args.video, points, out / f"{method}.mp4", config, extractor=extractor)
        seconds = time.perf_counter() - start
        label = f"track {method} ({len(points)} points, incl. decode + video write)"
        rows[label] = {
            "frames": args.track_frames,
            "s_per_frame": round(seconds / args.track_frames, 4),
        }
        print(json.dumps({label: rows[label]}), flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
