"""Shared fixtures. Tests never touch the network: sockets are blocked for the whole session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def _refuse(*args, **kwargs):
    raise OSError("network access is blocked in tests")


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    """Any attempt to resolve a name or open a connection fails at once, in every test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket.socket, "connect_ex", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        mp.setattr(socket, "getaddrinfo", _refuse)
        yield


@pytest.fixture()
def caches(tmp_path, monkeypatch):
    """Every weights cache the DINOv2 resolver looks at points into tmp_path (empty)."""
    monkeypatch.setenv("RECONSTRUCT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "cache" / "weights"


def pytest_collection_modifyitems(config, items):
    """Tests on the real photos or a Ray instance are slow ones too (plain `pytest` leaves
    them out)."""
    for item in items:
        slow_fixtures = {"real_data", "ray_executor"} & set(getattr(item, "fixturenames", ()))
        if slow_fixtures or item.get_closest_marker("realdata") is not None:
            item.add_marker(pytest.mark.slow)


def _data_root() -> Path | None:
    value = os.environ.get("RECONSTRUCT_DATA")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture()
def free_port() -> int:
    """A localhost TCP port that is free now (binding is not blocked, connecting is)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data, found through RECONSTRUCT_DATA (set by .ci/run); skipped elsewhere."""
    root = _data_root()
    if root is None:
        pytest.skip(
            "real photos not available: set RECONSTRUCT_DATA to the folder holding "
            "sacre_coeur/ and Herz-Jesu-P8/ (.ci/run sets it to ../shared/data)"
        )
    return root


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory):
    """The default synthetic scene (8 images with known cameras), rendered once."""
    from reconstruct.synthetic import SceneConfig, make_scene

    return make_scene(tmp_path_factory.mktemp("scene"), SceneConfig())


@pytest.fixture(scope="session")
def staged_run(synthetic_scene, tmp_path_factory):
    """The synthetic scene reconstructed by the stage commands one after the other
    (extract, pairs, orient, match, map, export, the order `run` uses): (output folder, scene)."""
    from reconstruct.cli import main

    out = tmp_path_factory.mktemp("staged")
    images = str(synthetic_scene.image_dir)
    fast = ["--set", "keypoints.max_keypoints=512", "--set", "keypoints.resize=640"]
    for argv in (
        ["extract", images, "-o", str(out), "--device", "cpu", *fast],
        ["pairs", images, "-o", str(out), "--device", "cpu", *fast],
        ["orient", images, "-o", str(out), "--device", "cpu", *fast],
        ["match", str(out), "--device", "cpu", *fast],
        ["map", images, "-o", str(out), *fast],
        ["export", str(out), *fast],
    ):
        assert main(argv) == 0, argv
    return out, synthetic_scene


@pytest.fixture()
def make_summary(tmp_path):
    """A `pipeline.RunSummary` of a run into `tmp_path`, from hand-made counts (and rescue)."""
    from reconstruct import paths
    from reconstruct.pipeline import RunSummary

    def make(counts: dict, rescue: dict | None = None) -> RunSummary:
        return RunSummary(
            image_dir="imgs",
            output_dir=str(tmp_path),
            config={},
            config_hash="x",
            versions={},
            timings={"total": 1.0},
            counts=counts,
            unreadable_images={},
            models=[{}],
            model_dir=str(tmp_path / paths.MODEL),
            rescue=rescue,
        )

    return make
