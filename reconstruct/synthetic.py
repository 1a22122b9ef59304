"""Procedural synthetic scenes with known cameras, for ``reconstruct demo`` and end-to-end tests.

A scene is a handful of bounded, textured planes. The ``corner`` layout (the default): a ground
plane, two walls meeting at an oblique corner and two boxes standing on the ground, so there is
real depth variation (a single plane would be a homography, a degenerate case for structure from
motion). Cameras sit on an arc (up to 180 degrees) around the scene at slightly varying heights
and look at its centre, so every view sees most of the geometry. The ``object`` layout: three boxes
on a large textured ground and no walls, so cameras can circle it on a full 360 degree ring, as
in photos taken around an object. The ``pedestal`` layout: the same boxes floating on black, no
ground and a black background, as in photos of an object on a black cloth: every feature is on
the object, and the view changes most where its outline does.

World frame: metres, z up, the ground is z = 0 and the cameras look roughly along +y. Camera poses
follow the COLMAP convention of :mod:`reconstruct.gt`: ``cam_from_world`` rotation and translation,
camera x right, y down, z forward, pixel (0, 0) is the top-left corner of the image, so the centre
of the first pixel is (0.5, 0.5) and the principal point of a W x H image is (W / 2, H / 2) plus
``principal_offset``.

Rendering is exact ray casting: each pixel's ray is intersected with every plane, the nearest hit in
front of the camera wins and its texture is sampled bilinearly at the hit's plane coordinates. The
image is rendered at ``supersample`` times the resolution and reduced with area averaging, so each
output pixel is the mean over its footprint. Textures are procedural (fractal colour noise under
random shapes at several scales), different per plane and fully determined by the seed.

The on-disk result of :func:`make_scene`::

    <out_dir>/images/view_000.jpg ...   the rendered views
    <out_dir>/gt/cameras.txt            their intrinsics and poses (see reconstruct.gt)
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm import tqdm

from .config import option
from .gt import CameraPose, write_cameras_txt
from .storage import atomic_write_bytes

logger = logging.getLogger(__name__)

# Random perturbations of the cameras (per seed), so the poses are generic rather than exactly on
# a circle looking at one point with zero roll.
_TARGET_JITTER = 0.1  # metres
_ROLL_JITTER_DEG = 2.0
_SCENE_TARGET = np.array([0.0, 1.0, 0.6])  # the point the cameras look at (before jitter)
_SHAPES_PER_M2 = 70  # random shapes drawn on the textures
_LIGHT = np.array([0.5, -0.4, 0.75])  # direction towards the light that shades each plane

_IMAGE_NAME = re.compile(r"view_\d{3,}\.(png|jpg)")


@dataclass(frozen=True, kw_only=True)
class SceneConfig:
    """How to build a synthetic scene: image size, cameras and textures."""

    num_images: int = option(8, "number of views rendered along the camera arc")
    width: int = option(640, "image width in pixels")
    height: int = option(480, "image height in pixels")
    focal: float | None = option(
        None,
        "focal length in pixels (fx = fy); None means equal to the width (53 deg field of view)",
    )
    principal_offset: tuple[float, float] = option(
        (0.0, 0.0),
        "principal point minus the image centre, pixels (real lenses: within 1-2% of the size)",
    )
    seed: int = option(0, "random seed of the textures and of the small camera perturbations")
    image_format: Literal["png", "jpg"] = option("jpg", "file format of the rendered views")
    jpeg_quality: int = option(95, "JPEG quality (1-100) when image_format is jpg")
    layout: Literal["corner", "object", "pedestal"] = option(
        "corner",
        "corner: walls and boxes, seen from an arc of up to 180 deg; object: boxes on the ground, "
        "no walls, so the cameras can circle it (arc up to 360 deg); pedestal: the boxes alone "
        "on a black background",
    )
    arc_degrees: float = option(
        60.0, "total angle of the camera arc around the scene centre (360: a closed ring)"
    )
    distance: float = option(6.5, "distance in metres from the cameras to the scene centre")
    camera_height: float = option(3.0, "mean camera height above the ground in metres")
    height_variation: float = option(0.4, "cameras' height varies by up to this many metres")
    texels_per_metre: float = option(256.0, "texture resolution on the planes")
    contrast: float = option(
        1.0, "texture contrast about mid-grey (1: as drawn; 0.05: a nearly textureless scene)"
    )
    supersample: int = option(2, "render at this many times the resolution, then area-average")

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {self.num_images}")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.width}x{self.height}")
        if (
            len(self.principal_offset) != 2
            or max(map(abs, self.principal_offset)) > min(self.width, self.height) / 4
        ):
            raise ValueError(
                f"principal_offset must be two numbers within a quarter of the image size, got "
                f"{self.principal_offset}"
            )
        if self.focal is not None and not self.focal > 0:
            raise ValueError(f"focal must be positive, got {self.focal}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        max_arc = 180 if self.layout == "corner" else 360
        if not 0 <= self.arc_degrees <= max_arc:
            raise ValueError(
                f"arc_degrees must be in 0..{max_arc} for layout {self.layout!r} (the corner's "
                f"walls close one side), got {self.arc_degrees}"
            )
        if not self.distance > 3:
            raise ValueError(f"distance must exceed 3 m (the scene's size), got {self.distance}")
        if not self.camera_height - abs(self.height_variation) > 0.2:
            raise ValueError(
                "cameras must stay above the ground: camera_height - height_variation must exceed "
                f"0.2 m, got {self.camera_height} and {self.height_variation}"
            )
        if not 16 <= self.texels_per_metre <= 2048:
            raise ValueError(f"texels_per_metre must be in 16..2048, got {self.texels_per_metre}")
        if not 0 < self.contrast <= 1:
            raise ValueError(f"contrast must be in (0, 1], got {self.contrast}")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample must be in 1..4, got {self.supersample}")

    @property
    def focal_px(self) -> float:
        """The focal length actually used, in pixels."""
        return float(self.width) if self.focal is None else float(self.focal)


@dataclass(frozen=True)
class SyntheticScene:
    """A rendered scene on disk and its ground-truth cameras."""

    root: Path  # the scene folder
    image_dir: Path  # root / "images"
    gt_path: Path  # root / "gt" / "cameras.txt"
    cameras: dict[str, CameraPose]  # keyed by image name (relative to image_dir)


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Plane:
    """A textured rectangle: points ``origin + a * axis_u + b * axis_v``, 0 <= a, b <= size."""

    name: str
    origin: np.ndarray  # (3,) world position of the texture's corner (texel row 0, column 0)
    axis_u: np.ndarray  # (3,) unit vector along texture columns
    axis_v: np.ndarray  # (3,) unit vector along texture rows, orthogonal to axis_u
    size: tuple[float, float]  # extent along axis_u and axis_v, metres

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.axis_u, self.axis_v)


@dataclass(frozen=True)
class World:
    """The scene's planes, their textures (RGB uint8, one per plane) and background colours."""

    planes: tuple[Plane, ...]
    textures: tuple[np.ndarray, ...] = field(repr=False)
    texels_per_metre: float
    sky_horizon: np.ndarray = field(default_factory=lambda: np.array([205.0, 215.0, 228.0]))
    sky_zenith: np.ndarray = field(default_factory=lambda: np.array([110.0, 150.0, 205.0]))


