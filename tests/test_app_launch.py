"""`reconstruct app` as a process: stopping the launcher stops the Streamlit server."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the app needs streamlit: pip install 'reconstruct[app]'")


def _port_taken(port: int) -> bool:
    # bind, not connect: connections stay blocked in tests (conftest)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _wait(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_launcher_stops_the_server(tmp_path, signum, free_port):
    port = free_port
    code = (
        "import sys; from pathlib import Path; from reconstruct.app import launch; "
        f"sys.exit(launch('127.0.0.1', {port}, Path(sys.argv[1])))"
    )
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "work")],
        stdout=log,
        stderr=log,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,  # so the cleanup below can reach a leaked server
    )
    try:
        assert _wait(lambda: _port_taken(port), 90), Path(tmp_path / "server.log").read_text()
        proc.send_signal(signum)
        assert _wait(lambda: not _port_taken(port), 30), "the server outlived its launcher"
        assert proc.wait(10) is not None
    finally:
        log.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
