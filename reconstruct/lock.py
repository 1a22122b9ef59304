"""One writer per output folder: an exclusive OS-level lock on ``<output_dir>/.reconstruct.lock``.

The lock is `fcntl.flock` on an open file, so the OS releases it when the process exits or is
killed (kill -9 included): there is no stale lock to clean up. The lock file is left in place and
holds the pid and command line of the current holder, only to say who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputLockedError
from .storage import check_output_dir, storage_error

logger = logging.getLogger(__name__)

LOCK_NAME = ".reconstruct.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid")
    if pid is None:
        return "another process"
    cmd = info.get("cmdline")
    return f"process {pid}" + (f" ({cmd})" if cmd else "")


@contextmanager
def output_lock(output_dir: Path) -> Iterator[Path]:
    """Hold the exclusive lock of `output_dir` (created if needed) for the `with` block.

    Raises `OutputLockedError` at once, naming the folder and the holder's pid, if another
    process (or another `output_lock` in this process) holds it; the storage errors of
    `check_output_dir` if the folder cannot be used. Yields the lock file's path.
    """
    output_dir = check_output_dir(Path(output_dir))
    path = output_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise storage_error(e, path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise storage_error(e, path) from None
            raise OutputLockedError(
                f"output folder {output_dir} is in use by {_holder(path)}. Wait for it to finish, "
                "stop it, or choose another output folder with -o."
            ) from None
        info = {"pid": os.getpid(), "cmdline": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except OSError as e:  # the lock is held; only the holder's note could not be written
            logger.debug("Could not write the holder of %s: %s", path, e)
        logger.debug("Locked %s", output_dir)
        yield path
    finally:
        os.close(fd)  # releases the flock
