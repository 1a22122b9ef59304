"""Every file and folder name a run writes below its output folder, in one place.

Stage modules name their outputs through these constants, so the on-disk layout
(docs/storage.md) can be read here at a glance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FEATURES = "features.h5"
"""Local features (stage keypoints)."""
GLOBAL = "global.h5"
"""Global image descriptors (stage pairs, retrieval)."""
PAIRS = "pairs.txt"
"""Image pairs, one `name0 name1` per line (stage pairs)."""
PAIRS_REPORT = "pairs_report.json"
"""How the pairs were chosen (stage pairs)."""
MATCHES = "matches.h5"
"""Matches of each pair (stage matching)."""
ROTATIONS = "rotations.json"
"""Images turned upright before extraction (stage orientation)."""
DATABASE = "database.db"
"""COLMAP database (stage mapping)."""
SPARSE = "sparse"
"""All models of the mapper, one numbered folder each (stage mapping)."""
MAPPING_SUMMARY = "mapping.json"
"""Counts of the mapping stage, inside sparse/."""
COLMAP_LOG = "colmap.log"
"""Mapper log (stage mapping)."""
MODEL = "model"
"""The largest model as COLMAP .bin and .txt (stage export)."""
PLY = "points.ply"
"""Coloured point cloud of the largest model (stage export)."""
RUN_SUMMARY = "run.json"
"""Summary of `reconstruct run`."""
EVAL = "eval.json"
"""Metrics written by `reconstruct demo`."""
VIZ = "viz"
"""Pictures written by `reconstruct viz`."""
FRAMES = "frames"
"""Frames kept from a video, named by timestamp (`reconstruct run VIDEO`)."""
FRAMES_SUMMARY = "frames.json"
"""Counts of the frame sampling, inside frames/."""


def is_model_dir(path: Path) -> bool:
    """True if `path` holds one COLMAP model (images.bin or images.txt)."""
    path = Path(path)
    return (path / "images.bin").is_file() or (path / "images.txt").is_file()


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`. An old `target` is renamed aside, the new one
    renamed in right after, then the old one deleted: `target` is never deleted before its
    replacement is complete, and a crash in between leaves the old copy beside it."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
