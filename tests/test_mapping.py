"""Mapping alone, on keypoints and matches made by projecting known 3D points (no images)."""

import json

import numpy as np
import pytest

from reconstruct import paths
from reconstruct.errors import MappingError
from reconstruct.evaluation import evaluate
from reconstruct.export import ExportConfig, export_model, model_statistics, read_all_poses
from reconstruct.gt import CameraPose, rotate_camera, write_cameras_txt
from reconstruct.mapping import (
    MIN_EXPLAINED_MATCHES,
    PP_MAX_STANDARD_ERROR,
    PP_MIN_RELATIVE_DROP,
    MappingConfig,
    Outcome,
    check_consistency,
    check_focal_lengths,
    consistency_report,
    explained_fraction,
    is_better,
    model_is_consistent,
    principal_point_decision,
    run_mapping,
    turn_camera_params,
    turn_keypoints,
)
from reconstruct.refinement import RefinementConfig
from reconstruct.storage import FEATURES_SCHEMA, MATCHES_SCHEMA, Header, ResultWriter

W, H, F = 640, 480, 500.0


# These scenes are keypoints projected exactly, with no image files: nothing to refine
# (the keypoint refinement before mapping reads the images; tests/test_refinement.py).
EXACT = RefinementConfig(enabled=False)


def look_at(center, target=np.zeros(3)):
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])  # world y is up, image y is down
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ center


def make_views(n=6, seed=0, lift=0.3):
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, (600, 3)) * [1.5, 1.0, 1.0]
    cams = {}
    for i, a in enumerate(np.linspace(-0.5, 0.5, n)):
        center = np.array([5 * np.sin(a), lift * (i % 2), -5 * np.cos(a)])
        R, t = look_at(center)
        cams[f"dir {i}/im-{i}.png"] = CameraPose(f"im{i}", F, F, W / 2, H / 2, R, t)
    return points, cams


def write_inputs(
    tmp_path, points, cams, noise=0.3, scramble=False, seed=0, turns=None, keep_pair=None
):
    """Features and matches of the projected points. `turns` (name -> k) writes an image as
    if its file were turned by k quarters (`np.rot90`) and extracted turned back upright by
    the upright stage: keypoints in the file's frame, attribute ``rotation`` = -k mod 4."""
    turns = turns or {}
    rng = np.random.default_rng(seed)
    feats = tmp_path / "features.h5"
    matches = tmp_path / "matches.h5"
    visible = {}
    with ResultWriter(feats, Header(FEATURES_SCHEMA, {}, "f")) as w:
        for name, c in cams.items():
            cam_pts = points @ c.rotation.T + c.translation
            uv = cam_pts[:, :2] / cam_pts[:, 2:] * [c.fx, c.fy] + [c.cx, c.cy]
            ok = (cam_pts[:, 2] > 0) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0)
            ok &= uv[:, 1] < H
            idx = np.flatnonzero(ok)
            kp = uv[idx] + rng.normal(0, noise, (len(idx), 2))
            kp, size = turn_keypoints(kp, (W, H), turns.get(name, 0))
            visible[name] = {p: k for k, p in enumerate(idx)}
            w.add(
                (name,),
                {
                    "keypoints": kp.astype(np.float32),
                    "descriptors": np.zeros((len(idx), 1), np.float32),
                    "scores": np.ones(len(idx), np.float32),
                },
                {"image_size": size, "rotation": -turns.get(name, 0) % 4},
            )
    names = sorted(cams)
    with ResultWriter(matches, Header(MATCHES_SCHEMA, {}, "m", {"features_hash": "f"})) as w:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if keep_pair is not None and not keep_pair(a, b):
                    continue
                common = sorted(set(visible[a]) & set(visible[b]))
                m = np.array([[visible[a][p], visible[b][p]] for p in common], np.uint32)
                if scramble:
                    m[:, 1] = rng.permutation(m[:, 1])
                w.add((a, b), {"matches": m.reshape(-1, 2), "scores": np.ones(len(m))})
    return feats, matches


def test_mapping_recovers_known_poses(tmp_path):
    points, cams = make_views()
    feats, matches = write_inputs(tmp_path, points, cams)
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", MappingConfig(refine=EXACT))
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
    consistency = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())["consistency"]
    assert consistency["consistent"] is True and consistency["explained"] > 0.8


