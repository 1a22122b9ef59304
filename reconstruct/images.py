"""Finding and reading images: listing a scene folder, decoding with EXIF orientation,
normalising bit depth and channels, resizing, and prefetching in a background thread.

Image identity everywhere in the project is the path relative to the scene folder, POSIX style.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from .errors import ImageReadError, InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
MIN_IMAGE_SIDE = 32  # smaller images cannot hold a useful number of keypoints

T = TypeVar("T")
R = TypeVar("R")


def list_images(image_dir: Path) -> list[str]:
    """Sorted image names (relative POSIX paths) below `image_dir`, recursively.

    Files with other extensions and hidden files are skipped with one warning that names them.
    """
    image_dir = Path(image_dir)
    if not image_dir.exists():
        raise InputError(f"image folder {image_dir} does not exist")
    if not image_dir.is_dir():
        raise InputError(f"{image_dir} is not a folder; pass the folder that holds the images")
    names, skipped = [], []
    for p in sorted(image_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(image_dir).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            names.append(rel)
        else:
            skipped.append(rel)
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        logger.warning("Skipping %d non-image files in %s: %s", len(skipped), image_dir, shown)
    if not names:
        raise InputError(
            f"no images found in {image_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return names


def check_any_readable(image_dir: Path, names: list[str]) -> None:
    """Raise InputError unless at least one of `names` decodes; stops at the first that does,
    so a usable folder costs one decode. Run before any stage writes files."""
    reasons = []
    for name in names:
        try:
            read_image(Path(image_dir) / name, grayscale=True)
            return
        except ImageReadError as e:
            reasons.append(str(e))
    shown = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
    raise InputError(f"none of the {len(names)} images in {image_dir} can be read: {shown}")


def _jpeg_problem(data: bytes) -> str | None:
    # OpenCV decodes a truncated JPEG into a partly grey image with only a stderr warning, so
    # we check for the end-of-image marker ourselves (trailing bytes after it are allowed).
    if not data.startswith(b"\xff\xd8"):
        return "not a JPEG file despite its extension"
    if b"\xff\xd9" not in data[-4096:]:
        return "the JPEG file is truncated (no end-of-image marker)"
    return None


def _check_jpeg_complete(path: Path, data: bytes) -> None:
    problem = _jpeg_problem(data)
    if problem:
        raise ImageReadError(path, problem)


def read_image(path: Path, *, grayscale: bool = False) -> np.ndarray:
    """Decode an image as uint8 RGB (H, W, 3) or gray (H, W), EXIF orientation applied.

    16-bit images are scaled to 8 bits, gray is replicated to RGB, alpha is dropped.
    Raises ImageReadError for anything that cannot be decoded completely.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, str(e)) from None
    if not data:
        raise ImageReadError(path, "the file is empty")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        _check_jpeg_complete(path, data)
    buf = np.frombuffer(data, np.uint8)
    # IMREAD_COLOR / IMREAD_GRAYSCALE apply the EXIF orientation and convert 16-bit to 8-bit.
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imdecode(buf, flag)
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageReadError(path, f"too small ({w}x{h} px, need at least {MIN_IMAGE_SIDE} px)")
    if not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _downsized_size(w: int, h: int, long_side: int | None) -> tuple[int, int] | None:
    """(width, height) with the long side at `long_side`, or None when no downscale applies."""
    if not long_side or max(h, w) <= long_side:
        return None
    scale = long_side / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_long_side(image: np.ndarray, long_side: int | None) -> tuple[np.ndarray, float]:
    """Downscale so the long side is at most `long_side` (never upscale); returns the scale."""
    h, w = image.shape[:2]
    size = _downsized_size(w, h, long_side)
    if size is None:
        return image, 1.0
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return resized, long_side / max(h, w)


# Reduced JPEG decodes (libjpeg's DCT scaling: the output is ceil(side / factor)), largest first.
_REDUCED_GRAY = (
    (8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
    (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the frame header of a complete JPEG, in the file's stored frame
    (before EXIF orientation); None for anything else (the full decode then decides).

    Read by hand because OpenCV has no header-only size query and Pillow, which has one, is
    not a runtime dependency; the reduction factor must be known before decoding."""
    if _jpeg_problem(data):
        return None  # the full decode raises the error
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return (w, h) if w and h else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _read_reduced(path: Path, max_size: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A JPEG decoded gray at the largest DCT reduction that keeps its long side >= `max_size`,
    EXIF orientation applied as by `read_image`, with the (height, width) of the full decode in
    that frame; None when no reduction applies or the frame is ambiguous (full decode then)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None  # read_image raises the error
    size = _jpeg_size(data)
    if size is None:
        return None
    w, h = size
    if min(w, h) < MIN_IMAGE_SIDE:
        return None  # the full decode raises the error
    for factor, flag in _REDUCED_GRAY:
        if -(-max(w, h) // factor) < max_size:
            continue
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if gray is None:
            return None
        upright, turned = (-(-h // factor), -(-w // factor)), (-(-w // factor), -(-h // factor))
        if upright == turned or gray.shape not in (upright, turned):
            return None  # near-square (did EXIF swap the sides?) or an unexpected size
        return gray, ((h, w) if gray.shape == upright else (w, h))
    return None


def read_gray_downsized(path: Path, max_size: int) -> np.ndarray:
    """The image as gray uint8 with its long side downsized to `max_size` (never upscaled), in
    the frame of `read_image` (EXIF orientation applied).

    The size and frame are those of `read_image` then `resize_long_side` (INTER_AREA); a JPEG
    is decoded reduced first (libjpeg's DCT scaling, up to 64x fewer pixels; what the upright
    cue spends most of its time on with large photos). Anything else is decoded in full."""
    reduced = _read_reduced(path, max_size)
    if reduced is None:
        gray = read_image(path, grayscale=True)
        full = gray.shape[:2]
    else:
        gray, full = reduced
    size = _downsized_size(full[1], full[0], max_size)
    if size is not None:
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray


def prefetch(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int = 1, lookahead: int = 2
) -> Iterator[tuple[T, R | BaseException]]:
    """Yield (item, fn(item)) in order while the next items are computed in threads.

    Exceptions raised by `fn` are yielded as values so the caller decides what to skip.
    Image decoding (OpenCV releases the GIL) then overlaps with model inference; with several
    workers, so do inference calls (torch releases the GIL). `items` is consumed lazily, in
    the calling thread, at most `lookahead` + 1 items ahead of the one yielded (so it may read
    files that are not thread-safe, such as HDF5).
    """
    if workers <= 0:
        for it in items:
            try:
                yield it, fn(it)
            except Exception as e:  # handed to the caller
                yield it, e
        return

    def safe(it: T) -> R | BaseException:
        try:
            return fn(it)
        except Exception as e:  # handed to the caller
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque = deque()
        iterator = iter(items)
        done = object()
        for it in iterator:
            queue.append((it, pool.submit(safe, it)))
            if len(queue) > lookahead:
                break
        while queue:
            it, fut = queue.popleft()
            nxt = next(iterator, done)
            if nxt is not done:
                queue.append((nxt, pool.submit(safe, nxt)))
            yield it, fut.result()
