"""Stage 6: export the largest model as COLMAP binary + text and a coloured PLY point cloud;
and the reader of COLMAP models for the rest of the package.

Writing: :func:`export_model`, :func:`write_ply`. Reading (used by evaluation, viz, the app and
the benchmarks): :func:`model_dirs`, :func:`model_statistics`, :func:`read_poses`,
:func:`read_all_poses`, :func:`read_points3d`. Both halves live here because pycolmap calls
live here and in mapping.py only: everything else gets models as plain data (poses keyed by
image name, numpy arrays), never COLMAP ids.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .config import option
from .errors import DiskFullError, MappingError, StorageError
from .gt import CameraPose
from .storage import make_public, storage_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Settings of the export stage (`export.*`)."""

    min_track_length: int = option(3, "PLY: keep points seen in at least this many images")
    max_reprojection_error: float = option(2.0, "PLY: keep points with a smaller mean error, px")
    text: bool = option(True, "also write the model as COLMAP .txt files (beside the .bin)")


def _load(model_dir: Path):
    import pycolmap

    model_dir = Path(model_dir)
    if not paths.is_model_dir(model_dir):
        raise StorageError(f"{model_dir} holds no COLMAP model (images.bin or images.txt)")
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # noqa: BLE001 - pycolmap raises ValueError, IndexError, MemoryError
        raise StorageError(
            f"{model_dir} holds a COLMAP model that cannot be read ({type(e).__name__}: "
            f"{str(e).strip()[:200]}); it may have been cut short by a full disk. Re-run the "
            "stage that wrote it (`reconstruct map` for sparse/, `reconstruct export` for model/)."
        ) from None


def model_dirs(sparse_dir: Path) -> list[Path]:
    """Model folders of a sparse folder written by run_mapping, largest first."""
    sparse_dir = Path(sparse_dir)
    if paths.is_model_dir(sparse_dir):
        return [sparse_dir]
    if not sparse_dir.is_dir():
        raise StorageError(
            f"{sparse_dir} does not exist: there is no sparse model to export; "
            "run `reconstruct map` first"
        )
    dirs = sorted(
        (d for d in sparse_dir.iterdir() if d.is_dir() and d.name.isdigit()),
        key=lambda d: int(d.name),
    )
    if not dirs:
        raise StorageError(f"{sparse_dir} holds no COLMAP models; run `reconstruct map` first")
    return dirs


def model_statistics(model_dir: Path) -> dict:
    """Counts and quality numbers of one model."""
    rec = _load(model_dir)
    track_lengths = [p.track.length() for p in rec.points3D.values()]
    return {
        "registered_images": int(rec.num_reg_images()),
        "cameras": int(rec.num_cameras()),
        "points": int(rec.num_points3D()),
        "observations": int(sum(track_lengths)),
        "mean_track_length": float(np.mean(track_lengths)) if track_lengths else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error())
        if track_lengths
        else 0.0,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image())
        if rec.num_reg_images()
        else 0.0,
    }


def read_poses(model_dir: Path) -> dict[str, CameraPose]:
    """Registered images of one model as CameraPose (cam_from_world, pinhole part of the
    intrinsics)."""
    rec = _load(model_dir)
    poses = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam = image.camera
        pose = image.cam_from_world()
        poses[image.name] = CameraPose(
            name=image.name,
            fx=float(cam.focal_length_x),
            fy=float(cam.focal_length_y),
            cx=float(cam.principal_point_x),
            cy=float(cam.principal_point_y),
            rotation=np.asarray(pose.rotation.matrix(), dtype=np.float64),
            translation=np.asarray(pose.translation, dtype=np.float64),
        )
    return poses


def read_all_poses(sparse_dir: Path) -> list[dict[str, CameraPose]]:
    """Poses of every model in a sparse folder (or of one model folder), largest first."""
    return [read_poses(d) for d in model_dirs(sparse_dir)]


# Temporary names of an export in progress, beside its outputs (hidden, never read as models).
_TMP_MODEL = f".{paths.MODEL}."
_TMP_PLY = f".{paths.PLY}."
# Bytes of the .txt files per byte of the .bin ones, rounded up (measured 1.2 to 1.8 on a
# pycolmap synthetic model of 30 images and 20,000 points); for the disk-full message only.
_TEXT_PER_BINARY = 2


