import json
import shutil

import numpy as np
import pytest

from reconstruct.evaluation import relative_pose_errors
from reconstruct.export import read_all_poses
from reconstruct.gt import rotate_camera
from reconstruct.images import read_image
from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import MatchingConfig, match_pairs
from reconstruct.orientation import (
    OrientationConfig,
    PairVote,
    _ratio_matches,
    _sift_features,
    confirm_turns,
    correct_orientation,
    estimate_votes,
    pair_vote,
    solve_turns,
)
from reconstruct.pairs import PairsConfig, select_pairs
from reconstruct.pipeline import run_pipeline
from reconstruct.settings import load_config
from reconstruct.storage import FeaturesReader, MatchesReader


def vote(a, b, turn, weight=10):
    return PairVote(name0=a, name1=b, counts=(0, 0, 0, 0), turn=turn, weight=weight)


# ----------------------------------------------------------------------------- solver, exact


def test_solver_chain_relative_to_majority():
    # a, b, c upright; d turned so that it needs 2; e needs 1 (relative to b)
    votes = [vote("a", "b", 0), vote("b", "c", 0), vote("c", "d", 2), vote("b", "e", 1)]
    turns = solve_turns(["a", "b", "c", "d", "e"], votes)
    assert turns == {"a": 0, "b": 0, "c": 0, "d": 2, "e": 1}


def test_solver_all_turned_the_same_way_turns_nothing():
    names = ["a", "b", "c", "d"]
    votes = [vote(x, y, 0) for i, x in enumerate(names) for y in names[i + 1 :]]
    assert solve_turns(names, votes) == dict.fromkeys(names, 0)


def test_solver_majority_is_the_reference_even_if_the_first_image_is_turned():
    # "a" is the odd one out: the three others agree; each says turn(x) - turn(a) = 1
    votes = [vote("a", x, 1) for x in "bcd"] + [vote("b", "c", 0), vote("c", "d", 0)]
    assert solve_turns(list("abcd"), votes) == {"a": 3, "b": 0, "c": 0, "d": 0}


def test_solver_conflicting_votes_majority_of_weight_wins():
    # the strong loop a-b-c agrees on b = a + 1, c = a + 1; one strong wrong vote b-c = 2
    # would win the spanning tree if alone; the refinement settles on the weighted majority
    votes = [
        vote("a", "b", 1, 50),
        vote("a", "c", 1, 40),
        vote("b", "c", 2, 60),
        vote("c", "d", 0, 30),
        vote("b", "d", 0, 30),
        vote("a", "d", 1, 30),
    ]
    turns = solve_turns(list("abcd"), votes)
    # b, c, d share one orientation (the majority), a differs from them by one quarter
    assert turns == {"a": 3, "b": 0, "c": 0, "d": 0}
    # every vote but the wrong one agrees with the result
    wrong = [v for v in votes if (turns[v.name1] - turns[v.name0]) % 4 != v.turn]
    assert wrong == [votes[2]]


def test_solver_disconnected_groups_each_keep_their_majority():
    votes = [
        vote("a", "b", 2),
        vote("b", "c", 0),
        vote("x", "y", 3),
        vote("y", "z", 0),
        vote("a", "x", 1, weight=0),  # a non-vote connects nothing
    ]
    turns = solve_turns(["a", "b", "c", "x", "y", "z", "lonely"], votes)
    assert turns == {"a": 2, "b": 0, "c": 0, "x": 1, "y": 0, "z": 0, "lonely": 0}


def test_solver_no_votes_and_reversed_pairs():
    assert solve_turns(["a", "b"], []) == {"a": 0, "b": 0}
    # b - a = 1 stated both ways round; plus c upright with a
    votes = [vote("a", "b", 1), vote("b", "a", 3), vote("c", "a", 0), vote("c", "d", 0)]
    assert solve_turns(list("abcd"), votes) == {"a": 0, "b": 1, "c": 0, "d": 0}


def counted(a, b, counts):
    counts = tuple(counts)
    best = max(range(4), key=lambda k: (counts[k], -k))
    return PairVote(name0=a, name1=b, counts=counts, turn=best, weight=0)


