"""The Ray executor writes the same files as the local one, resumes across executors and survives
a killed worker. Needs the `distributed` extra; skipped with a reason when Ray cannot start."""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import socket
import sys
import types

import h5py
import numpy as np
import pytest

from reconstruct.errors import ExecutorError, MissingExtraError
from reconstruct.executors import (
    LocalExecutor,
    RayExecutor,
    actor_options,
    make_executor,
    plan_workers,
)
from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import match_pairs
from reconstruct.storage import MatchesReader, write_pairs

# jobs=2: the local loop runs each image on one torch thread, as the Ray actors do, whatever
# memory is free (auto jobs may drop to one job with all threads when memory is short).
CONFIG = KeypointsConfig(max_keypoints=256, resize=480, jobs=2)


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
def ray_executor(tmp_path_factory):
    pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[distributed]")')
    # conftest blocks Python sockets; Ray's driver talks to its local GCS over loopback.
    with pytest.MonkeyPatch.context() as mp:
        # The actors inherit this environment: their weights caches stay in the test's folder.
        cache = tmp_path_factory.mktemp("ray_caches")
        for var in ("RECONSTRUCT_CACHE", "TORCH_HOME", "HF_HOME"):
            mp.setenv(var, str(cache / var.lower()))
        for attr in ("connect", "connect_ex"):
            mp.setattr(socket.socket, attr, getattr(socket._socket.socket, attr))
        mp.setattr(socket, "getaddrinfo", socket._socket.getaddrinfo)
        mp.setattr(socket, "create_connection", _create_connection)
        try:
            executor = make_executor("ray", num_cpus=2, match_batch=4, extract_batch=2)
        except Exception as e:  # any failure to start means: skip
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


# ----------------------------------------------------------------------------- DINOv2 shards