def test_explained_fraction_exact_values():
    ids0 = np.array([7, 8, -1, 9])
    ids1 = np.array([8, 7, -1, 9, 5])
    inliers = np.array([[0, 1], [1, 0], [2, 2], [3, 3], [3, 4]])
    # (7, 7) and (8, 8) and (9, 9) agree; two untriangulated keypoints (-1, -1) do not count
    assert explained_fraction(ids0, ids1, inliers) == pytest.approx(3 / 5)
    assert explained_fraction(ids0, ids1, np.zeros((0, 2), np.int64)) == 0.0


def test_a_model_contradicting_its_matches_is_reported(tmp_path, caplog):
    """The same well-posed model, judged against verified pairs whose inlier matches are
    shuffled (each keypoint paired with a random other one): no pair is explained any more, so
    the check must report the model as contradicting its evidence."""
    import pycolmap

    points, cams = make_views()
    feats, matches = write_inputs(tmp_path, points, cams)
    out = tmp_path / "out"
    run_mapping(tmp_path, feats, matches, out, MappingConfig(refine=EXACT))
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    db = pycolmap.Database.open(str(out / paths.DATABASE))
    try:
        rng = np.random.default_rng(0)
        pair_ids, geometries = db.read_two_view_geometries()
        for pair_id, geometry in zip(pair_ids, geometries, strict=True):
            inliers = np.asarray(geometry.inlier_matches).reshape(-1, 2).copy()
            inliers[:, 1] = rng.permutation(inliers[:, 1])
            geometry.inlier_matches = inliers
            db.update_two_view_geometry(*pycolmap.pair_id_to_image_pair(pair_id), geometry)
    finally:
        db.close()
    with caplog.at_level("WARNING", logger="reconstruct.mapping"):
        report = check_consistency(out / paths.DATABASE, rec, min_inliers=15)
    assert report["consistent"] is False
    assert report["explained"] < MIN_EXPLAINED_MATCHES / 5
    assert report["median_explained"] < MIN_EXPLAINED_MATCHES / 5
    assert report["pairs_mostly_unexplained"] == report["pairs"] > 0
    assert "contradicts its own matches" in caplog.text


def test_known_intrinsics_are_kept_fixed(tmp_path):
    points, cams = make_views()
    cams = {n.replace(" ", "_"): c for n, c in cams.items()}  # the text format has no spaces
    feats, matches = write_inputs(tmp_path, points, cams)
    intr = write_cameras_txt(
        tmp_path / "intrinsics.txt",
        [CameraPose(n, F, F, W / 2, H / 2, np.eye(3), np.zeros(3)) for n in cams],
    )
    cfg = MappingConfig(intrinsics=intr, fix_intrinsics=True, camera_model="PINHOLE", refine=EXACT)
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", cfg)
    (model,) = read_all_poses(sparse)
    assert len(model) == len(cams)
    for pose in model.values():
        assert (pose.fx, pose.fy, pose.cx, pose.cy) == (F, F, W / 2, H / 2)


def test_nothing_registrable_is_a_typed_error(tmp_path):
    points, cams = make_views(n=4)
    feats, matches = write_inputs(tmp_path, points, cams, scramble=True)
    with pytest.raises(MappingError, match="pairs"):
        run_mapping(tmp_path, feats, matches, tmp_path / "out", MappingConfig(refine=EXACT))
    assert not (tmp_path / "out" / "sparse").exists()