def test_confirm_undoes_a_turn_the_weak_pairs_contradict():
    # as on the synthetic object on black (pedestal5): x turned by one 2/2/13/3 vote with "a",
    # while five pairs too weak to vote say upright
    votes = [counted("a", "x", (2, 2, 13, 3))]
    votes += [counted(p, "x", (9, 1, 4, 4)) for p in "bcdef"]
    turns = {n: 0 for n in "abcdef"} | {"x": 2}
    # turned 13 + 5 * 4 = 33 against upright 2 + 5 * 9 = 47: undone
    assert confirm_turns(turns, votes, 2.0) == dict.fromkeys("abcdefx", 0)
    # without the weak pairs the one vote stands: 13 against 2, (13 - 2) / sqrt(15) = 2.84
    assert confirm_turns(turns, votes[:1], 2.0) == turns
    assert confirm_turns(turns, votes[:1], 3.0)["x"] == 0


def test_confirm_keeps_turns_that_support_each_other_and_undoes_the_weakest_first():
    # y and z upside down together: their own pair (quarter 0) and their pairs with upright
    # images (quarter 2) agree
    votes = [counted("y", "z", (30, 0, 0, 0))]
    votes += [counted("a", n, (1, 0, 20, 0)) for n in "yz"]
    turns = {"a": 0, "y": 2, "z": 2}
    assert confirm_turns(turns, votes, 2.0) == turns
    # x and w agree with each other only, against the upright images: both undone
    votes = [counted("w", "x", (14, 3, 3, 5)), counted("a", "w", (7, 0, 4, 0))]
    votes += [counted("a", "x", (9, 0, 4, 0)), counted("b", "x", (5, 0, 6, 0))]
    turns = {"a": 0, "b": 0, "w": 2, "x": 2}
    assert confirm_turns(turns, votes, 2.0) == dict.fromkeys("abwx", 0)
    # a turned image with no pairs at all has no support: undone
    assert confirm_turns({"a": 0, "q": 1}, [], 2.0) == {"a": 0, "q": 0}


# ----------------------------------------------------------------------------- stage, synthetic


