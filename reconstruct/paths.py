"""Every file and folder name a run writes below its output folder, in one place.

Stage modules name their outputs through these constants, so the on-disk layout
(docs/storage.md) can be read here at a glance.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

FEATURES = "features.h5"
"""Local features (stage keypoints)."""
GLOBAL = "global.h5"
"""DINOv2 global image descriptors (stage pairs, pairs.retrieval.model=dinov2)."""
GLOBAL_LOCAL = "global-local.h5"
"""VLAD global descriptors of the local features (stage pairs, pairs.retrieval.model=local);
a file of its own so that both descriptors coexist in one output folder and each resumes."""
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
"""Source, config and counts of the frame sampling, beside frames/ (which holds only images)."""


def is_model_dir(path: Path) -> bool:
    """True if `path` holds one COLMAP model (images.bin or images.txt)."""
    path = Path(path)
    return (path / "images.bin").is_file() or (path / "images.txt").is_file()


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap the folders `a` and `b` in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`);
    False where the OS or filesystem cannot. The standard library has no binding for it (there
    is no `os.renameat2`), hence ctypes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel, or e.g. some NFS
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`. Where the OS can, the two are swapped in one
    atomic step, so `target` is at every moment either the old or the new folder; the old one
    is then deleted (a crash before that leaves it under the name `new`). Elsewhere an old
    `target` is renamed aside, the new one renamed in right after, then the old one deleted:
    `target` is never deleted before its replacement is complete, and a crash in between
    leaves the old copy beside it."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if exchange_dirs(new, target):
        shutil.rmtree(new, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