def export_model(sparse_dir: Path, output_dir: Path, config: ExportConfig = ExportConfig()) -> Path:
    """Write the largest model to ``output_dir/model`` (.bin and .txt) and ``points.ply``;
    returns the model folder.

    Both are written under temporary names and checked (pycolmap ignores write errors: on a
    full disk it leaves short files and raises nothing), then moved in: ``model/`` is swapped
    with the new folder in one atomic step where the OS can (see `paths.replace_dir`), then
    ``points.ply`` is replaced. A kill at any moment leaves each of the two complete, old or
    new (a kill between the two renames leaves the new model beside the old PLY until the
    next export), and hidden temporaries that the next export removes. A full disk, a folder that
    cannot be written or an incomplete write is a typed `StorageError`; the previous export is
    then left as it was.
    """
    dirs = model_dirs(sparse_dir)
    if not dirs:
        raise MappingError(f"no model to export in {sparse_dir}")
    rec = _load(dirs[0])
    output_dir = Path(output_dir)
    model_dir, ply_path = output_dir / paths.MODEL, output_dir / paths.PLY
    _remove_leftovers(output_dir)
    need = _export_bytes(dirs[0], rec, config)
    tmp_dir = tmp_ply = None
    try:
        tmp_dir = Path(tempfile.mkdtemp(dir=output_dir, prefix=_TMP_MODEL))
        _write_model(rec, dirs[0], tmp_dir, config.text, model_dir, need)
        fd, name = tempfile.mkstemp(dir=output_dir, prefix=_TMP_PLY, suffix=".ply")
        os.close(fd)
        tmp_ply = Path(name)
        kept = _write_ply_file(rec, tmp_ply, config, need)
        make_public(tmp_dir)
        paths.replace_dir(tmp_dir, model_dir)
        tmp_dir = None
        os.replace(tmp_ply, ply_path)
        tmp_ply = None
    except OSError as e:
        raise _export_error(e, model_dir, need) from None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if tmp_ply is not None:
            tmp_ply.unlink(missing_ok=True)
    logger.info(
        "Exported model with %d images and %d points to %s; %d points in %s",
        rec.num_reg_images(),
        rec.num_points3D(),
        model_dir,
        kept,
        ply_path,
    )
    return model_dir


