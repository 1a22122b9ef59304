"""Known cameras: the plain-text format shared by ground truth, intrinsics priors and the
synthetic scenes.

One line per image, whitespace-separated, ``#`` starts a comment::

    name fx fy cx cy qw qx qy qz tx ty tz

The pose is world-to-camera (``cam_from_world``) in the COLMAP convention (x right, y down,
z forward; pixel (0, 0) is the top-left corner of the image). Image names may not contain
whitespace in this format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .errors import InputError


@dataclass(frozen=True)
class CameraPose:
    """Pinhole intrinsics and the world-to-camera pose of one image."""

    name: str
    fx: float
    fy: float
    cx: float
    cy: float
    rotation: np.ndarray  # (3, 3) cam_from_world rotation
    translation: np.ndarray  # (3,) cam_from_world translation

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return -self.rotation.T @ self.translation

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the usual name of the calibration matrix)
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    @property
    def quaternion_wxyz(self) -> np.ndarray:
        return Rotation.from_matrix(self.rotation).as_quat(scalar_first=True)


def read_cameras_txt(path: Path) -> dict[str, CameraPose]:
    """Parse a camera file; raises InputError naming the file and line of any bad line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"camera file {path} does not exist")
    cameras: dict[str, CameraPose] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 12:
            raise InputError(
                f"{where}: expected 12 fields 'name fx fy cx cy qw qx qy qz tx ty tz', "
                f"got {len(parts)}: {raw.strip()!r}"
            )
        name = parts[0]
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise InputError(f"{where}: non-numeric value in {raw.strip()!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{where}: non-finite value in {raw.strip()!r}")
        fx, fy, cx, cy = values[:4]
        if fx <= 0 or fy <= 0:
            raise InputError(f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}")
        q = np.array(values[4:8])
        norm = np.linalg.norm(q)
        if norm < 1e-8:
            raise InputError(f"{where}: the quaternion (qw qx qy qz) is zero")
        if name in cameras:
            raise InputError(f"{where}: image {name!r} appears twice")
        rotation = Rotation.from_quat(q / norm, scalar_first=True).as_matrix()
        cameras[name] = CameraPose(name, fx, fy, cx, cy, rotation, np.array(values[8:11]))
    if not cameras:
        raise InputError(f"camera file {path} holds no cameras")
    return cameras


def write_cameras_txt(path: Path, cameras: Iterable[CameraPose]) -> Path:
    """Write cameras in the format :func:`read_cameras_txt` reads."""
    from .storage import atomic_write_text

    lines = ["# name fx fy cx cy qw qx qy qz tx ty tz (cam_from_world, COLMAP convention)"]
    for c in cameras:
        if any(ch.isspace() for ch in c.name):
            raise InputError(f"image name {c.name!r} contains whitespace; not allowed here")
        q = c.quaternion_wxyz
        values = [c.fx, c.fy, c.cx, c.cy, *q, *c.translation]
        lines.append(c.name + " " + " ".join(f"{v:.10g}" for v in values))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def rotate_camera(camera: CameraPose, k: int, width: int, height: int) -> CameraPose:
    """The camera of the image turned by k quarter turns counter-clockwise (`np.rot90(img, k)`).

    (width, height) is the size of the unturned image. A turn maps pixel (u, v) to
    (v, width - u), so the new camera axes are x' = y, y' = -x.
    """
    turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    rotation, translation = camera.rotation, camera.translation
    for _ in range(k % 4):
        fx, fy, cx, cy = fy, fx, cy, width - cx
        rotation, translation = turn @ rotation, turn @ translation
        width, height = height, width
    return CameraPose(camera.name, fx, fy, cx, cy, rotation, translation)