def test_turn_keypoints_and_camera_agree_with_rot90():
    """A pixel of a 5x3 image moved by np.rot90 lands where turn_keypoints puts it, and the
    turned camera projects a point where the turned image shows it."""
    image = np.arange(15).reshape(3, 5)
    for k in range(4):
        turned = np.rot90(image, k)
        for row, col in [(0, 0), (2, 4), (1, 3)]:
            xy, size = turn_keypoints(np.array([[col + 0.5, row + 0.5]]), (5, 3), k)
            u, v = xy[0] - 0.5
            assert size == (turned.shape[1], turned.shape[0])
            assert turned[round(v), round(u)] == image[row, col]
    # a camera with a principal point off-centre: projections turn with the keypoints
    params = [500.0, 520.0, 300.0, 250.0, 0.01, -0.02, 0.001, 0.002]
    point = np.array([0.3, -0.2, 2.0])

    def project(p, x):  # pinhole + OPENCV tangential terms, no radial (k1 = k2 = 0 here)
        fx, fy, cx, cy, _, _, p1, p2 = p
        a, b = x[0] / x[2], x[1] / x[2]
        r2 = a * a + b * b
        da = 2 * p1 * a * b + p2 * (r2 + 2 * a * a)
        db = p1 * (r2 + 2 * b * b) + 2 * p2 * a * b
        return np.array([fx * (a + da) + cx, fy * (b + db) + cy])

    flat = [*params[:4], 0.0, 0.0, *params[6:]]
    axes = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    for k in range(4):
        turned, size = turn_camera_params("OPENCV", flat, (W, H), k)
        assert size == ((W, H) if k % 2 == 0 else (H, W))
        expected, _ = turn_keypoints(project(flat, point)[None], (W, H), k)
        got = project(turned, np.linalg.matrix_power(axes, k) @ point)
        np.testing.assert_allclose(got, expected[0], atol=1e-9)


def test_turned_images_share_one_camera_and_come_back_in_file_frames(tmp_path):
    """Two of six views stored turned (portrait and upside down) share the camera of the
    others in the mapping, so the principal point (14 px off-centre) is refined from all six;
    the written model holds them in their files' frames with the camera turned back."""
    import pycolmap

    points, cams = make_views(lift=2.0)  # views from above and below constrain cy too
    cams = {
        n: CameraPose(n, F, F, W / 2 + 12, H / 2 - 8, c.rotation, c.translation)
        for n, c in cams.items()
    }
    names = sorted(cams)
    applied = {names[1]: 1, names[4]: 2}  # files turned a quarter and a half turn
    feats, matches = write_inputs(tmp_path, points, cams, turns=applied)
    gt = {n: rotate_camera(c, applied.get(n, 0), W, H) for n, c in cams.items()}
    cfg = MappingConfig(camera_model="PINHOLE", refine=EXACT)
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", cfg)

    db = pycolmap.Database.open(str(tmp_path / "out" / "database.db"))
    try:
        assert {im.camera_id for im in db.read_all_images()} == {1}  # one camera for all six
    finally:
        db.close()
    summary = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    assert summary["refine_principal_point"] is True and summary["turned_images"] == 2
    (turned_cameras,) = summary["turned_cameras"]
    assert sorted((v["camera_id"], v["quarter_turns"]) for v in turned_cameras.values()) == [
        (1, 1),
        (1, 2),
    ]
    rec = pycolmap.Reconstruction(str(sparse / "0"))
    shared = rec.cameras[1]
    assert (shared.width, shared.height) == (W, H)
    # refined (4 upright images alone would not be enough) and nearer the truth than the centre
    pp = np.array([shared.principal_point_x, shared.principal_point_y])
    truth = np.array([W / 2 + 12, H / 2 - 8])
    assert np.linalg.norm(pp - truth) < 0.5 * np.linalg.norm(truth - [W / 2, H / 2])
    for image in rec.images.values():
        k = applied.get(image.name, 0)
        cam = image.camera
        if k:
            expected, size = turn_camera_params("PINHOLE", shared.params, (W, H), k)
            assert (cam.width, cam.height) == size
            np.testing.assert_allclose(cam.params, expected, rtol=1e-12)
        else:
            assert image.camera_id == 1
    (model,) = read_all_poses(sparse)
    m = evaluate(gt, [model])
    assert m.registration_ratio == 1.0 and m.to_dict()["auc"]["5"] > 0.95
    assert rec.compute_mean_reprojection_error() < 1.0  # 2D points turned back with the poses


def test_a_split_scene_says_why(tmp_path):
    """Two groups of views with no match between them: two models, and the summary says that
    no verified pair joins them."""
    points, cams = make_views(n=8)
    group = {n: i < 4 for i, n in enumerate(sorted(cams))}
    feats, matches = write_inputs(
        tmp_path, points, cams, keep_pair=lambda a, b: group[a] == group[b]
    )
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", MappingConfig(refine=EXACT))
    info = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    assert info["split"]["models"] == 2 and info["split"]["links"] == []
    assert info["split"]["reasons"] == ["no verified pair joins model 1 to another model"]
    # the relaxed retry was tried (the scene did not map whole) and could not join them either
    assert info["relaxed_init_retry"]["kept"] is False
    assert info["duplicate_models_dropped"] == []


