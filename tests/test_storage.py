import h5py
import numpy as np
import pytest

from reconstruct.errors import StaleOutputError, StorageError
from reconstruct.storage import (
    FEATURES_SCHEMA,
    MATCHES_SCHEMA,
    FeaturesReader,
    Header,
    MatchesReader,
    ResultWriter,
    key_to_name,
    name_to_key,
    read_header,
    read_pairs,
    read_pairs_with_scores,
    write_pairs,
)

AWKWARD = ["a/b.jpg", "a-b.jpg", "a%2Fb.jpg", "with space.png", "ünï/cödé.JPG", "x.y-z_~.png"]


def features(n, d=4, size=(64, 48)):
    rng = np.random.default_rng(n)
    return {
        "keypoints": rng.uniform(0, 40, (n, 2)).astype(np.float32),
        "descriptors": rng.normal(size=(n, d)).astype(np.float32),
        "scores": rng.uniform(size=n).astype(np.float32),
    }, {"image_size": size}


def header(schema=FEATURES_SCHEMA, h="abc", **extra):
    return Header(schema, {"k": 1}, h, extra or None)


def test_keys_are_reversible_and_collision_free():
    keys = [name_to_key(n) for n in AWKWARD]
    assert len(set(keys)) == len(keys)
    assert all("/" not in k for k in keys)
    assert [key_to_name(k) for k in keys] == AWKWARD
    assert name_to_key("a/b.jpg") == "a%2Fb.jpg"
    assert name_to_key("a%2Fb.jpg") == "a%252Fb.jpg"


def test_features_round_trip_with_awkward_names_and_zero_keypoints(tmp_path):
    path = tmp_path / "features.h5"
    with ResultWriter(path, header()) as w:
        for i, name in enumerate(AWKWARD):
            arrays, attrs = features(i * 3)  # the first has 0 keypoints
            w.add((name,), arrays, attrs)
    assert not (tmp_path / "features.h5.parts").exists()
    with FeaturesReader(path) as r:
        assert r.names() == sorted(AWKWARD)
        for i, name in enumerate(AWKWARD):
            f = r.read(name)
            expected, _ = features(i * 3)
            np.testing.assert_array_equal(f.keypoints, expected["keypoints"])
            assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (i * 3, 2)
            assert f.image_size == (64, 48)
    h = read_header(path, FEATURES_SCHEMA)
    assert h.config_hash == "abc" and h.config == {"k": 1}
    with h5py.File(path) as f:
        assert f.attrs["schema_version"] == 1


def test_matches_are_uint32_and_reversed_pairs_flip(tmp_path):
    path = tmp_path / "matches.h5"
    m = np.array([[0, 5], [2, 70000]], np.uint32)
    with ResultWriter(path, header(MATCHES_SCHEMA, features_hash="f1")) as w:
        w.add(("a-b.jpg", "a/b.jpg"), {"matches": m, "scores": np.ones(2, np.float32)})
        w.add(("x", "y"), {"matches": np.zeros((0, 2), np.uint32), "scores": np.zeros(0)})
    with MatchesReader(path) as r:
        assert r.features_hash == "f1"
        assert r.pairs() == [("a-b.jpg", "a/b.jpg"), ("x", "y")]
        got, _ = r.read("a-b.jpg", "a/b.jpg")
        assert got.dtype == np.uint32
        np.testing.assert_array_equal(got, m)
        np.testing.assert_array_equal(r.read("a/b.jpg", "a-b.jpg")[0], m[:, ::-1])
        assert r.read("y", "x")[0].shape == (0, 2)
        assert ("y", "x") in r
        with pytest.raises(StorageError, match="no matches"):
            r.read("x", "z")


def test_different_config_hash_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "features.h5"
    with ResultWriter(path, header(h="one")) as w:
        w.add(("a",), *features(3))
    with pytest.raises(StaleOutputError, match="--overwrite"):
        ResultWriter(path, header(h="two"))
    with ResultWriter(path, header(h="two"), overwrite=True) as w:
        assert w.done == frozenset()
        w.add(("b",), *features(2))
    with FeaturesReader(path) as r:
        assert r.names() == ["b"] and r.config_hash == "two"


