"""A Streamlit app over the pipeline: `launch` starts it (the `reconstruct app` subcommand)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

MAIN = Path(__file__).with_name("main.py")


def launch(host: str = "127.0.0.1", port: int = 8501, workdir: Path = Path(".")) -> int:
    """Run ``streamlit run main.py`` bound to `host`:`port`; returns its exit code."""
    from ..errors import MissingExtraError

    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise MissingExtraError("the app needs Streamlit: pip install 'reconstruct[app]'") from None
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(MAIN),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--workdir",
        str(workdir),
    ]
    logger.info("Starting the app on http://%s:%d (workdir %s)", host, port, workdir)
    proc = subprocess.Popen(cmd)
    # SIGTERM or SIGHUP to `reconstruct app` must stop the server: with a bare subprocess.call
    # the launcher dies and the Streamlit server lives on as an orphan, holding the port. Both
    # become SIGTERM for the server (under nohup it inherits SIGHUP as ignored).
    forward = signal.SIGTERM, signal.SIGHUP
    previous = {s: signal.signal(s, lambda _s, _f: proc.terminate()) for s in forward}
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: let the server stop
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