def test_focal_outliers_are_reported():
    import pycolmap

    rec = pycolmap.Reconstruction()
    for camera_id, f in enumerate([1200.0, 1150.0, 1250.0, 3000.0], start=1):
        camera = pycolmap.Camera.create_from_model_name(camera_id, "SIMPLE_PINHOLE", f, 1000, 750)
        rec.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=f"im{camera_id}.jpg", camera_id=camera_id, image_id=camera_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    (outlier,) = check_focal_lengths(rec)
    assert outlier["images"] == ["im4.jpg"] and outlier["focal_over_size"] == 3.0
    assert outlier["times_median"] == pytest.approx(3.0 / 1.225, abs=1e-3)


def test_auto_principal_point_stays_fixed_for_a_narrow_field_of_view(tmp_path):
    """Focal length 4.7x the image width, principal point at the centre: refining it trades
    off against rotation (measured: AUC@5 0.956 with `always`, 0.998 with `never`); `auto`
    must find no significant gain and keep it fixed, so the poses stay as good as `never`."""
    rng = np.random.default_rng(1)
    _, cams = make_views(n=8, lift=1.0)
    points = rng.uniform(-1, 1, (4000, 3)) * [0.6, 0.5, 0.5]
    f = 3000.0
    cams = {
        n: CameraPose(n, f, f, W / 2, H / 2, c.rotation, c.translation) for n, c in cams.items()
    }
    feats, matches = write_inputs(tmp_path, points, cams, noise=0.5)
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", MappingConfig(refine=EXACT))
    info = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    (report,) = info["principal_point"]
    assert report["tried"] is True and report["accepted"] is False, report
    assert info["refine_principal_point"] is False
    m = evaluate(cams, read_all_poses(sparse))
    assert m.registration_ratio == 1.0 and m.to_dict()["auc"]["5"] > 0.99


def test_principal_point_decision_exact_values():
    """The `auto` test on hand-made numbers: 10,000 residuals, 2 refined coordinates and a
    refined error of 9,998 px² (noise variance exactly 1), so the evidence is the drop in px²."""

    def decide(drop, shift):
        return principal_point_decision(9998.0 + drop, 9998.0, 10_000, 2, shift)

    # Herz-Jesu-P8 extracted in its least favourable turn: little evidence (12 < 36.8), but
    # the shift is fixed to 0.1% of the image: kept by the doubled Akaike penalty (8)
    r = decide(12.0, 0.0034)
    assert r["evidence"] == 12.0 and r["penalty"] == 4 * np.log(10_000)
    assert r["penalty_well_conditioned"] == 8.0
    assert r["standard_error"] == 0.0034 / np.sqrt(12.0) and r["well_conditioned"] is True
    assert r["accepted"] is True and "well conditioned" in r["reason"]
    # narrow ring (focal 2x the width), principal point at the centre: more evidence, but its
    # 1.5% shift is uncertain to 0.28%: the doubled BIC penalty applies and rejects it
    r = decide(29.0, 0.0149)
    assert r["well_conditioned"] is False and r["accepted"] is False
    assert r["reason"] == "refining it does not lower the error significantly"
    # a narrow ring with the principal point truly off-centre passes the BIC penalty itself
    r = decide(46.0, 0.0232)
    assert r["accepted"] is True and r["reason"] == "kept: near the centre and significantly better"
    # a large scene (75,000 residuals, as ring2.4-turned): evidence 50 > 4 ln(75,000) = 44.9,
    # but a 2.2% shift uncertain to 0.31% that lowers the error by 0.067% (< 0.2%): rejected
    r = principal_point_decision(75_000.0 + 50.0, 75_000.0, 75_002, 2, 0.022)
    assert r["evidence"] == 50.0 and r["penalty"] == 4 * np.log(75_002) < 50
    assert r["well_conditioned"] is False
    assert r["relative_drop"] == 50.0 / 75_050.0 and r["accepted"] is False
    assert "only 0.07%" in r["reason"] and "poorly conditioned" in r["reason"]
    # the same relative drop, well conditioned (a 0.1% shift): kept by the Akaike penalty
    assert principal_point_decision(75_050.0, 75_000.0, 75_002, 2, 0.001)["accepted"] is True
    # just above the floor (0.21% of the error): kept
    r = principal_point_decision(75_000.0 / 0.9979, 75_000.0, 75_002, 2, 0.022)
    assert r["relative_drop"] > PP_MIN_RELATIVE_DROP and r["accepted"] is True
    # well conditioned but below the Akaike penalty; at the conditioning bound exactly (kept)
    assert decide(7.9, 0.001)["accepted"] is False
    r = decide(16.0, 4 * PP_MAX_STANDARD_ERROR)
    assert r["standard_error"] == PP_MAX_STANDARD_ERROR and r["accepted"] is True
    assert decide(16.0, 4.001 * PP_MAX_STANDARD_ERROR)["accepted"] is False
    # beyond the 3% bound nothing is kept, however strong the evidence
    r = decide(1000.0, 0.031)
    assert r["accepted"] is False and "3%" in r["reason"]
    # refining made it worse: no evidence, infinite standard error
    r = decide(-5.0, 0.001)
    assert r["evidence"] == -5.0 and r["standard_error"] == np.inf and r["accepted"] is False


