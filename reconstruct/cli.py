"""The `reconstruct` command line. Only this module configures logging handlers.

Every stage is a subcommand that reads the files of the previous one from the output folder;
`run` chains them. Stage settings come from the config dataclasses: `--config FILE.yaml`
overrides defaults, `--set stage.key=value` overrides both (see `reconstruct config`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from tqdm import tqdm

from . import __version__, paths
from .config import parse_set
from .errors import ReconstructError

logger = logging.getLogger("reconstruct")


class _TqdmHandler(logging.Handler):
    """Log lines that do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def _setup_logging(verbose: int, quiet: bool):
    """Configure the package's log handler; with `quiet`, no progress bars either.

    Returns a function that undoes the progress-bar change, so that a caller running `main` in
    process (tests, the benchmark script, the web app) does not keep bars off afterwards."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("reconstruct")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if quiet:
        # No progress bars: here by a new default of tqdm's constructor (tqdm reads TQDM_*
        # variables only when imported), in worker processes through the variable.
        init, env = tqdm.__init__, os.environ.get("TQDM_DISABLE")
        tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
        os.environ["TQDM_DISABLE"] = "1"

        def restore() -> None:
            tqdm.__init__ = init
            if env is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = env

        return restore
    return lambda: None


HELP_WIDTH = 100
ALL_STAGES = (
    "keypoints",
    "pairs",
    "matching",
    "orientation",
    "mapping",
    "rescue",
    "export",
    "video",
)


def _load_config(args, defaults: dict | None = None):
    """The run's settings from --config and --set (and --strategy), over `defaults`."""
    from .config import resolve_config_path
    from .settings import load_config

    overrides = parse_set(args.set)
    if getattr(args, "strategy", None):
        overrides.setdefault("pairs", {})["strategy"] = args.strategy
    config_path = resolve_config_path(args.config) if args.config else None
    return load_config(config_path, overrides, defaults=defaults)