def test_resume_adds_only_missing_items(tmp_path):
    path = tmp_path / "features.h5"
    with ResultWriter(path, header()) as w:
        w.add(("a",), *features(3))
    with ResultWriter(path, header()) as w:
        assert w.done == {("a",)}
        w.add(("b",), *features(4))
    with FeaturesReader(path) as r:
        assert r.names() == ["a", "b"]


def test_interrupted_run_resumes_to_the_same_file(tmp_path):
    names = ["a", "b", "c", "d"]
    ref = tmp_path / "ref" / "features.h5"
    with ResultWriter(ref, header()) as w:
        for i, n in enumerate(names):
            w.add((n,), *features(i + 1))

    path = tmp_path / "run" / "features.h5"
    with pytest.raises(KeyboardInterrupt), ResultWriter(path, header()) as w:
        for i, n in enumerate(names):
            if i == 2:
                raise KeyboardInterrupt
            w.add((n,), *features(i + 1))
    assert not path.exists()  # nothing half-written at the final name
    # a part being written when the process died: a temporary file, never a .npz
    (path.parent / "features.h5.parts" / ".00000009.npz.x.tmp").write_bytes(b"garbage")
    with ResultWriter(path, header()) as w:
        assert w.done == {("a",), ("b",)}
        for i, n in enumerate(names):
            if (n,) not in w.done:
                w.add((n,), *features(i + 1))
    with FeaturesReader(ref) as r1, FeaturesReader(path) as r2:
        assert r1.names() == r2.names()
        for n in names:
            np.testing.assert_array_equal(r1.read(n).descriptors, r2.read(n).descriptors)


def test_parts_from_another_config_are_refused(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(RuntimeError), ResultWriter(path, header(h="one")) as w:
        w.add(("a",), *features(1))
        raise RuntimeError("killed")
    with pytest.raises(StaleOutputError):
        ResultWriter(path, header(h="two"))


def test_corrupt_file_gives_a_typed_error(tmp_path):
    path = tmp_path / "features.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(StorageError, match="overwrite"):
        ResultWriter(path, header())
    with pytest.raises(StorageError, match="not a readable HDF5"):
        FeaturesReader(path)
    with pytest.raises(StorageError, match="does not exist"):
        FeaturesReader(tmp_path / "missing.h5")


def test_wrong_schema_is_refused(tmp_path):
    path = tmp_path / "m.h5"
    with ResultWriter(path, header(MATCHES_SCHEMA)) as w:
        w.add(("a", "b"), {"matches": np.zeros((0, 2), np.uint32)})
    with pytest.raises(StorageError, match="not a reconstruct.features file"):
        FeaturesReader(path)


def test_failed_images_are_recorded_not_listed(tmp_path):
    path = tmp_path / "features.h5"
    with ResultWriter(path, header()) as w:
        w.add(("ok",), *features(2))
        arrays, _ = features(0)
        w.add(("bad",), arrays, {"error": "truncated", "image_size": (0, 0)})
    with FeaturesReader(path) as r:
        assert r.names() == ["ok"]
        assert r.failed() == {"bad": "truncated"}
        assert "bad" not in r


def test_pairs_file_round_trip(tmp_path):
    pairs = [("with space.png", "a%b.jpg"), ("a/b.jpg", "ünï.png"), ("#hash", "t\tab")]
    path = write_pairs(tmp_path / "pairs.txt", pairs, scores=[0.5, 0.25, 1.0], header={"k": 1})
    assert read_pairs(path) == pairs
    assert [s for _, s in read_pairs_with_scores(path)] == [0.5, 0.25, 1.0]
    (tmp_path / "hloc.txt").write_text("a.jpg b.jpg\n\nc.jpg d.jpg\n")
    assert read_pairs(tmp_path / "hloc.txt") == [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg")]
    (tmp_path / "bad.txt").write_text("a.jpg b.jpg\na.jpg\n")
    with pytest.raises(StorageError, match="bad.txt:2"):
        read_pairs(tmp_path / "bad.txt")


def test_match_counts_come_from_shapes(tmp_path):
    path = tmp_path / "matches.h5"
    with ResultWriter(path, header(MATCHES_SCHEMA)) as w:
        w.add(("a", "b"), {"matches": np.zeros((3, 2), np.uint32)})
        w.add(("a", "c"), {"matches": np.zeros((0, 2), np.uint32)})
    with MatchesReader(path) as r:
        assert r.counts() == {("a", "b"): 3, ("a", "c"): 0}
