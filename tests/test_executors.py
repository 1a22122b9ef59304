"""The Ray executor writes the same files as the local one, resumes across executors and survives
a killed worker. Needs the `distributed` extra; skipped with a reason when Ray cannot start."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys

import h5py
import numpy as np
import pytest

from reconstruct.errors import MissingExtraError
from reconstruct.executors import LocalExecutor, make_executor
from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import match_pairs
from reconstruct.storage import MatchesReader, write_pairs

CONFIG = KeypointsConfig(max_keypoints=256, resize=480)


def _dump(path) -> dict:
    """Every dataset (as bytes, dtype and shape) and every attribute of an HDF5 file, by path."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        out["/"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}

        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = (data.dtype.str, data.shape, np.asarray(data).tobytes(), attrs)
            else:
                out[name] = attrs

        f.visititems(visit)
    return out


@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[distributed]")')
    # conftest blocks Python sockets; Ray's driver talks to its local GCS over loopback.
    with pytest.MonkeyPatch.context() as mp:
        for attr in ("connect", "connect_ex"):
            mp.setattr(socket.socket, attr, getattr(socket._socket.socket, attr))
        mp.setattr(socket, "getaddrinfo", socket._socket.getaddrinfo)
        mp.setattr(socket, "create_connection", _create_connection)
        try:
            executor = make_executor("ray", num_cpus=2, match_batch=4, extract_batch=2)
        except Exception as e:  # noqa: BLE001 - any failure to start means: skip
            pytest.skip(f"a local Ray instance cannot start here: {e}")
        yield executor
        executor.close()


def _create_connection(address, timeout=None, source_address=None, **kwargs):
    """socket.create_connection restricted to loopback (Ray's local instance only)."""
    host, port = address
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise OSError("network access is blocked in tests")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if timeout is not None:
        sock.settimeout(timeout)
    socket._socket.socket.connect(sock, ("127.0.0.1", port))
    return sock


@pytest.fixture(scope="module")
def scene_pairs(synthetic_scene, tmp_path_factory):
    names = sorted(p.name for p in synthetic_scene.image_dir.glob("*.jpg"))[:5]  # 10 pairs
    pairs = list(itertools.combinations(names, 2))
    path = write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.txt", pairs)
    return names, pairs, path


@pytest.fixture(scope="module")
def local_run(synthetic_scene, scene_pairs, tmp_path_factory):
    """The reference: everything on the local executor."""
    _, _, pairs_path = scene_pairs
    out = tmp_path_factory.mktemp("local")
    names = scene_pairs[0]
    feats = extract_keypoints(synthetic_scene.image_dir, out, CONFIG, image_names=names)
    matches = match_pairs(pairs_path, feats, out, executor=LocalExecutor())
    return feats, matches


def test_ray_writes_the_same_files(synthetic_scene, scene_pairs, local_run, ray_executor, tmp_path):
    names, pairs, pairs_path = scene_pairs
    feats = extract_keypoints(
        synthetic_scene.image_dir, tmp_path, CONFIG, image_names=names, executor=ray_executor
    )
    assert _dump(feats) == _dump(local_run[0])
    matches = match_pairs(pairs_path, feats, tmp_path, executor=ray_executor)
    assert _dump(matches) == _dump(local_run[1])
    with MatchesReader(matches) as r:
        assert r.pairs() == sorted(pairs)
        assert sum(len(r.read(a, b)[0]) for a, b in pairs) > 50 * len(pairs)
    assert not (tmp_path / "matches.h5.parts").exists()


@pytest.mark.parametrize("first", ["local", "ray"])
def test_resume_across_executors(
    synthetic_scene, scene_pairs, local_run, ray_executor, tmp_path, first
):
    names, pairs, pairs_path = scene_pairs
    executors = {"local": None, "ray": ray_executor}
    one, two = executors[first], executors["ray" if first == "local" else "local"]
    image_dir = synthetic_scene.image_dir
    extract_keypoints(image_dir, tmp_path, CONFIG, image_names=names[:3], executor=one)
    feats = extract_keypoints(image_dir, tmp_path, CONFIG, image_names=names, executor=two)
    assert _dump(feats) == _dump(local_run[0])
    subset = write_pairs(tmp_path / "subset.txt", pairs[:4])
    match_pairs(subset, feats, tmp_path, executor=one)
    matches = match_pairs(pairs_path, feats, tmp_path, executor=two)
    assert _dump(matches) == _dump(local_run[1])


def test_killed_worker_is_retried(scene_pairs, local_run, ray_executor, tmp_path):
    _, pairs, pairs_path = scene_pairs
    events: dict[str, int] = {}

    def kill_once(executor, index):
        if "killed" not in events:
            pid = executor.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            events["killed"] = pid
        elif "after" not in events:
            events["after"] = executor.worker_pids()[0]

    ray_executor.on_result = kill_once
    try:
        matches = match_pairs(pairs_path, local_run[0], tmp_path, executor=ray_executor)
    finally:
        ray_executor.on_result = None
    assert "killed" in events and events.get("after") not in (None, events["killed"])
    assert _dump(matches) == _dump(local_run[1])  # every pair once, same matches
    with MatchesReader(matches) as r:
        assert r.pairs() == sorted(pairs)
    assert not (tmp_path / "matches.h5.parts").exists()


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[distributed\]"'):
        make_executor("ray")
    assert make_executor("local").kind == "local"