def _settings_epilog(*stages: str) -> str:
    """The settings of `stages` (all when none), one per entry, wrapped to HELP_WIDTH."""
    from .config import describe
    from .settings import PipelineConfig

    stages = stages or ALL_STAGES
    rows = [r for r in describe(PipelineConfig()) if r[0].split(".")[0] in stages]
    lines = ["settings (--set KEY=VALUE, or in a --config YAML file):"]
    for key, default, help_ in rows:
        lines.append(f"  {key}")
        lines += textwrap.wrap(
            f"{help_} [default: {default}]",
            HELP_WIDTH,
            initial_indent=" " * 6,
            subsequent_indent=" " * 6,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def _common(p: argparse.ArgumentParser, *, config: bool = True, device: bool = True) -> None:
    if config:
        p.add_argument(
            "--config", help="YAML file, or the name of a shipped preset: default, fast, accurate"
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="STAGE.KEY=VALUE",
            help="override one setting (repeatable), e.g. keypoints.max_keypoints=1024",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace outputs written with a different configuration instead of refusing",
        )
    if device:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _stage_command(
    sub,
    name: str,
    help: str,
    stages: tuple[str, ...] = (),
    *,
    inputs: str | None = None,
    images_help: str = "folder of photos",
    output_help: str = "output folder",
    executor: bool = False,
    device: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand with the settings of `stages` (all when empty) in its help, its inputs
    (``"images"``: IMAGE_DIR -o OUTPUT; ``"output"``: the OUTPUT folder of earlier stages) and
    the common options."""
    p = sub.add_parser(
        name,
        help=help,
        epilog=_settings_epilog(*stages),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if inputs == "images":
        p.add_argument("image_dir", type=Path, help=images_help)
        p.add_argument("-o", "--output", type=Path, required=True, help=output_help)
    elif inputs == "output":
        p.add_argument("output", type=Path, help=output_help)
    _common(p, device=device)
    if executor:
        _executor_args(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconstruct",
        description="Photos in, COLMAP model out (ALIKED + LightGlue + pycolmap).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _stage_command(
        sub,
        "run",
        "all stages: extract, pairs, orient, match, map, export",
        inputs="images",
        images_help="folder of photos, a video file, or a folder of videos",
        executor=True,
    )
    p = _stage_command(sub, "demo", "reconstruct a built-in synthetic scene and score it")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p = _stage_command(
        sub, "pairs", "stage 2: choose image pairs -> pairs.txt", ("pairs",), inputs="images"
    )
    p.add_argument("--strategy", help="shorthand for --set pairs.strategy=...")
    _stage_command(
        sub,
        "extract",
        "stage 1: local features -> features.h5",
        ("keypoints",),
        inputs="images",
        executor=True,
    )
    _stage_command(
        sub,
        "match",
        "stage 4: match pairs.txt with features.h5 -> matches.h5",
        ("matching",),
        inputs="output",
        output_help="output folder holding pairs.txt and features.h5",
        executor=True,
    )
    _stage_command(
        sub,
        "orient",
        "stage 3: turn sideways images upright -> rotations.json (re-extracts turned images)",
        ("orientation", "keypoints", "matching"),
        inputs="images",
        output_help="output folder of `pairs` (or of `match`: then turned pairs are re-matched)",
    )
    _stage_command(
        sub,
        "map",
        "stage 5: structure from motion -> sparse/",
        ("mapping",),
        inputs="images",
        device=False,
    )
    _stage_command(
        sub,
        "export",
        "stage 6: largest model -> model/ (.bin, .txt), points.ply",
        ("export",),
        inputs="output",
        output_help="output folder holding sparse/",
        device=False,
    )
    _add_result_commands(sub)
    _add_other_commands(sub)
    return parser


def _add_result_commands(sub) -> None:
    """The commands that read a run's outputs or settings: eval, config, viz."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("eval", help="score a model against ground-truth cameras")
    p.add_argument("model", type=Path, help="output folder, sparse/ folder or model folder")
    p.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="cameras.txt (name fx fy cx cy qw qx qy qz tx ty tz) or a COLMAP model",
    )
    p.add_argument("--json", type=Path, help="where to write the metrics (default: print only)")
    _common(p, config=False, device=False)

    _stage_command(sub, "config", "print the resolved configuration", device=False)

    p = sub.add_parser("viz", help="pictures: matches of a pair, DINOv2 PCA, the sparse model")
    vsub = p.add_subparsers(dest="viz", required=True, metavar="WHAT")
    q = vsub.add_parser("matches", help="matches of a pair (RANSAC inliers green, outliers red)")
    q.add_argument("output", type=Path, help="output folder holding features.h5 and matches.h5")
    q.add_argument(
        "name0",
        nargs="?",
        help="the pair's images, right after OUTPUT (none: the pair with the most inliers)",
    )
    q.add_argument("name1", nargs="?")
    q.add_argument(
        "--worst",
        action="store_true",
        help="no names: the pair with the fewest inliers (of those with 8+ matches)",
    )
    q.add_argument("--images", type=Path, help="image folder (default: the one in run.json)")
    q.add_argument("-o", "--png", type=Path, help="default: OUTPUT/viz/matches_NAME0_NAME1.png")
    q.add_argument("--max-lines", type=int, default=300, help="draw at most this many matches")
    _common(q, config=False, device=False)
    q = vsub.add_parser(
        "pca",
        help="PC 1-3 of an image's DINOv2 patch features and foreground",
        epilog=_settings_epilog("keypoints"),
        formatter_class=fmt,
    )
    q.add_argument("image", type=Path)
    q.add_argument("-o", "--png", type=Path, help="default: IMAGE_STEM_pca.png here")
    _common(q)
    q = vsub.add_parser("model", help="sparse points and camera frusta from a few viewpoints")
    q.add_argument("output", type=Path, help="output folder, sparse/ folder or model folder")
    q.add_argument("-o", "--png", type=Path, help="default: OUTPUT/viz/model.png")
    q.add_argument("--views", type=int, default=3)
    _common(q, config=False, device=False)


def _add_other_commands(sub) -> None:
    """Commands beside the reconstruction: point tracking, the web app, model weights."""
    p = sub.add_parser(
        "track",
        help="track points through a video -> tracked.mp4 + tracked.csv",
        description="Settings: --set tracking.KEY=VALUE (fields of tracking.TrackingConfig).",
    )
    p.add_argument("video", type=Path)
    p.add_argument(
        "--point", action="append", required=True, help="X,Y in pixels of the first frame"
    )
    p.add_argument("-o", "--output", type=Path, default=Path("tracked.mp4"))
    p.add_argument(
        "--method",
        choices=["flow", "aliked", "dinov2"],
        default="flow",
        help="flow: Lucas-Kanade; aliked: ALIKED + LightGlue (local affine); dinov2: patches",
    )
    _common(p, device=False)

    p = sub.add_parser("app", help="the web app (needs: pip install -e '.[app]')")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--workdir", type=Path, default=Path("."), help="uploads and runs go here")
    _common(p, config=False, device=False)

    p = sub.add_parser("weights", help="model weights: `reconstruct weights list`")
    p.add_argument("action", choices=["list"])
    _common(p, config=False, device=False)


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where extraction and matching run (ray: pip install -e '.[distributed]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join a Ray cluster: auto or HOST:PORT (default: start a local instance)",
    )


def _run_options(args) -> dict:
    """The options every model stage takes from the command line."""
    return {"device": args.device, "overwrite": args.overwrite}


@contextlib.contextmanager
def _executor(args):
    from .executors import make_executor

    executor = make_executor(args.executor, address=args.ray_address, device=args.device)
    try:
        yield executor
    finally:
        executor.close()


def _video_inputs(path: Path) -> list[Path]:
    """The videos to reconstruct: `path` itself, or the videos in a folder holding no photos."""
    from .images import IMAGE_EXTENSIONS
    from .video import is_video

    if path.is_file() and is_video(path):
        return [path]
    if path.is_dir():
        # not list_images(): it raises on a folder without photos and warns about the videos
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files):
            return sorted(p for p in path.iterdir() if p.is_file() and is_video(p))
    return []