def test_known_intrinsics_are_compared_with_none_when_the_scene_splits(tmp_path):
    """A scene that does not map whole with known intrinsics is mapped again without them and
    the better result kept (ties keep the prior); mapping.json records the comparison."""
    points, cams = make_views(n=8)
    cams = {n.replace(" ", "_"): c for n, c in cams.items()}
    group = {n: i < 4 for i, n in enumerate(sorted(cams))}
    feats, matches = write_inputs(
        tmp_path, points, cams, keep_pair=lambda a, b: group[a] == group[b]
    )
    intr = write_cameras_txt(
        tmp_path / "intrinsics.txt",
        [CameraPose(n, F, F, W / 2, H / 2, np.eye(3), np.zeros(3)) for n in cams],
    )
    cfg = MappingConfig(intrinsics=intr, camera_model="PINHOLE", refine=EXACT)
    sparse = run_mapping(tmp_path, feats, matches, tmp_path / "out", cfg)
    info = json.loads((sparse / paths.MAPPING_SUMMARY).read_text())
    prior = info["intrinsics_prior"]
    assert prior["kept"] == "with_prior"
    for side in ("with_prior", "without_prior"):
        explained = prior[side].pop("explained")
        assert prior[side] == {"largest": 4, "models": 2, "consistent": True}
        assert explained > 0  # verified inlier matches the largest model explains
    assert not (tmp_path / "out" / ".without_prior").exists()