def _turned_copy(scene, dst, turns, count=6):
    import cv2

    dst.mkdir()
    gt = {}
    for i in range(count):
        name = f"view_00{i}.jpg"
        k = turns.get(name, 0)
        pixels = read_image(scene.image_dir / name)
        h, w = pixels.shape[:2]
        out = np.ascontiguousarray(np.rot90(pixels, k))
        cv2.imwrite(str(dst / name), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
        gt[name] = rotate_camera(scene.cameras[name], k, w, h)
    return gt


def _expected(turns, names):
    """Correcting turns relative to the majority of the applied ones."""
    applied = [turns.get(n, 0) for n in names]
    values, counts = np.unique(applied, return_counts=True)
    reference = int(values[np.argmax(counts)])
    return {n: (reference - a) % 4 for n, a in zip(names, applied, strict=True)}


ARRANGEMENTS = {
    "two_upside_down_one_portrait": {"view_001.jpg": 2, "view_003.jpg": 2, "view_004.jpg": 1},
    # five of six turned, three of them by one quarter: those three are the reference
    "most_turned": {
        "view_000.jpg": 1,
        "view_001.jpg": 1,
        "view_002.jpg": 2,
        "view_003.jpg": 1,
        "view_005.jpg": 3,
    },
    "all_same_but_one": {f"view_00{i}.jpg": 2 for i in range(5)},
    "none": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("arrangement", sorted(ARRANGEMENTS))
def test_stage_finds_every_turn(synthetic_scene, tmp_path, arrangement):
    turns = ARRANGEMENTS[arrangement]
    images, out = tmp_path / "images", tmp_path / "out"
    _turned_copy(synthetic_scene, images, turns)
    kcfg, mcfg = KeypointsConfig(max_keypoints=512), MatchingConfig()
    features = extract_keypoints(images, out, kcfg, device="cpu")
    pairs = select_pairs(images, out, PairsConfig(strategy="exhaustive"), device="cpu")
    matches = match_pairs(pairs, features, out, mcfg, device="cpu")
    with MatchesReader(matches) as m:
        before = m.counts()
    path = correct_orientation(
        images, features, pairs, matches, out, OrientationConfig(), kcfg, mcfg, device="cpu"
    )
    data = json.loads(path.read_text())
    names = sorted(f"view_00{i}.jpg" for i in range(6))
    expected = _expected(turns, names)
    assert data["turns"] == expected
    assert data["rotations"] == {n: t for n, t in expected.items() if t}
    assert len(data["evidence"]) == 15 and all(e["agrees"] for e in data["evidence"])
    with FeaturesReader(features) as f:
        assert {n: int(f.attrs(n).get("rotation", 0)) for n in names} == expected
    with MatchesReader(matches) as m:
        after = m.counts()
    # pairs between images of different stored turns were matched again and now hold together
    for (a, b), c in after.items():
        assert c >= 100, (a, b, c, before.get((a, b)))
    # a second call reuses the turns and redoes nothing
    mtime = features.stat().st_mtime_ns, matches.stat().st_mtime_ns
    correct_orientation(
        images, features, pairs, matches, out, OrientationConfig(), kcfg, mcfg, device="cpu"
    )
    assert (features.stat().st_mtime_ns, matches.stat().st_mtime_ns) == mtime


def test_re_extraction_of_turned_images_applies_the_masks(synthetic_scene, tmp_path):
    """The upright stage extracts a turned image again: its mask (given in the file's frame)
    must still hold. The left half of every file is masked; the mask is not symmetric under
    the half turn, so a re-extraction without the mask, or with the mask left unturned,
    would put keypoints on the left half of the file."""
    import cv2

    images, out, masks = tmp_path / "images", tmp_path / "out", tmp_path / "masks"
    _turned_copy(synthetic_scene, images, {"view_001.jpg": 2}, count=3)
    masks.mkdir()
    for path in images.iterdir():
        h, w = read_image(path).shape[:2]
        mask = np.full((h, w), 255, np.uint8)
        mask[:, : w // 2] = 0
        cv2.imwrite(str(masks / f"{path.name}.png"), mask)
    kcfg, mcfg = KeypointsConfig(max_keypoints=512, mask_dir=masks), MatchingConfig()
    features = extract_keypoints(images, out, kcfg, device="cpu")
    pairs = select_pairs(images, out, PairsConfig(strategy="exhaustive"), device="cpu")
    matches = match_pairs(pairs, features, out, mcfg, device="cpu")
    correct_orientation(
        images, features, pairs, matches, out, OrientationConfig(), kcfg, mcfg, device="cpu"
    )
    with FeaturesReader(features) as f:
        assert int(f.attrs("view_001.jpg").get("rotation", 0)) == 2  # it was extracted again
        for name in f.names():
            keypoints = f.read(name).keypoints
            assert len(keypoints) > 50, name
            assert keypoints[:, 0].min() >= w // 2, name


@pytest.mark.slow
def test_turned_images_register(synthetic_scene, tmp_path, monkeypatch):
    """Two of six views upside down and one in portrait, no EXIF: all register, poses right."""
    from reconstruct import keypoints as keypoints_module

    images = tmp_path / "images"
    turns = ARRANGEMENTS["two_upside_down_one_portrait"]
    gt = _turned_copy(synthetic_scene, images, turns)
    cfg = load_config(overrides={"keypoints": {"max_keypoints": 512}})
    extracted = []
    extract = keypoints_module.extract_image
    monkeypatch.setattr(
        keypoints_module,
        "extract_image",
        lambda *a, **k: extracted.append(1) or extract(*a, **k),
    )
    summary = run_pipeline(images, tmp_path / "out", cfg)
    assert summary.counts["registered_images"] == 6, summary.format()
    # exhaustive pairs need no features: the cue ran first and each view was extracted once,
    # already turned (the turned ones used to be extracted twice)
    assert len(extracted) == 6
    found = json.loads((tmp_path / "out" / "rotations.json").read_text())["rotations"]
    # turns are relative to the upright majority: the three unturned views stay at 0
    assert found == {"view_001.jpg": 2, "view_003.jpg": 2, "view_004.jpg": 3}
    errors = relative_pose_errors(gt, read_all_poses(tmp_path / "out" / "sparse"))
    assert max(e.rotation_error_deg for e in errors) < 1.0
    # portrait and upside-down views share the camera of the upright ones in the mapping; the
    # model holds them in their files' frames, with that camera turned (mapping.json says which)
    sparse = tmp_path / "out" / "sparse"
    info = json.loads((sparse / "mapping.json").read_text())
    assert info["turned_images"] == 3
    # one camera for all six, so the principal-point policy could consider refining it
    assert info["principal_point"][0]["images_per_camera"] == 6
    (derived,) = info["turned_cameras"]
    assert {v["camera_id"] for v in derived.values()} == {1}
    assert sorted(v["quarter_turns"] for v in derived.values()) == [1, 2]
    poses = read_all_poses(sparse)[0]
    shared = poses["view_000.jpg"]
    portrait = poses["view_004.jpg"]
    assert (portrait.fx, portrait.fy) == (shared.fy, shared.fx)
    assert portrait.cx == pytest.approx(shared.cy) and portrait.cy == pytest.approx(640 - shared.cx)

    # a re-run reuses everything: nothing is extracted or matched again
    again = run_pipeline(images, tmp_path / "out", cfg)
    assert again.counts["registered_images"] == 6
    assert again.timings["keypoints"] < 2.0 and again.timings["matching"] < 2.0
    shutil.rmtree(tmp_path / "out")


def _features_with_turns(counts, seed=0):
    """Two images' SIFT features whose exact matches turn by k quarters `counts[k]` times."""
    rng = np.random.default_rng(seed)
    diffs = np.repeat(np.arange(4) * 90.0, counts)
    desc = rng.integers(0, 256, (len(diffs), 128), dtype=np.uint8)
    angles0 = rng.uniform(0, 360, len(diffs)).astype(np.float32)
    angles1 = ((angles0 + diffs + rng.uniform(-20, 20, len(diffs))) % 360).astype(np.float32)
    return (angles0, desc), (angles1, desc.copy())


@pytest.mark.parametrize(
    ("counts", "turn", "weight"),
    [
        ((2, 12, 9, 2), 1, 0),  # lead 3 of a near tie (seen on a textureless ring): no vote
        ((16, 8, 0, 0), 0, 0),  # lead 8 < 2 sqrt(24)
        ((1, 17, 6, 1), 1, 11),  # lead 11 >= 2 sqrt(23)
        ((12, 1, 0, 0), 0, 11),
        ((0, 0, 11, 0), 2, 0),  # fewer than min_votes
    ],
)
def test_a_pair_votes_only_with_a_significant_lead(counts, turn, weight):
    feats0, feats1 = _features_with_turns(counts)
    v = pair_vote("a.jpg", "b.jpg", feats0, feats1, OrientationConfig())
    assert (v.counts, v.turn, v.weight) == (counts, turn, weight)
    # without the significance test the near ties vote
    loose = pair_vote("a.jpg", "b.jpg", feats0, feats1, OrientationConfig(min_lead_sigma=0))
    assert loose.weight == (counts[turn] - sorted(counts)[-2] if max(counts) >= 12 else 0)
    with pytest.raises(ValueError, match="min_lead_sigma"):
        OrientationConfig(min_lead_sigma=-1)


# ----------------------------------------------------------------------------- the cue, cost


def test_matrix_matches_are_the_brute_force_matches(synthetic_scene):
    import cv2

    config = OrientationConfig()
    names = sorted(p.name for p in synthetic_scene.image_dir.glob("*.jpg"))[:4]
    feats = {n: _sift_features(synthetic_scene.image_dir / n, config) for n in names}
    assert all(d.dtype == np.uint8 and len(d) > 100 for _, d in feats.values())
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d0, d1 = feats[a][1], feats[b][1]
            knn = matcher.knnMatch(d0.astype(np.float32), d1.astype(np.float32), k=2)
            expected = sorted(
                (m.queryIdx, m.trainIdx) for m, n in knn if m.distance < config.ratio * n.distance
            )
            i0, i1 = _ratio_matches(d0, d1, config.ratio)
            assert len(expected) > 20
            assert sorted(zip(i0.tolist(), i1.tolist(), strict=True)) == expected, (a, b)
            assert pair_vote(a, b, feats[a], feats[b], config) == pair_vote(
                a, b, feats[a], feats[b], config, matcher
            )


def test_threaded_votes_equal_the_serial_votes(synthetic_scene, tmp_path):
    import cv2

    images = tmp_path / "images"
    _turned_copy(synthetic_scene, images, {"view_001.jpg": 2, "view_004.jpg": 1})
    names = sorted(p.name for p in images.iterdir())
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    serial = estimate_votes(images, pairs, OrientationConfig(workers=0))
    threaded = estimate_votes(images, pairs, OrientationConfig(workers=2))
    assert threaded == serial and [(v.name0, v.name1) for v in serial] == pairs
    brute = estimate_votes(images, pairs, OrientationConfig(), matcher=cv2.BFMatcher())
    assert brute == serial
    assert solve_turns(names, serial) == _expected({"view_001.jpg": 2, "view_004.jpg": 1}, names)
    with pytest.raises(ValueError):
        OrientationConfig(workers=-1)


# ----------------------------------------------------------------------------- rings


def test_similar_pairs_are_each_images_nearest_sets_of_descriptors():
    from reconstruct.orientation import similar_pairs

    rng = np.random.default_rng(0)
    a, c = rng.integers(0, 120, (2, 200, 128)).astype(np.uint8)
    # b holds a's descriptors in another order (as SIFT gives after a turn), slightly changed;
    # d likewise from c
    b = np.clip(a[rng.permutation(200)] + rng.integers(0, 3, (200, 128)), 0, 255).astype(np.uint8)
    d = np.clip(c[rng.permutation(200)] + rng.integers(0, 3, (200, 128)), 0, 255).astype(np.uint8)
    descriptors = {"a": a, "b": b, "c": c, "d": d, "empty": np.zeros((0, 128), np.uint8)}
    assert similar_pairs(descriptors, 1, codebook_size=4) == [("a", "b"), ("c", "d")]
    # more neighbours only where the VLAD cosine is positive; "empty" has none
    wider = similar_pairs(descriptors, 3, codebook_size=4)
    assert {("a", "b"), ("c", "d")} <= set(wider) and not any("empty" in p for p in wider)
    assert similar_pairs(descriptors, 0) == []
    with pytest.raises(ValueError, match="neighbours"):
        OrientationConfig(neighbours=-1)


def test_turns_on_a_ring_found_when_the_pairs_join_only_equal_orientations(tmp_path):
    """Retrieval pairs an upside-down photo with other upside-down photos (its descriptors are
    not rotation-invariant); the cue's own rotation-invariant neighbours link the two groups.

    Across a ring the texture on the ground turns with the viewing direction, so votes of
    distant views are wrong (opposite views see it turned by about 180 degrees): without the
    neighbours the turns come out wrong, with them right. 18 views, 20 degrees apart (at 30
    degrees apart, 12 views, the distant votes still win: measured)."""
    import cv2

    from reconstruct.synthetic import SceneConfig, make_scene

    config = SceneConfig(
        layout="object", arc_degrees=360, num_images=18, width=320, height=240, focal=2.4 * 320
    )
    scene = make_scene(tmp_path / "ring", config)
    names = sorted(scene.cameras)
    turned = {n: 2 for n in names[1::3]}
    for name in turned:
        path = scene.image_dir / name
        cv2.imwrite(str(path), cv2.rotate(cv2.imread(str(path)), cv2.ROTATE_180))
    pairs = [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if (a in turned) == (b in turned)
    ]
    alone = solve_turns(
        names, estimate_votes(scene.image_dir, pairs, OrientationConfig(neighbours=0))
    )
    assert alone != _expected(turned, names)
    votes = estimate_votes(scene.image_dir, pairs, OrientationConfig(), names=names)
    assert [(v.name0, v.name1) for v in votes[: len(pairs)]] == pairs
    assert any((a in turned) != (b in turned) for a, b in ((v.name0, v.name1) for v in votes))
    assert solve_turns(names, votes) == _expected(turned, names)
