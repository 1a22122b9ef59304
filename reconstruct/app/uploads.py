"""Upload safety: sanitised names, a per-session folder, size limits and an image-type check."""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..config import option
from ..errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Leading bytes of each accepted format: the name's suffix alone is not trusted.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_SESSION_RE = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True, kw_only=True)
class UploadLimits:
    """Size limits of one session's uploads."""

    max_file_bytes: int = option(50 * 2**20, "largest accepted single upload in bytes")
    max_total_bytes: int = option(2 * 2**30, "largest accepted total of one session in bytes")
    max_files: int = option(2000, "most files one session may upload")


def limits_from_env(env: dict[str, str]) -> UploadLimits:
    """Limits from RECONSTRUCT_APP_MAX_FILE_MB, _MAX_TOTAL_MB and _MAX_FILES (else defaults)."""
    d = UploadLimits()
    try:
        mb = 2**20
        return UploadLimits(
            max_file_bytes=int(
                float(env.get("RECONSTRUCT_APP_MAX_FILE_MB", d.max_file_bytes / mb)) * mb
            ),
            max_total_bytes=int(
                float(env.get("RECONSTRUCT_APP_MAX_TOTAL_MB", d.max_total_bytes / mb)) * mb
            ),
            max_files=int(env.get("RECONSTRUCT_APP_MAX_FILES", d.max_files)),
        )
    except ValueError as e:
        raise InputError(f"bad upload limit in the environment: {e}") from None


def sanitise_name(name: str) -> str:
    """A safe flat file name from an uploaded one: no folders, no traversal, no odd characters."""
    base = PureWindowsPath(PurePosixPath(str(name)).name).name  # drop any folder part, / or \
    base = unicodedata.normalize("NFKC", base).replace("\x00", "")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._ ")
    if not base:
        raise InputError(f"file name {name!r} has no usable characters; rename it")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    return (stem[:100] or "image") + (f".{suffix.lower()[:8]}" if suffix else "")


def new_session_id() -> str:
    """A random, unguessable session id (used as a folder name)."""
    return secrets.token_hex(16)


def session_dir(workdir: Path, session_id: str) -> Path:
    """``workdir/sessions/<id>``, created; refuses ids that are not ours (no traversal)."""
    if not _SESSION_RE.match(session_id):
        raise InputError(f"invalid session id {session_id!r}")
    path = Path(workdir).resolve() / "sessions" / session_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_image(name: str, head: bytes) -> bool:
    """True when the name has an image suffix and the bytes start like an image file."""
    if not name.lower().endswith(IMAGE_SUFFIXES):
        return False
    if head.startswith(b"RIFF"):
        return head[8:12] == b"WEBP"
    return any(head.startswith(m) for m in _MAGIC)


def save_uploads(
    files: list[tuple[str, bytes]], image_dir: Path, limits: UploadLimits = UploadLimits()
) -> tuple[list[str], dict[str, str]]:
    """Write accepted uploads into `image_dir`; returns (saved names, {rejected name: reason})."""
    image_dir.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []
    rejected: dict[str, str] = {}
    total = sum(p.stat().st_size for p in image_dir.iterdir() if p.is_file())
    count = sum(1 for p in image_dir.iterdir() if p.is_file())
    for name, data in files:
        try:
            safe = sanitise_name(name)
        except InputError as e:
            rejected[name] = str(e)
            continue
        if len(data) > limits.max_file_bytes:
            rejected[name] = f"{len(data)} bytes is over the {limits.max_file_bytes} byte limit"
        elif not is_image(safe, data[:16]):
            rejected[name] = "not an image (accepted: " + ", ".join(IMAGE_SUFFIXES) + ")"
        elif total + len(data) > limits.max_total_bytes:
            rejected[name] = f"session total would exceed {limits.max_total_bytes} bytes"
        elif count >= limits.max_files:
            rejected[name] = f"session already holds {limits.max_files} files"
        else:
            target = image_dir / safe
            if target.resolve().parent != image_dir.resolve():
                rejected[name] = "unsafe file name"
                continue
            tmp = target.with_name(f".{safe}.part")
            tmp.write_bytes(data)
            tmp.replace(target)
            total, count = total + len(data), count + 1
            saved.append(safe)
    return saved, rejected


def pick_folder(workdir: Path, relative: str) -> Path:
    """A folder under `workdir` chosen by the user; refuses anything outside it."""
    root = Path(workdir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_dir():
        raise InputError(f"{relative!r} is not a folder under the app's workdir {root}")
    return path


def pick_file(workdir: Path, relative: str) -> Path:
    """A file under `workdir` chosen by the user; refuses anything outside it."""
    root = Path(workdir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise InputError(f"{relative!r} is not a file under the app's workdir {root}")
    return path


def save_text_upload(data: bytes, target: Path, limits: UploadLimits = UploadLimits()) -> Path:
    """Write an uploaded text file (a ground-truth ``cameras.txt``) to `target` atomically.

    Refuses files over the per-file limit and anything that is not UTF-8 text; the content is
    parsed later by the library (`gt.read_cameras_txt`), never executed.
    """
    if len(data) > limits.max_file_bytes:
        raise InputError(
            f"the uploaded file has {len(data)} bytes, over the {limits.max_file_bytes} byte limit"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the uploaded file is not UTF-8 text: upload a cameras.txt") from None
    if "\x00" in text:
        raise InputError("the uploaded file is binary, not text: upload a cameras.txt")
    if target.is_file() and target.read_bytes() == data:
        return target  # the same file again (the page reruns often): keep its mtime, and caches
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