def test_consistency_reads_the_database_pairs_in_either_order(tmp_path):
    """A hand-made three-image model and database: the keypoints of each 3D point have other
    indices in a and b, and the pair is stored as (b, a), so only a check that indexes each
    column with its own image's keypoints finds 2 of 5 explained; pair (a, c) has 2 of 3. The
    verdict weighs pairs by their inliers: 4 of 8 explained, where the median of the pairs'
    shares would be 0.53."""
    import pycolmap

    camera = pycolmap.Camera.create_from_model_name(1, "SIMPLE_PINHOLE", 500.0, 640, 480)
    db_path = tmp_path / paths.DATABASE
    db = pycolmap.Database.open(str(db_path))
    try:
        db_camera = db.write_camera(camera)
        id_b = db.write_image(pycolmap.Image(name="b.jpg", camera_id=db_camera))
        id_a = db.write_image(pycolmap.Image(name="a.jpg", camera_id=db_camera))
        id_c = db.write_image(pycolmap.Image(name="c.jpg", camera_id=db_camera))
        geometry = pycolmap.TwoViewGeometry()
        # columns: (a, b) keypoint indices; written with a first although a's id is larger
        geometry.inlier_matches = np.array([[0, 3], [1, 4], [2, 0], [3, 1], [4, 2]], np.uint32)
        db.write_two_view_geometry(id_a, id_b, geometry)
        geometry = pycolmap.TwoViewGeometry()
        geometry.inlier_matches = np.array([[0, 0], [1, 1], [3, 3]], np.uint32)  # (a, c)
        db.write_two_view_geometry(id_a, id_c, geometry)
    finally:
        db.close()

    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(camera)
    xy = pycolmap.Point2DList([pycolmap.Point2D(np.array([10.0 * i, 5.0])) for i in range(5)])
    for image_id, name in ((1, "a.jpg"), (2, "b.jpg"), (3, "c.jpg")):
        image = pycolmap.Image(name=name, points2D=xy, camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    # (a, b, c keypoint) of each 3D point; None: not seen there
    for a, b, c in ((0, 3, 0), (1, 4, 1), (2, None, None), (4, None, None), (None, 2, 3)):
        track = pycolmap.Track()
        for image_id, idx in ((1, a), (2, b), (3, c)):
            if idx is not None:
                track.add_element(image_id, idx)
        rec.add_point3D(np.zeros(3), track)

    report = check_consistency(db_path, rec, min_inliers=1, warn=False)
    assert report == {
        "pairs": 2,
        "inliers": 8,
        "explained_inliers": 4,
        "explained": 0.5,
        "median_explained": round((2 / 5 + 2 / 3) / 2, 4),
        "pairs_mostly_unexplained": 1,
        "consistent": True,
    }
    report = check_consistency(db_path, rec, min_inliers=4, warn=False)  # only (a, b) counts
    assert (report["pairs"], report["explained"], report["consistent"]) == (1, 0.4, False)
    assert check_consistency(db_path, rec, min_inliers=6, warn=False) is None  # too few inliers


def test_the_verdict_weighs_pairs_by_their_inliers():
    # one strong pair mostly unexplained, two weak ones fully explained: the median over
    # pairs (1.0) would pass the model; the share of inlier matches (14 of 104) does not
    report = consistency_report(np.array([0.1, 1.0, 1.0]), np.array([100, 2, 2]))
    assert report == {
        "pairs": 3,
        "inliers": 104,
        "explained_inliers": 14,
        "explained": round(14 / 104, 4),
        "median_explained": 1.0,
        "pairs_mostly_unexplained": 1,
        "consistent": False,
    }
    assert consistency_report(np.array([0.5, 0.5]), np.array([10, 30]))["consistent"] is True


def test_a_flagged_model_loses_only_to_one_at_least_half_its_size():
    assert Outcome.of([], None) == Outcome(0, 0, False)
    flagged = Outcome(largest=16, models=1, consistent=False)
    assert is_better(Outcome(8, 2, True), flagged)  # half its images: the sound one wins
    assert not is_better(Outcome(7, 3, True), flagged)  # fewer: size decides
    assert not is_better(flagged, Outcome(8, 2, True))
    assert is_better(Outcome(5, 5, True), Outcome(6, 5, False))  # pedestal5's rescue
    # between equals in consistency, size then fewer models, as before
    assert is_better(Outcome(16, 1, True), Outcome(15, 1, True))
    assert not is_better(Outcome(8, 2, True), Outcome(8, 1, True))
    assert is_better(Outcome(16, 1, False), Outcome(15, 1, False))
    assert not is_better(Outcome(0, 0, False), flagged)
    # between results equal in all that, more explained inlier matches (the contrast rescue)
    assert is_better(Outcome(16, 1, False, 0.45), Outcome(16, 1, False, 0.27))
    assert not is_better(Outcome(16, 1, False, 0.27), Outcome(16, 1, False, 0.45))
    assert not is_better(Outcome(16, 1, False, 0.27), Outcome(16, 1, False, 0.27))  # a tie
    assert not is_better(Outcome(15, 1, True, 0.99), Outcome(16, 1, True, 0.6))


def test_model_is_consistent_reads_mapping_json(tmp_path):
    assert model_is_consistent(tmp_path) is True  # nothing to judge by
    summary = tmp_path / paths.MAPPING_SUMMARY
    summary.write_text(json.dumps({"consistency": None}))
    assert model_is_consistent(tmp_path) is True
    summary.write_text(json.dumps({"consistency": {"consistent": False, "explained": 0.1}}))
    assert model_is_consistent(tmp_path) is False