def _cmd_run(args) -> int:
    from .pipeline import run_pipeline
    from .settings import VIDEO_DEFAULTS

    videos = _video_inputs(args.image_dir)
    config = _load_config(args, defaults=VIDEO_DEFAULTS if videos else None)
    jobs = [(args.image_dir, args.output)]
    if videos:
        from .video import extract_frames, read_summary

        jobs = []
        for video in videos:
            out = args.output if len(videos) == 1 else args.output / video.stem
            frames = extract_frames(video, out, config.video, overwrite=args.overwrite)
            s = read_summary(frames)
            print(
                f"{video.name}: read {s.frames_read} frames, kept {s.frames_kept}, dropped "
                f"{s.dropped_blurry} as blurry and {s.dropped_duplicate} as duplicates"
            )
            jobs.append((frames, out))
    with _executor(args) as executor:
        for image_dir, out in jobs:
            summary = run_pipeline(image_dir, out, config, executor=executor, **_run_options(args))
            print(summary.format())
    return 0


def _cmd_track(args) -> int:
    from .config import override
    from .tracking import TrackingConfig, parse_point, track_points

    updates = parse_set(args.set).get("tracking", {})
    updates["method"] = args.method
    config = override(TrackingConfig(), updates, "--set")
    out = track_points(args.video, [parse_point(p) for p in args.point], args.output, config)
    print(out)
    return 0


def _cmd_app(args) -> int:
    from .app import launch

    return launch(host=args.host, port=args.port, workdir=args.workdir)


def _cmd_demo(args) -> int:
    from .evaluation import evaluate_reconstruction, format_metrics
    from .pipeline import run_pipeline
    from .synthetic import SceneConfig, make_scene

    config = _load_config(args)
    scene_dir = args.output / "scene"
    scene = make_scene(scene_dir, SceneConfig(num_images=args.num_images, seed=args.seed))
    logger.info("Synthetic scene with %d images in %s", len(scene.cameras), scene.image_dir)
    summary = run_pipeline(scene.image_dir, args.output, config, **_run_options(args))
    metrics = evaluate_reconstruction(args.output, scene.gt_path)
    from .storage import atomic_write_json

    atomic_write_json(args.output / paths.EVAL, metrics.to_dict())
    print(summary.format())
    print(format_metrics(metrics))
    return 0


def _cmd_pairs(args) -> int:
    from .pairs import select_pairs
    from .pipeline import readable_images

    config = _load_config(args)
    features = args.output / paths.FEATURES
    # as `run` does: skip unreadable images
    names = readable_images(features) if features.is_file() else None
    path = select_pairs(
        args.image_dir, args.output, config.pairs, image_names=names, **_run_options(args)
    )
    print(path)
    return 0


