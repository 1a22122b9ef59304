"""Shared fixtures. Tests never touch the network: sockets are blocked for the whole session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


class _NoNetwork(socket.socket):
    def connect(self, *args, **kwargs):  # noqa: D102
        raise OSError("network access is blocked in tests")

    def connect_ex(self, *args, **kwargs):  # noqa: D102
        raise OSError("network access is blocked in tests")


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    original = socket.socket
    socket.socket = _NoNetwork  # type: ignore[misc]
    original_create = socket.create_connection

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in tests")

    socket.create_connection = refuse  # type: ignore[assignment]
    yield
    socket.socket = original  # type: ignore[misc]
    socket.create_connection = original_create  # type: ignore[assignment]


def _data_root() -> Path | None:
    value = os.environ.get("RECONSTRUCT_DATA")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


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
