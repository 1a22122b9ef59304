"""The settings of a whole run: :class:`PipelineConfig` (one field per stage config) and
:func:`load_config`, which layers defaults, a YAML file (or shipped preset) and ``--set``.

The generic plumbing (:func:`~reconstruct.config.option`, validation, hashing, YAML reading)
lives in ``config.py``, which every stage imports; this module imports every stage's config
dataclass, so it cannot live there without an import cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import load_yaml, merge, override
from .errors import ConfigError
from .export import ExportConfig
from .keypoints import KeypointsConfig
from .mapping import MappingConfig
from .matching import MatchingConfig
from .orientation import OrientationConfig
from .pairs import PairsConfig
from .rescue import RescueConfig
from .video import VideoConfig

VIDEO_DEFAULTS: dict[str, Any] = {"pairs": {"strategy": "sequential"}}
"""Defaults for the frames of a video, below YAML and --set: frames overlap with their
neighbours, so they are paired in sequence."""


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """All stage settings; YAML files and `--set stage.key=value` override the defaults."""

    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)
    keypoints: KeypointsConfig = dataclasses.field(default_factory=KeypointsConfig)
    matching: MatchingConfig = dataclasses.field(default_factory=MatchingConfig)
    orientation: OrientationConfig = dataclasses.field(default_factory=OrientationConfig)
    mapping: MappingConfig = dataclasses.field(default_factory=MappingConfig)
    rescue: RescueConfig = dataclasses.field(default_factory=RescueConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)


def load_config(
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
) -> PipelineConfig:
    """The dataclass defaults, then `defaults` (e.g. :data:`VIDEO_DEFAULTS`), then the YAML
    file, then `overrides` (from --set): each layer wins over the ones before it.

    The user's layers (YAML and --set) also decide the derived choices: choosing the patch
    matcher chooses its extractor, and SIFT features get the mutual-NN matcher unless the user
    chose one.
    """
    updates: dict[str, Any] = {}
    where = "config"
    if config_path is not None:
        updates = load_yaml(config_path)
        where = str(config_path)
    if overrides:
        updates = merge(updates, overrides)
        where = f"{where} + --set" if config_path else "--set"
    config = PipelineConfig()
    if defaults:
        config = override(config, defaults, "defaults")
    config = override(config, updates, where)
    return _derived_choices(config, updates, where)


def _derived_choices(config: PipelineConfig, updates: dict[str, Any], where: str) -> PipelineConfig:
    """Settings that follow from others unless the user set them (`updates`)."""
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