def test_ray_global_descriptors_are_the_local_ones(ray_executor, tmp_path, monkeypatch):
    """DINOv2 global descriptors sharded over Ray actors: the same global.h5, bit for bit.
    Random-init ViT-S/14 weights (the smallest real backbone: an actor loads them by path, as
    it would load the official file), images of mixed sizes and one unreadable file, so the
    shards must keep the local loop's batches."""
    import cv2
    import torch

    from reconstruct.models import dinov2
    from reconstruct.retrieval import RetrievalConfig, compute_global_descriptors

    for var in ("RECONSTRUCT_CACHE", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    torch.manual_seed(0)
    weights = tmp_path / "dinov2_vits14_random.pth"
    torch.save(dinov2.to_meta_layout(dinov2.build_model("vits14")), weights)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i, (w, h) in enumerate([(64, 48), (64, 48), (48, 64), (64, 48), (64, 48), (70, 70)]):
        names.append(f"img_{i}.png")
        cv2.imwrite(str(images / names[-1]), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    names.insert(3, "broken.png")
    (images / "broken.png").write_bytes(b"not an image")
    config = RetrievalConfig(
        backbone="vits14", resolution=56, batch_size=2, weights=weights, download=False
    )
    local_path, local_names, _ = compute_global_descriptors(
        images, names, tmp_path / "local", config
    )
    ray_path, ray_names, _ = compute_global_descriptors(
        images, names, tmp_path / "ray", config, executor=ray_executor
    )
    assert ray_names == local_names and "broken.png" not in ray_names and len(ray_names) == 6
    assert _dump(ray_path) == _dump(local_path)


# ----------------------------------------------------------------------------- resources


def test_plan_workers_cpu_and_gpu():
    cpu_only = {"CPU": 8.0}
    assert plan_workers(cpu_only, num_cpus=None, threads_per_worker=2) == (4, 2, 0.0)
    assert plan_workers(cpu_only, num_cpus=3, threads_per_worker=2) == (1, 2, 0.0)
    assert plan_workers(cpu_only, num_cpus=None, threads_per_worker=16) == (1, 8, 0.0)
    gpus = {"CPU": 16.0, "GPU": 4.0}
    # auto uses the GPUs: one actor per GPU, as many as CPUs allow
    assert plan_workers(gpus, num_cpus=None, threads_per_worker=2) == (4, 2, 1.0)
    assert plan_workers(gpus, num_cpus=None, threads_per_worker=2, device="cuda") == (4, 2, 1.0)
    assert plan_workers(gpus, num_cpus=4, threads_per_worker=2, device="cuda") == (2, 2, 1.0)
    half = plan_workers(gpus, num_cpus=None, threads_per_worker=1, gpus_per_worker=0.5)
    assert half == (8, 1, 0.5)
    assert plan_workers(gpus, num_cpus=None, threads_per_worker=2, device="cpu") == (8, 2, 0.0)
    with pytest.raises(ExecutorError, match="no GPUs"):
        plan_workers(cpu_only, num_cpus=None, threads_per_worker=2, device="cuda")
    with pytest.raises(ExecutorError, match="asks for 2"):
        plan_workers({"CPU": 4, "GPU": 1}, num_cpus=None, threads_per_worker=1, gpus_per_worker=2)


class _FakeRay:
    """Just enough of the `ray` module for `RayExecutor.map`: tasks run when fetched, finish in
    random order, and the number of unfinished tasks is tracked."""

    def __init__(self, seed: int = 0) -> None:
        self.options: list[dict] = []
        self.live: set = set()
        self.peak = 0
        self.cancelled: list = []
        self.rng = random.Random(seed)
        self.exceptions = types.SimpleNamespace(RayError=RuntimeError)

    def remote(self, **options):
        self.options.append(options)
        return lambda cls: types.SimpleNamespace(remote=lambda *args: _FakeActor(self))

    def wait(self, refs, num_returns=1):
        ref = self.rng.choice(refs)
        return [ref], [r for r in refs if r is not ref]

    def get(self, ref):
        self.live.discard(ref)
        return ref()

    def cancel(self, ref):
        self.cancelled.append(ref)
        self.live.discard(ref)

    def kill(self, actor):
        pass

    def is_initialized(self):
        return True


class _FakeActor:
    def __init__(self, ray: _FakeRay) -> None:
        self.ray = ray
        self.process = types.SimpleNamespace(remote=self._submit)

    def _submit(self, worker_cls, init_args, payload, threads):
        def run():
            return worker_cls(*init_args).process(payload), 0.5

        self.ray.live.add(run)
        self.ray.peak = max(self.ray.peak, len(self.ray.live))
        return run


class _Times:
    def __init__(self, k: int) -> None:
        self.k = k

    def process(self, batch: list[int]) -> list[int]:
        return [self.k * x for x in batch]


def test_actor_request_and_bounded_in_flight_batches(caplog):
    """The driver asks Ray for the planned CPUs and GPUs per actor, never has more than
    `max_in_flight` batches out (payloads are built only when a slot frees: driver memory is
    bounded by that, not by the job), gets every result once, logs one throughput line per
    worker, and cancels what is queued when the caller stops early."""
    fake = _FakeRay()
    executor = RayExecutor(
        ray=fake, num_workers=3, max_in_flight=5, threads_per_worker=2, gpus_per_worker=1.0
    )
    pulled = [0]

    def batches():
        for i in range(40):
            pulled[0] += 1
            yield 3, [3 * i, 3 * i + 1, 3 * i + 2]

    got, received = [], 0
    with caplog.at_level(logging.INFO, logger="reconstruct.executors"):
        for results in executor.map(_Times, (2,), batches()):
            received += 1
            assert pulled[0] - received <= executor.max_in_flight - 1
            got += results
    assert sorted(got) == [2 * x for x in range(120)]
    assert fake.peak == executor.max_in_flight
    assert fake.options == [actor_options(2, 1.0, executor.max_task_retries)]
    assert fake.options[0]["num_gpus"] == 1.0 and fake.options[0]["num_cpus"] == 2
    lines = [r.getMessage() for r in caplog.records if "items/s" in r.getMessage()]
    assert len(lines) == 3 and sum(int(line.split()[2]) for line in lines) == 120

    for _ in executor.map(_Times, (1,), batches()):  # the caller stops after one batch
        break
    assert fake.cancelled and not fake.live