def _cmd_extract(args) -> int:
    from .images import check_any_readable, list_images
    from .keypoints import extract_keypoints
    from .pipeline import previous_rotations

    config = _load_config(args)
    names = list_images(args.image_dir)
    check_any_readable(args.image_dir, names)
    turns = previous_rotations(args.output / paths.ROTATIONS, config.orientation, args.overwrite)
    with _executor(args) as executor:
        path = extract_keypoints(
            args.image_dir,
            args.output,
            config.keypoints,
            image_names=names,
            rotations=turns,
            executor=executor,
            **_run_options(args),
        )
    print(path)
    return 0


def _cmd_match(args) -> int:
    from .matching import match_pairs

    config = _load_config(args)
    with _executor(args) as executor:
        path = match_pairs(
            args.output / paths.PAIRS,
            args.output / paths.FEATURES,
            args.output,
            config.matching,
            executor=executor,
            **_run_options(args),
        )
    print(path)
    return 0


def _cmd_orient(args) -> int:
    from .orientation import correct_orientation

    config = _load_config(args)
    path = correct_orientation(
        args.image_dir,
        args.output / paths.FEATURES,
        args.output / paths.PAIRS,
        # before matching (the order `run` uses) nothing is matched twice; after it, the pairs
        # of turned images are matched again
        matches if (matches := args.output / paths.MATCHES).exists() else None,
        args.output,
        config.orientation,
        config.keypoints,
        config.matching,
        **_run_options(args),
    )
    print(path)
    return 0


def _cmd_map(args) -> int:
    from .mapping import run_mapping

    config = _load_config(args)
    pairs_path = args.output / paths.PAIRS
    path = run_mapping(
        args.image_dir,
        args.output / paths.FEATURES,
        args.output / paths.MATCHES,
        args.output,
        config.mapping,
        pairs_path=pairs_path if pairs_path.is_file() else None,
    )
    print(path)
    return 0


def _cmd_export(args) -> int:
    from .export import export_model

    config = _load_config(args)
    print(export_model(args.output / paths.SPARSE, args.output, config.export))
    return 0


def _cmd_eval(args) -> int:
    from .evaluation import evaluate_reconstruction, format_metrics
    from .storage import atomic_write_json

    metrics = evaluate_reconstruction(args.model, args.gt)
    print(format_metrics(metrics))
    if args.json:
        atomic_write_json(args.json, metrics.to_dict())
    return 0


def _cmd_config(args) -> int:
    from .config import to_dict

    print(json.dumps(to_dict(_load_config(args)), indent=2))
    return 0


def _cmd_viz(args) -> int:
    from . import viz

    if args.viz == "matches":
        path = viz.draw_matches(
            args.images,
            args.output,
            args.name0,
            args.name1,
            args.png,
            worst=args.worst,
            max_lines=args.max_lines,
        )
    elif args.viz == "pca":
        from .device import resolve_device

        patch = _load_config(args).keypoints.patch
        path = viz.draw_pca(args.image, args.png, patch, resolve_device(args.device))
    else:
        path = viz.draw_model(args.output, args.png, views=args.views)
    print(path)
    return 0


def _cmd_weights(args) -> int:
    from .models.dinov2 import format_weights_table

    print(format_weights_table())
    return 0


COMMANDS = {
    "run": _cmd_run,
    "demo": _cmd_demo,
    "pairs": _cmd_pairs,
    "extract": _cmd_extract,
    "match": _cmd_match,
    "orient": _cmd_orient,
    "map": _cmd_map,
    "export": _cmd_export,
    "eval": _cmd_eval,
    "config": _cmd_config,
    "weights": _cmd_weights,
    "viz": _cmd_viz,
    "track": _cmd_track,
    "app": _cmd_app,
}
# Commands that write into their output folder take its lock for their whole run (one writer
# per folder); read-only ones (eval, viz, config, weights) do not.
LOCKED_COMMANDS = frozenset({"run", "demo", "extract", "pairs", "match", "orient", "map", "export"})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    restore_progress = _setup_logging(args.verbose, args.quiet)
    try:
        if args.command in LOCKED_COMMANDS:
            from .lock import output_lock

            with output_lock(args.output):
                return COMMANDS[args.command](args)
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader went away (`reconstruct config | head`): stop quietly, as cat does. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ReconstructError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished items are kept; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        restore_progress()


if __name__ == "__main__":
    sys.exit(main())
