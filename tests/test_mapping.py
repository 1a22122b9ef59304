"""Mapping alone, on keypoints and matches made by projecting known 3D points (no images)."""

import numpy as np
import pytest

from reconstruct.errors import MappingError
from reconstruct.evaluation import evaluate
from reconstruct.export import ExportConfig, export_model, model_statistics, read_all_poses
from reconstruct.gt import CameraPose, write_cameras_txt
from reconstruct.mapping import MappingConfig, run_mapping
from reconstruct.storage import FEATURES_SCHEMA, MATCHES_SCHEMA, Header, ResultWriter

W, H, F = 640, 480, 500.0


def look_at(center, target=np.zeros(3)):
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])  # world y is up, image y is down
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ center


def make_views(n=6, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, (600, 3)) * [1.5, 1.0, 1.0]
    cams = {}
    for i, a in enumerate(np.linspace(-0.5, 0.5, n)):
        center = np.array([5 * np.sin(a), 0.3 * (i % 2), -5 * np.cos(a)])
        R, t = look_at(center)
        cams[f"dir {i}/im-{i}.png"] = CameraPose(f"im{i}", F, F, W / 2, H / 2, R, t)
    return points, cams


def write_inputs(tmp_path, points, cams, noise=0.3, scramble=False, seed=0):
    rng = np.random.default_rng(seed)
    feats = tmp_path / "features.h5"
    matches = tmp_path / "matches.h5"
    visible = {}
    with ResultWriter(feats, Header(FEATURES_SCHEMA, {}, "f")) as w:
        for name, c in cams.items():
            cam_pts = points @ c.rotation.T + c.translation
            uv = cam_pts[:, :2] / cam_pts[:, 2:] * F + [W / 2, H / 2]
            ok = (cam_pts[:, 2] > 0) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0)
            ok &= uv[:, 1] < H
            idx = np.flatnonzero(ok)
            kp = uv[idx] + rng.normal(0, noise, (len(idx), 2))
            visible[name] = {p: k for k, p in enumerate(idx)}
            w.add(
                (name,),
                {
                    "keypoints": kp.astype(np.float32),
                    "descriptors": np.zeros((len(idx), 1), np.float32),
                    "scores": np.ones(len(idx), np.float32),
                },
                {"image_size": (W, H)},
            )
    names = sorted(cams)
    with ResultWriter(matches, Header(MATCHES_SCHEMA, {}, "m", {"features_hash": "f"})) as w:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                common = sorted(set(visible[a]) & set(visible[b]))
                m = np.array([[visible[a][p], visible[b][p]] for p in common], np.uint32)
                if scramble:
                    m[:, 1] = rng.permutation(m[:, 1])
                w.add((a, b), {"matches": m.reshape(-1, 2), "scores": np.ones(len(m))})
    return feats, matches


def test_mapping_recovers_known_poses(tmp_path):
    points, cams = make_views()
    feats, matches = write_inputs(tmp_path, points, cams)
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", MappingConfig())
    models = read_all_poses(sparse)
    assert len(models) == 1 and set(models[0]) == set(cams)
    m = evaluate(cams, models)
    assert m.registration_ratio == 1.0
    assert (
        m.to_dict()["auc"]["5"] > 0.95
    )  # rotation and translation direction within a fraction of a degree
    assert (tmp_path / "out" / "colmap.log").stat().st_size > 0
    model = export_model(sparse, tmp_path / "out", ExportConfig())
    assert (model / "images.bin").is_file() and (model / "images.txt").is_file()
    ply = (tmp_path / "out" / "points.ply").read_bytes()
    assert ply.startswith(b"ply") and b"element vertex" in ply
    stats = model_statistics(model)
    assert stats["registered_images"] == len(cams) and stats["mean_reprojection_error"] < 1.0


def test_known_intrinsics_are_kept_fixed(tmp_path):
    points, cams = make_views()
    cams = {n.replace(" ", "_"): c for n, c in cams.items()}  # the text format has no spaces
    feats, matches = write_inputs(tmp_path, points, cams)
    intr = write_cameras_txt(
        tmp_path / "intrinsics.txt",
        [CameraPose(n, F, F, W / 2, H / 2, np.eye(3), np.zeros(3)) for n in cams],
    )
    cfg = MappingConfig(intrinsics=intr, fix_intrinsics=True, camera_model="PINHOLE")
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", cfg)
    (model,) = read_all_poses(sparse)
    assert len(model) == len(cams)
    for pose in model.values():
        assert (pose.fx, pose.fy, pose.cx, pose.cy) == (F, F, W / 2, H / 2)


def test_nothing_registrable_is_a_typed_error(tmp_path):
    points, cams = make_views(n=4)
    feats, matches = write_inputs(tmp_path, points, cams, scramble=True)
    with pytest.raises(MappingError, match="pairs"):
        run_mapping(tmp_path, feats, matches, tmp_path / "out", MappingConfig())
    assert not (tmp_path / "out" / "sparse").exists()