def _rect(name: str, origin, axis_u, axis_v, size_u: float, size_v: float) -> Plane:
    u = np.asarray(axis_u, dtype=float)
    v = np.asarray(axis_v, dtype=float)
    u /= np.linalg.norm(u)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return Plane(name, np.asarray(origin, dtype=float), u, v, (float(size_u), float(size_v)))


def _wall(name: str, start_xy, end_xy, height: float) -> Plane:
    """A vertical wall on the ground from `start_xy` to `end_xy`; texture rows run downwards."""
    start = np.array([*start_xy, height], dtype=float)
    along = np.array([*end_xy, height], dtype=float) - start
    return _rect(name, start, along, [0, 0, -1], np.linalg.norm(along), height)


def _box(name: str, centre_xy, size_xyz, yaw_degrees: float) -> list[Plane]:
    """The four sides and the top of a box standing on the ground, rotated by `yaw` about z."""
    c, s = math.cos(math.radians(yaw_degrees)), math.sin(math.radians(yaw_degrees))
    ex, ey = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    sx, sy, sz = size_xyz
    centre = np.array([*centre_xy, 0.0])
    corners = [
        centre + px * sx / 2 * ex + py * sy / 2 * ey
        for px, py in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    top = [p + [0, 0, sz] for p in corners]
    planes = [_wall(f"{name}_side{i}", top[i][:2], top[(i + 1) % 4][:2], sz) for i in range(4)]
    planes.append(_rect(f"{name}_top", top[0], ex, ey, sx, sy))
    return planes


def build_planes(layout: str = "corner") -> tuple[Plane, ...]:
    """The scene's fixed geometry (world frame: metres, z up, ground at z = 0)."""
    if layout in ("object", "pedestal"):
        # boxes around the cameras' target (0, 1, 0.6) on a ground large enough that a camera
        # on the ring, looking down at the target, sees ground rather than sky behind them
        planes = []
        if layout == "object":
            planes = [_rect("ground", [-6.0, -5.0, 0.0], [1, 0, 0], [0, 1, 0], 12.0, 12.0)]
        planes += _box("box", (0.3, 0.9), (1.0, 0.8, 0.9), 25.0)
        planes += _box("tower", (-0.6, 1.4), (0.5, 0.5, 1.5), -15.0)
        planes += _box("crate", (0.4, 1.8), (0.6, 0.5, 0.45), 50.0)
        return tuple(planes)
    planes = [
        _rect("ground", [-5.0, -2.5, 0.0], [1, 0, 0], [0, 1, 0], 10.0, 7.0),
        _wall("back_wall", (-3.6, 4.2), (4.6, 3.4), 3.2),
        _wall("left_wall", (-5.0, 0.8), (-3.6, 4.2), 3.2),
    ]
    planes += _box("box", (0.5, 1.0), (1.6, 1.2, 1.0), 25.0)
    planes += _box("tower", (-1.6, 2.3), (0.8, 0.8, 1.8), -15.0)
    return tuple(planes)


# ----------------------------------------------------------------------------- textures


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cells: list[float]) -> np.ndarray:
    """(h, w, 3) float32 colour value noise in [0, 1]: upsampled random grids, summed.

    Octave i is a random grid with one value per `cells[i]` pixels, bicubically resized to
    (h, w) and weighted 0.65 ** i.
    """
    out = np.zeros((h, w, 3), np.float32)
    for i, cell in enumerate(cells):
        shape = (max(2, round(h / cell)) + 1, max(2, round(w / cell)) + 1, 3)
        layer = cv2.resize(
            rng.random(shape, dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        )
        cv2.scaleAdd(layer, 0.65**i, out, dst=out)
    # stretch each channel to about [0, 1] (mean +- 2.5 standard deviations)
    mean, std = cv2.meanStdDev(out)
    lo = (mean.ravel() - 2.5 * std.ravel()).astype(np.float32)
    span = np.maximum(5.0 * std.ravel(), 1e-6).astype(np.float32)
    return np.clip((out - lo) / span, 0, 1)


def _random_color(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _draw_shape(img: np.ndarray, rng: np.random.Generator, r: float) -> None:
    """Draw one random shape of radius about `r` texels at a random place of `img`."""
    h, w = img.shape[:2]
    cx, cy = float(rng.uniform(-r, w + r)), float(rng.uniform(-r, h + r))
    color = _random_color(rng)
    kind = int(rng.integers(0, 7))
    shift = 4  # sub-texel vertex precision for cv2 drawing
    scale = 1 << shift

    def pts(xy: np.ndarray) -> np.ndarray:
        return np.round(xy * scale).astype(np.int32).reshape(-1, 1, 2)

    centre = (round(cx * scale), round(cy * scale))
    if kind == 0:  # filled disc
        cv2.circle(img, centre, round(r * scale), color, -1, cv2.LINE_AA, shift)
    elif kind == 1:  # ring
        thick = max(1, round(r * rng.uniform(0.1, 0.4)))
        cv2.circle(img, centre, round(r * scale), color, thick, cv2.LINE_AA, shift)
    elif kind in (2, 3):  # rotated rectangle (kind 2) or star-shaped blob (kind 3)
        if kind == 2:
            ang = rng.uniform(0, np.pi)
            a, b = r, r * rng.uniform(0.25, 1.0)
            corner = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        else:
            n = int(rng.integers(5, 10))
            ang = 0.0
            theta = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = r * rng.uniform(0.35, 1.0, n)
            corner = np.stack([rad * np.cos(theta), rad * np.sin(theta)], 1)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        cv2.fillPoly(img, [pts(corner @ rot.T + (cx, cy))], color, cv2.LINE_AA, shift)
    elif kind == 4:  # line segment
        ang = rng.uniform(0, np.pi)
        d = r * np.array([np.cos(ang), np.sin(ang)])
        p0, p1 = (tuple(int(c) for c in pts(np.array([cx, cy]) + e).ravel()) for e in (-d, d))
        thick = max(1, round(r * rng.uniform(0.05, 0.2)))
        cv2.line(img, p0, p1, color, thick, cv2.LINE_AA, shift)
    elif kind == 5:  # filled ellipse
        axes = (round(r * scale), round(r * rng.uniform(0.2, 0.8) * scale))
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(img, centre, axes, ang, 0, 360, color, -1, cv2.LINE_AA, shift)
    else:  # a letter or digit
        text = chr(int(rng.choice([rng.integers(65, 91), rng.integers(48, 58)])))
        font_scale = r / 11.0
        thick = max(1, round(r / 8))
        org = (round(cx - r / 2), round(cy + r / 2))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, thick, cv2.LINE_AA)


def make_texture(rng: np.random.Generator, h: int, w: int, texels_per_metre: float) -> np.ndarray:
    """A (h, w, 3) RGB uint8 texture: fractal colour noise under random shapes at many scales.

    Scales are set in metres (noise from 2.5 cm to 80 cm, shapes from 2.4 cm to 36 cm across),
    so a texture looks the same at any texel density. Nothing repeats, so local appearance is
    distinctive.
    """
    tpm = texels_per_metre
    # colour noise, computed at a quarter of the resolution (its finest octave is 2.5 cm)
    qh, qw = max(2, h // 4), max(2, w // 4)
    cells = [tpm / 4 * s for s in (0.8, 0.4, 0.2, 0.1, 0.05, 0.025)]
    noise = _fractal_noise(rng, qh, qw, cells)
    tint0, tint1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    small = (tint0 + noise * (tint1 - tint0)).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    # shapes: log-uniform radii, large ones first so small ones land on top of them
    area_m2 = h * w / tpm**2
    count = round(area_m2 * _SHAPES_PER_M2)
    radii = np.sort(np.exp(rng.uniform(np.log(0.012), np.log(0.18), count)))[::-1] * tpm
    for r in radii:
        _draw_shape(img, rng, float(r))
    cv2.GaussianBlur(img, (0, 0), 0.6, dst=img)
    return img


def build_world(config: SceneConfig) -> World:
    """The scene's planes and their seed-dependent textures.

    Each texture is shaded by a constant factor from its plane's angle to a fixed light, so faces
    of the boxes stand apart; shading does not change between views.
    """
    planes = build_planes(config.layout)
    tpm = config.texels_per_metre
    light = _LIGHT / np.linalg.norm(_LIGHT)
    textures = []
    for i, plane in enumerate(planes):
        rng = np.random.default_rng([config.seed, i])
        w = max(4, math.ceil(plane.size[0] * tpm))
        h = max(4, math.ceil(plane.size[1] * tpm))
        shade = 0.4 + 0.6 * abs(float(plane.normal @ light))
        texture = make_texture(rng, h, w, tpm).astype(np.float32)
        if config.contrast != 1.0:
            texture = 128.0 + config.contrast * (texture - 128.0)
        textures.append(cv2.convertScaleAbs(texture, alpha=shade))
    if config.layout == "pedestal":  # a black background
        black = np.zeros(3)
        return World(planes, tuple(textures), tpm, sky_horizon=black, sky_zenith=black)
    return World(planes, tuple(textures), tpm)


# ----------------------------------------------------------------------------- cameras


def look_at(centre: np.ndarray, target: np.ndarray, roll_degrees: float = 0.0) -> np.ndarray:
    """The cam_from_world rotation of a camera at `centre` looking at `target`, z up, with roll."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rotation = np.stack([x, y, z])
    c, s = math.cos(math.radians(roll_degrees)), math.sin(math.radians(roll_degrees))
    roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return roll @ rotation


def image_names(config: SceneConfig) -> list[str]:
    """The views' file names: ``view_000.jpg``, ``view_001.jpg``, ... in arc order."""
    digits = max(3, len(str(config.num_images - 1)))
    return [f"view_{i:0{digits}d}.{config.image_format}" for i in range(config.num_images)]


def make_cameras(config: SceneConfig) -> dict[str, CameraPose]:
    """Cameras on an arc around the scene centre at varying heights, keyed by image name.

    An arc of 360 degrees is a closed ring: the views are spaced evenly around it (the last one
    does not repeat the first) and the height varies periodically, so the ring closes smoothly.
    """
    rng = np.random.default_rng([config.seed, 1_000_003])
    n = config.num_images
    ring = config.arc_degrees >= 360
    phases = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
    if ring:  # evenly spaced, the last view one step before the first
        phases = np.arange(n) / n
    f = config.focal_px
    cameras = {}
    for name, phase in zip(image_names(config), phases, strict=True):
        azimuth = math.radians(config.arc_degrees * (phase - 0.5))
        wave = math.sin((4.0 if ring else 2.5) * math.pi * phase)
        height = config.camera_height + config.height_variation * wave
        target = _SCENE_TARGET + rng.uniform(-_TARGET_JITTER, _TARGET_JITTER, 3)
        ground_distance = math.sqrt(max(config.distance**2 - (height - target[2]) ** 2, 1e-6))
        centre = target + [
            ground_distance * math.sin(azimuth),
            -ground_distance * math.cos(azimuth),
            0.0,
        ]
        centre[2] = height
        rotation = look_at(centre, target, rng.uniform(-_ROLL_JITTER_DEG, _ROLL_JITTER_DEG))
        translation = -rotation @ centre
        cx = config.width / 2 + config.principal_offset[0]
        cy = config.height / 2 + config.principal_offset[1]
        cameras[name] = CameraPose(name, f, f, cx, cy, rotation, translation)
    return cameras


# ----------------------------------------------------------------------------- rendering


def _pixel_rays(pose: CameraPose, width: int, height: int, scale: int, dtype: type) -> np.ndarray:
    """World directions (H * scale, W * scale, 3) of the rays through the subpixel centres.

    Subpixel (i, j) of a `scale` x `scale` grid per pixel has its centre at ((j + 0.5) / scale,
    (i + 0.5) / scale) in COLMAP pixel coordinates. Directions are ``R^T (x, y, 1)``, so their
    camera z is 1 and the ray parameter of a hit is its depth.
    """
    u = (np.arange(width * scale, dtype=np.float64) + 0.5) / scale
    v = (np.arange(height * scale, dtype=np.float64) + 0.5) / scale
    x = ((u - pose.cx) / pose.fx).astype(dtype)
    y = ((v - pose.cy) / pose.fy).astype(dtype)
    world_from_cam = pose.rotation.T.astype(dtype)
    return (
        x[None, :, None] * world_from_cam[:, 0]
        + y[:, None, None] * world_from_cam[:, 1]
        + world_from_cam[:, 2]
    )


def _plane_window(
    plane: Plane, pose: CameraPose, shape: tuple[int, ...], scale: int
) -> tuple[slice, slice] | None:
    """Row and column slices of the subpixel grid that can see `plane` (None: it is not seen).

    The plane's corners are projected; when all are in front of the camera the projected quad is
    convex and bounds every projected point of the plane, otherwise the whole grid is returned.
    """
    su, sv = plane.size
    corners = plane.origin + np.array([[0, 0], [su, 0], [su, sv], [0, sv]]) @ np.stack(
        [plane.axis_u, plane.axis_v]
    )
    cam = corners @ pose.rotation.T + pose.translation
    rows, cols = shape
    if np.any(cam[:, 2] <= 1e-6):
        return slice(0, rows), slice(0, cols)
    u = pose.fx * cam[:, 0] / cam[:, 2] + pose.cx
    v = pose.fy * cam[:, 1] / cam[:, 2] + pose.cy
    # subpixel j has its centre at (j + 0.5) / scale; keep one subpixel of margin
    c0 = max(0, math.floor(u.min() * scale - 0.5) - 1)
    c1 = min(cols, math.ceil(u.max() * scale - 0.5) + 2)
    r0 = max(0, math.floor(v.min() * scale - 0.5) - 1)
    r1 = min(rows, math.ceil(v.max() * scale - 0.5) + 2)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def cast_rays(
    planes: tuple[Plane, ...], pose: CameraPose, dirs: np.ndarray, scale: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest plane hit of each ray ``pose.center + t * dirs`` with t > 0.

    `dirs` is the (rows, cols, 3) grid of :func:`_pixel_rays` at `scale`. Returns (rows, cols)
    arrays: the plane index (-1: no hit), the ray parameter t (inf: no hit) and the hit's plane
    coordinates (a, b) along the plane's axes, in metres.
    """
    dtype = dirs.dtype
    shape = dirs.shape[:2]
    centre = pose.center
    best_index = np.full(shape, -1, np.int16)
    best_t = np.full(shape, np.inf, dtype)
    best_a = np.zeros(shape, dtype)
    best_b = np.zeros(shape, dtype)
    eps = 1e-9
    for k, plane in enumerate(planes):
        window = _plane_window(plane, pose, shape, scale)
        if window is None:
            continue
        d = dirs[window]
        rel = (centre - plane.origin).astype(dtype)  # camera centre relative to the plane's corner
        normal = plane.normal.astype(dtype)
        denom = d @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -(rel @ normal) / denom
        a = rel @ plane.axis_u.astype(dtype) + t * (d @ plane.axis_u.astype(dtype))
        b = rel @ plane.axis_v.astype(dtype) + t * (d @ plane.axis_v.astype(dtype))
        hit = (t > eps) & (t < best_t[window]) & (np.abs(denom) > eps)
        hit &= (a >= 0) & (a <= plane.size[0]) & (b >= 0) & (b <= plane.size[1])
        best_index[window][hit] = k
        best_t[window][hit] = t[hit]
        best_a[window][hit] = a[hit]
        best_b[window][hit] = b[hit]
    return best_index, best_t, best_a, best_b


def _sample_bilinear(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear texture values (N, 3) at texel coordinates x, y (texel centres at integers)."""
    n = len(x)
    cols = 1024
    rows = -(-n // cols)
    pad = rows * cols - n
    mx = np.pad(x.astype(np.float32), (0, pad)).reshape(rows, cols)
    my = np.pad(y.astype(np.float32), (0, pad)).reshape(rows, cols)
    out = cv2.remap(texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out.reshape(-1, texture.shape[2])[:n]


def render_view(
    world: World, pose: CameraPose, width: int, height: int, supersample: int = 2
) -> np.ndarray:
    """Render one view as an (height, width, 3) RGB uint8 image.

    Each output pixel is the mean of `supersample` x `supersample` ray samples over its area.
    """
    s = supersample
    dirs = _pixel_rays(pose, width, height, s, np.float32)
    index, _, a, b = cast_rays(world.planes, pose, dirs, s)
    index, a, b = index.ravel(), a.ravel(), b.ravel()
    image = np.empty((index.size, 3), np.uint8)
    # background: a vertical sky gradient by the ray's elevation (a view-consistent "infinity")
    sky = np.flatnonzero(index < 0)
    if len(sky):
        d = dirs.reshape(-1, 3)[sky]
        mix = np.clip(d[:, 2] / np.linalg.norm(d, axis=1), 0, 1)[:, None]
        image[sky] = np.round((1 - mix) * world.sky_horizon + mix * world.sky_zenith)
    tpm = world.texels_per_metre
    for k, texture in enumerate(world.textures):
        sel = np.flatnonzero(index == k)
        if len(sel):
            image[sel] = _sample_bilinear(texture, a[sel] * tpm - 0.5, b[sel] * tpm - 0.5)
    image = image.reshape(height * s, width * s, 3)
    if s > 1:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def point_map(planes: tuple[Plane, ...], pose: CameraPose, width: int, height: int) -> np.ndarray:
    """(height, width, 3) float64 world point seen through each pixel centre; NaN: background.

    Pixel (row i, column j) has its centre at (j + 0.5, i + 0.5) in COLMAP pixel coordinates, so
    projecting ``point_map(...)[i, j]`` with `pose` gives back that centre. Uses the same ray
    casting as :func:`render_view`; tests use it to check renders against the known poses.
    """
    dirs = _pixel_rays(pose, width, height, 1, np.float64)
    index, t, _, _ = cast_rays(planes, pose, dirs, 1)
    points = pose.center + t[..., None] * dirs
    points[index < 0] = np.nan
    return points


# ----------------------------------------------------------------------------- scene on disk


def _encode(image_rgb: np.ndarray, config: SceneConfig) -> bytes:
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    if config.image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {config.image_format} image")
    return buf.tobytes()


def make_scene(out_dir: Path, config: SceneConfig = SceneConfig()) -> SyntheticScene:
    """Render a synthetic scene into `out_dir` and write its ground-truth cameras.

    Writes ``out_dir/images/view_000.<ext>`` ... and ``out_dir/gt/cameras.txt``; the same config
    (seed included) gives the same pixels. Views of an earlier run under names of this module's
    pattern (``view_NNN.png|jpg``) that this run does not write are removed, so the folder holds
    exactly this scene's images; other files are left alone.
    """
    root = Path(out_dir)
    image_dir = root / "images"
    gt_path = root / "gt" / "cameras.txt"
    start = time.perf_counter()
    world = build_world(config)
    cameras = make_cameras(config)
    logger.debug(
        "built %d textured planes in %.2fs", len(world.planes), time.perf_counter() - start
    )
    image_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(image_dir.iterdir()):
        if _IMAGE_NAME.fullmatch(path.name) and path.name not in cameras:
            logger.info("removing %s from an earlier synthetic scene", path)
            path.unlink()
    for name, pose in tqdm(cameras.items(), desc="rendering", unit="img", disable=len(cameras) < 4):
        image = render_view(world, pose, config.width, config.height, config.supersample)
        atomic_write_bytes(image_dir / name, _encode(image, config))
    write_cameras_txt(gt_path, cameras.values())
    logger.info(
        "rendered %d synthetic views of %dx%d into %s in %.1fs",
        len(cameras),
        config.width,
        config.height,
        image_dir,
        time.perf_counter() - start,
    )
    return SyntheticScene(root=root, image_dir=image_dir, gt_path=gt_path, cameras=cameras)


# ----------------------------------------------------------------------------- video


@dataclass(frozen=True, kw_only=True)
class VideoSceneConfig:
    """A synthetic video: the scene of SceneConfig filmed along a smooth path, with defects."""

    scene: SceneConfig = option(
        SceneConfig(width=320, height=240, texels_per_metre=128, supersample=1),
        "scene, image size and textures (num_images and image_format are ignored)",
    )
    num_moving: int = option(24, "frames along the camera path")
    fps: float = option(10.0, "frame rate of the written video")
    arc_degrees: float = option(40.0, "the camera orbits this many degrees around the scene")
    pan_metres: float = option(1.2, "the look-at point slides this far along x (image motion)")
    blurred: tuple[int, ...] = option((5, 13, 19), "moving-frame indices given motion blur")
    blur_length: int = option(15, "length in pixels of the horizontal motion-blur kernel")
    pause_after: int = option(9, "moving-frame index after which the camera pauses")
    pause_frames: int = option(4, "extra copies of that frame (the pause)")

    def __post_init__(self) -> None:
        if self.num_moving < 2:
            raise ValueError(f"num_moving must be at least 2, got {self.num_moving}")
        if not all(0 < b < self.num_moving for b in self.blurred):
            raise ValueError("blurred indices must be in 1..num_moving-1 (frame 0 stays sharp)")
        if self.pause_after in self.blurred or not 0 <= self.pause_after < self.num_moving:
            raise ValueError("pause_after must be a sharp moving-frame index")
        if self.pause_frames < 0 or self.blur_length < 3:
            raise ValueError("pause_frames must be >= 0 and blur_length >= 3")


@dataclass(frozen=True)
class SyntheticVideo:
    """A rendered video on disk, its frames' cameras and which frames are defective."""

    path: Path  # the .mp4 file
    world: World = field(repr=False)
    cameras: list[CameraPose]  # one per written frame (pause frames repeat a pose)
    times: list[float]  # seconds, frame i at i / fps
    blurred: tuple[int, ...]  # written-frame indices with motion blur
    duplicates: tuple[int, ...]  # written-frame indices that repeat the previous frame


def video_cameras(config: VideoSceneConfig) -> list[CameraPose]:
    """The poses of the moving frames: an orbit at slowly varying height that also pans."""
    scene = config.scene
    f = scene.focal_px
    cameras = []
    for i in range(config.num_moving):
        phase = i / (config.num_moving - 1)
        azimuth = math.radians(config.arc_degrees * (phase - 0.5))
        target = _SCENE_TARGET + [config.pan_metres * (phase - 0.5), 0.0, 0.0]
        height = scene.camera_height + 0.3 * math.sin(math.pi * phase)
        ground = math.sqrt(scene.distance**2 - (height - target[2]) ** 2)
        centre = target + [ground * math.sin(azimuth), -ground * math.cos(azimuth), 0.0]
        centre[2] = height
        rotation = look_at(centre, target)
        name = f"frame_{i:04d}"
        cameras.append(
            CameraPose(name, f, f, scene.width / 2, scene.height / 2, rotation, -rotation @ centre)
        )
    return cameras


def project(pose: CameraPose, point: np.ndarray) -> np.ndarray:
    """(x, y) pixel (COLMAP convention) of a world point; NaN when it is behind the camera."""
    cam = pose.rotation @ np.asarray(point, np.float64) + pose.translation
    if cam[2] <= 1e-9:
        return np.array([np.nan, np.nan])
    return np.array([pose.fx * cam[0] / cam[2] + pose.cx, pose.fy * cam[1] / cam[2] + pose.cy])


class TrueCorrespondences:
    """Where a point seen in one view of a synthetic scene appears in another, from the
    renderer's point maps (computed once per view): the ground truth of matches."""

    SAME_POINT = 0.02  # metres: a lifted point seen again this close is the same point

    def __init__(
        self, planes: tuple[Plane, ...], cameras: dict[str, CameraPose], width: int, height: int
    ) -> None:
        self.planes, self.cameras = planes, cameras
        self.width, self.height = width, height
        self._maps: dict[str, np.ndarray] = {}

    def lift(self, name: str, xy: np.ndarray) -> np.ndarray:
        """(N, 3) world points seen at pixel positions `xy` (COLMAP convention) of view `name`,
        bilinear between the four nearest pixel centres; NaN where those are not on one
        surface (background, outlines)."""
        w, h = self.width, self.height
        if name not in self._maps:
            self._maps[name] = point_map(self.planes, self.cameras[name], w, h)
        pts = self._maps[name]
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        u, v = xy[:, 0] - 0.5, xy[:, 1] - 0.5  # pixel-centre indices
        j = np.clip(np.floor(u).astype(int), 0, w - 2)
        i = np.clip(np.floor(v).astype(int), 0, h - 2)
        fu, fv = (u - j)[:, None], (v - i)[:, None]
        c00, c01, c10, c11 = pts[i, j], pts[i, j + 1], pts[i + 1, j], pts[i + 1, j + 1]
        out = (c00 * (1 - fu) + c01 * fu) * (1 - fv) + (c10 * (1 - fu) + c11 * fu) * fv
        with np.errstate(invalid="ignore"):
            spread = np.max([np.linalg.norm(c - c00, axis=1) for c in (c01, c10, c11)], axis=0)
            out[~(spread < 2.5 * self.SAME_POINT)] = np.nan
        return out

    def transfer(self, a: str, b: str, xy: np.ndarray) -> np.ndarray:
        """(N, 2) positions in view `b` of the points seen at `xy` in view `a`; NaN where the
        point is not on one surface in `a` or is hidden in `b`."""
        world = self.lift(a, xy)
        cam = self.cameras[b]
        x = world @ cam.rotation.T + np.ravel(cam.translation)
        with np.errstate(invalid="ignore", divide="ignore"):
            uv = x @ cam.K.T
            out = uv[:, :2] / uv[:, 2:]
            inside = np.clip(np.nan_to_num(out), 1, (self.width - 1, self.height - 1))
            visible = np.linalg.norm(self.lift(b, inside) - world, axis=1) < self.SAME_POINT
        out[~visible] = np.nan
        return out


def plane_index_map(planes: tuple[Plane, ...], pose: CameraPose, width: int, height: int):
    """(height, width) int16 index of the plane seen through each pixel centre; -1: background."""
    dirs = _pixel_rays(pose, width, height, 1, np.float64)
    return cast_rays(planes, pose, dirs, 1)[0]


def make_video(path: Path, config: VideoSceneConfig = VideoSceneConfig()) -> SyntheticVideo:
    """Render a synthetic video to `path` (MPEG-4 part 2, 'mp4v', via cv2.VideoWriter).

    Moving frames follow :func:`video_cameras`; those in `config.blurred` are convolved with a
    horizontal line kernel (motion blur); after moving frame `pause_after` the same image is
    written `pause_frames` more times (a pause: exact duplicates before encoding).
    """
    path = Path(path)
    scene = config.scene
    world = build_world(scene)
    moving = video_cameras(config)
    kernel = np.full((1, config.blur_length), 1.0 / config.blur_length, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    size = (scene.width, scene.height)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), config.fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an mp4v video to {tmp}")
    cameras: list[CameraPose] = []
    blurred: list[int] = []
    duplicates: list[int] = []
    try:
        for i, pose in enumerate(tqdm(moving, desc="rendering video", unit="frame", leave=False)):
            image = render_view(world, pose, scene.width, scene.height, scene.supersample)
            if i in config.blurred:
                image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
                blurred.append(len(cameras))
            bgr = np.ascontiguousarray(image[..., ::-1])
            writer.write(bgr)
            cameras.append(pose)
            if i == config.pause_after:
                for _ in range(config.pause_frames):
                    writer.write(bgr)
                    duplicates.append(len(cameras))
                    cameras.append(pose)
    finally:
        writer.release()
    tmp.replace(path)
    times = [i / config.fps for i in range(len(cameras))]
    return SyntheticVideo(path, world, cameras, times, tuple(blurred), tuple(duplicates))