def _remove_leftovers(output_dir: Path) -> None:
    """Delete the temporaries of an export that was killed (the caller holds the folder's lock,
    see lock.py). If it was killed while `paths.replace_dir` had the old model aside (only where
    folders cannot be swapped atomically), the old model is first put back."""
    if not output_dir.is_dir():
        return
    model_dir = output_dir / paths.MODEL
    leftovers = sorted(p for p in output_dir.iterdir() if p.name.startswith(_TMP_MODEL))
    if not model_dir.exists():
        for p in leftovers:
            if paths.is_model_dir(p / paths.MODEL):
                os.replace(p / paths.MODEL, model_dir)
                logger.warning("Restored %s from an interrupted export", model_dir)
                break
    leftovers += sorted(p for p in output_dir.iterdir() if p.name.startswith(_TMP_PLY))
    for p in leftovers:
        logger.info("Removing %s, left by an interrupted export", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _export_bytes(source_dir: Path, rec, config: ExportConfig) -> int:
    """Rough size of an export of `rec` (read from `source_dir`, a binary model), for the
    disk-full message."""
    binary = sum(p.stat().st_size for p in Path(source_dir).glob("*.bin"))
    return binary * (1 + (_TEXT_PER_BINARY if config.text else 0)) + 15 * rec.num_points3D()


def _counts(rec) -> tuple[int, ...]:
    return (
        rec.num_cameras(),
        rec.num_images(),
        rec.num_reg_images(),
        rec.num_points3D(),
        rec.compute_num_observations(),
    )


def _write_model(rec, source_dir: Path, folder: Path, text: bool, target: Path, need: int) -> None:
    """`rec` (read from `source_dir`) as COLMAP .bin (and .txt) files in `folder`, checked and
    fsynced.

    pycolmap's writers do not report errors (a 100 KB tmpfs got a 0-byte points3D.bin and no
    exception), and reading a cut-short .bin back is unsafe (pycolmap took 12 GB before the OOM
    killer stopped it), so: the .bin files of a binary source are copied by Python, whose writes
    raise ENOSPC (pycolmap 4.2 writes a model it read byte for byte as it found it, measured on
    synthetic models); the .txt files are read back, which is safe (line by line) and costs
    about what writing did (1.0 s against 1.5 s for 30 images and 20,000 points), and their
    counts compared with `rec`. A short write is a `DiskFullError` when the disk is (nearly)
    full, else a `StorageError`.
    """
    import pycolmap

    sources = sorted(Path(source_dir).glob("*.bin"))
    try:
        if (Path(source_dir) / "images.bin").is_file():
            for src in sources:
                shutil.copyfile(src, folder / src.name)
        else:  # a text-only source: no check of the .bin but the free space below
            rec.write_binary(str(folder))
        if text:
            rec.write_text(str(folder))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - pycolmap's failed checks are ValueErrors
        _incomplete(folder, target, need, f"pycolmap could not write the files: {e}")
    if text:
        back = pycolmap.Reconstruction()
        try:
            back.read_text(str(folder))
            ok = _counts(back) == _counts(rec)
        except Exception:  # noqa: BLE001 - pycolmap raises ValueError, IndexError
            ok = False
        if not ok:
            _incomplete(folder, target, need, "its .txt files do not read back as the model")
    if _free_bytes(folder) <= 0:  # a write may have been cut short, and nothing said so
        _incomplete(folder, target, need, "the disk filled up while it was written")
    _fsync_tree(folder)


def _export_error(e: OSError, target: Path, need: int) -> StorageError:
    """The typed error of an `OSError` met while exporting to `target`."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskFullError(
            f"no space left on the device of {target.parent} while exporting {target.name} "
            f"({e.strerror or os.strerror(errno.ENOSPC)}). The previous {paths.MODEL}/ and "
            f"{paths.PLY}, if any, are kept as they were: free at least "
            f"{max(1, -(-need // 2**20))} MB (or choose another -o) and re-run the same command."
        )
    return storage_error(e, target, need_bytes=need)


def _incomplete(written: Path, target: Path, need: int, what: str):
    """Raise the error for an export that came out short."""
    if _free_bytes(written.parent) < need:
        raise _export_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), target, need)
    raise StorageError(
        f"the export to {target} came out incomplete ({written}: {what}); {target} was left as "
        f"it was. Check the disk of {target.parent} and re-run the same command, or choose "
        "another -o."
    )


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _fsync_tree(folder: Path) -> None:
    """Flush the files of `folder` and the folder itself to disk before it is renamed in."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_ply(rec, path: Path, config: ExportConfig) -> int:
    """Coloured PLY of the points passing the track-length and error filters (atomic); returns
    how many points it holds. `rec` itself is left unchanged (the filter works on a copy)."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".ply")
    except OSError as e:
        raise storage_error(e, path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        kept = _write_ply_file(rec, tmp, config, 15 * rec.num_points3D())
        os.replace(tmp, path)
    except OSError as e:
        raise _export_error(e, path, 15 * rec.num_points3D()) from None
    finally:
        tmp.unlink(missing_ok=True)
    return kept


# Sizes of the PLY property types pycolmap writes (binary little endian). A size check of the
# written file, not a PLY reader: the header says how many vertices of how many bytes follow.
_PLY_TYPE_BYTES = {"char": 1, "uchar": 1, "short": 2, "ushort": 2, "int": 4, "uint": 4}
_PLY_TYPE_BYTES |= {"float": 4, "double": 8, "int8": 1, "uint8": 1, "float32": 4, "float64": 8}


def _write_ply_file(rec, path: Path, config: ExportConfig, need: int) -> int:
    """Write the filtered PLY of `rec` to `path` (not atomic; checked and fsynced)."""
    import pycolmap

    rec = pycolmap.Reconstruction(rec)
    for pid in list(rec.points3D.keys()):
        p = rec.points3D[pid]
        if p.track.length() < config.min_track_length or p.error > config.max_reprojection_error:
            rec.delete_point3D(pid)
    try:
        rec.export_PLY(str(path))
    except Exception as e:  # noqa: BLE001 - pycolmap's failed checks are ValueErrors
        _incomplete(path, path, need, f"pycolmap could not write the point cloud: {e}")
    kept = int(rec.num_points3D())
    if not _ply_complete(path, kept):
        _incomplete(path, path, need, "the point cloud is cut short")
    make_public(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return kept


def _ply_complete(path: Path, num_points: int) -> bool:
    """Whether the binary PLY at `path` holds its header and `num_points` whole vertices."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if end < 0:
        return False
    header = data[:end].decode("ascii", "replace").splitlines()
    if not any(line.startswith("format binary_little_endian") for line in header):
        return data.endswith(b"\n")  # ascii: at least not cut mid-line
    vertex = sum(
        _PLY_TYPE_BYTES.get(line.split()[1], 0)
        for line in header
        if line.startswith("property ") and len(line.split()) == 3
    )
    counts = [int(line.split()[2]) for line in header if line.startswith("element vertex")]
    return counts == [num_points] and len(data) == end + len(b"end_header\n") + num_points * vertex


def read_points3d(model_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse points of one model: xyz float64 (P, 3), rgb uint8 (P, 3), track length (P,)."""
    rec = _load(model_dir)
    pts = list(rec.points3D.values())
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros((0,), np.int64)
    xyz = np.array([p.xyz for p in pts], dtype=np.float64)
    rgb = np.array([p.color for p in pts], dtype=np.uint8)
    tracks = np.array([p.track.length() for p in pts], dtype=np.int64)
    return xyz, rgb, tracks
