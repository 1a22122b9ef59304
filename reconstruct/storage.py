"""The on-disk contract: the only module that reads or writes HDF5 files and pair lists.

See docs/storage.md for the layout. In short:

* ``features.h5``  ``/<key(name)>/keypoints`` float32 (N, 2), COLMAP pixel convention (the
  top-left corner of the image is (0, 0), the first pixel centre is (0.5, 0.5)), at the resolution
  of the EXIF-oriented original; ``descriptors`` (N, D) float32; ``scores`` (N,) float32;
  attribute ``image_size`` = (width, height).
* ``matches.h5``   ``/<key(name0)>/<key(name1)>/matches`` uint32 (K, 2) indices into the keypoints
  of name0 and name1, ``scores`` (K,) float32. Stored once per unordered pair, name0 < name1.
* ``global.h5``    ``/<key(name)>/descriptor`` float32 (D,), L2-normalised.
* every HDF5 root carries ``schema``, ``schema_version``, ``config`` (JSON) and ``config_hash``;
  ``matches.h5`` also ``features_hash``.

Keys are the image names (relative POSIX paths) percent-encoded with no safe characters except
``-_.~``, so ``a/b.jpg`` -> ``a%2Fb.jpg`` and ``a-b.jpg`` stay distinct and decode back exactly.

Writes are atomic. A stage writes each finished item as its own small file in ``<file>.parts/``
(temporary name, then rename), and at the end folds the parts and any previous file into a new
HDF5 file written under a temporary name and renamed over the old one. A killed run leaves the
parts; the next run with the same config hash reuses them, so it loses at most the item in flight
and ends with the same file. A different config hash is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h5py
import numpy as np

from .errors import (
    DiskFullError,
    OutputNotADirectoryError,
    OutputPermissionError,
    StaleOutputError,
    StorageError,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FEATURES_SCHEMA = "reconstruct.features"
MATCHES_SCHEMA = "reconstruct.matches"
GLOBAL_SCHEMA = "reconstruct.global"
PAIRS_SCHEMA = "reconstruct.pairs"


# ----------------------------------------------------------------------------- keys


def name_to_key(name: str) -> str:
    """Reversible, collision-free HDF5 key of an image name."""
    if not name:
        raise StorageError("empty image name cannot be stored")
    return quote(name, safe="-_.~")


def key_to_name(key: str) -> str:
    """Inverse of :func:`name_to_key`."""
    return unquote(key)


def canonical_pair(name0: str, name1: str) -> tuple[str, str, bool]:
    """(a, b, swapped) with a < b; `swapped` says whether the inputs were in the other order."""
    if name0 == name1:
        raise StorageError(f"self-pair {name0!r} is not a valid image pair")
    return (name0, name1, False) if name0 < name1 else (name1, name0, True)


# ----------------------------------------------------------------------------- atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: Path) -> None:
    """Give a file or folder made by `tempfile.mkstemp`/`mkdtemp` (mode 0600/0700) the usual
    permissions (0666 or 0777, less the umask)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_A_DIR = {errno.ENOTDIR, errno.EEXIST}


def storage_error(e: OSError, path: Path, *, need_bytes: int | None = None) -> StorageError:
    """The typed error (what, where, how to fix) for an `OSError` met while writing `path`.

    `need_bytes` (an estimate of what the write needed) makes the disk-full message say how much
    to free. Errors of other kinds become a plain `StorageError` that still names the path.
    """
    path = Path(path)
    if e.errno in _DISK_FULL:
        need = f"free at least {max(1, -(-need_bytes // 2**20))} MB" if need_bytes else "free space"
        return DiskFullError(
            f"no space left on the device of {path.parent} while writing {path.name} "
            f"({e.strerror})."
            f" Finished items are kept: {need} (or choose another -o) and re-run the same command"
            " to resume."
        )
    if e.errno in _NO_PERMISSION:
        return OutputPermissionError(
            f"cannot write {path} ({e.strerror}). Make {path.parent} writable, or choose another"
            " output folder with -o."
        )
    if e.errno in _NOT_A_DIR:
        return OutputNotADirectoryError(
            f"cannot write {path}: {e.filename or path.parent} is a file, not a folder "
            f"({e.strerror}). Choose another output folder with -o, or move the file away."
        )
    return StorageError(f"cannot write {path} ({e}); check the output folder or choose another -o.")


def check_output_dir(output_dir: Path) -> Path:
    """Create `output_dir` if needed and check that it is a writable folder, before any work.

    Raises `OutputNotADirectoryError` if it (or a parent) is a file, `OutputPermissionError` if it
    cannot be written, `DiskFullError` if its filesystem is full.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputNotADirectoryError(
            f"output path {output_dir} is a file, not a folder. Choose another output folder with"
            " -o, or move the file away."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise storage_error(e, output_dir / ".write-check") from None
    return output_dir


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old or the whole new file.

    An `OSError` becomes a typed `StorageError` (see :func:`storage_error`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(e, path, need_bytes=len(data)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        make_public(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(e, path, need_bytes=len(data)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_fingerprint(path: Path) -> str:
    """Identity of an image file's content: its size and SHA-256 of its first and last 64 KiB.

    Stored per image in ``features.h5`` so a resumed run re-extracts an image replaced under the
    same name. Content only, no mtime: a folder copied without its timestamps (``cp``, a git
    checkout, an upload) still resumes. A missing or unreadable file is ``"missing"``.
    """
    try:
        size = os.stat(path).st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(65536))
            if size > 65536:
                f.seek(max(65536, size - 65536))
                digest.update(f.read(65536))
    except OSError:
        return "missing"
    return f"{size}-{digest.hexdigest()[:16]}"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Features:
    """Local features of one image (COLMAP pixel convention, original resolution)."""

    keypoints: np.ndarray  # (N, 2) float32
    descriptors: np.ndarray  # (N, D) float32
    scores: np.ndarray  # (N,) float32
    image_size: tuple[int, int]  # (width, height)

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            raise StorageError(f"keypoints must be (N, 2), got {self.keypoints.shape}")
        if len(self.descriptors) != n or len(self.scores) != n:
            raise StorageError(
                f"keypoints, descriptors and scores disagree: {n}, "
                f"{len(self.descriptors)}, {len(self.scores)}"
            )


@dataclass(frozen=True)
class Header:
    """What the root of every output file carries."""

    schema: str
    config: dict[str, Any]
    config_hash: str
    extra: dict[str, str] | None = None  # e.g. {"features_hash": ...}


def _setting_diffs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every (nested) setting that differs between two config dicts."""

    def plain(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _setting_diffs(a, b, f"{prefix}{key}.")
        elif plain(a) != plain(b):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _write_header(f: h5py.File, header: Header) -> None:
    f.attrs["schema"] = header.schema
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["config"] = json.dumps(header.config, sort_keys=True, default=str)
    f.attrs["config_hash"] = header.config_hash
    for k, v in (header.extra or {}).items():
        f.attrs[k] = v


def _attr_str(f: h5py.File, key: str) -> str | None:
    v = f.attrs.get(key)
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _check_header(f: h5py.File, path: Path, schema: str) -> None:
    got = _attr_str(f, "schema")
    if got != schema:
        raise StorageError(
            f"{path} is not a {schema} file (schema={got!r}); "
            "was it written by another tool? Choose another output folder or use --overwrite."
        )
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, this reconstruct writes {SCHEMA_VERSION}; "
            "re-run with --overwrite to rebuild it."
        )


def _open_read(path: Path, schema: str) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path} does not exist; run the stage that writes it first.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StorageError(
            f"{path} is not a readable HDF5 file ({e}); delete it or re-run with --overwrite."
        ) from None
    try:
        _check_header(f, path, schema)
    except BaseException:
        f.close()
        raise
    return f


def read_header(path: Path, schema: str) -> Header:
    """Schema, config and hashes stored at the root of `path`."""
    with _open_read(path, schema) as f:
        extra = {
            k: _attr_str(f, k)
            for k in f.attrs
            if k not in ("schema", "schema_version", "config", "config_hash")
        }
        return Header(
            schema=schema,
            config=json.loads(_attr_str(f, "config") or "{}"),
            config_hash=_attr_str(f, "config_hash") or "",
            extra=extra,
        )


# ----------------------------------------------------------------------------- writer


class ResultWriter:
    """Resumable, atomic writer of one stage's HDF5 file.

    Items are identified by a tuple of image names (one for features, two for matches) and hold
    a dict of arrays plus a dict of small attributes. Use as a context manager::

        with ResultWriter(path, header, overwrite=False) as w:
            for name in names:
                if (name,) in w.done:
                    continue
                w.add((name,), {"keypoints": ...}, {"image_size": (w, h)})

    On a clean exit (or an exception, to keep what was finished) the parts are folded into
    `path` atomically.
    """

    def __init__(self, path: Path, header: Header, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.header = header
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self._pending: list[Path] = []
        self._done: set[tuple[str, ...]] = set()
        self._attrs: dict[tuple[str, ...], dict[str, Any]] = {}
        self._counter = 0
        self._prepare(overwrite)

    @property
    def done(self) -> frozenset[tuple[str, ...]]:
        """Items already stored (in the final file or in parts left by an interrupted run)."""
        return frozenset(self._done)

    def attrs(self, names: tuple[str, ...]) -> dict[str, Any] | None:
        """Attributes of a stored item (None if not stored), e.g. to check how it was made."""
        return self._attrs.get(tuple(names))

    def _expected(self) -> dict[str, str]:
        return {
            "schema": self.header.schema,
            "schema_version": str(SCHEMA_VERSION),
            "config_hash": self.header.config_hash,
            **{k: str(v) for k, v in (self.header.extra or {}).items()},
        }

    def _refuse(
        self, what: Path, found: dict[str, str], found_config: dict[str, Any] | None = None
    ) -> None:
        diffs = [
            f"{k}: on disk {found.get(k)!r}, now {v!r}"
            for k, v in self._expected().items()
            if found.get(k) != v
        ]
        if found_config is not None:
            settings = _setting_diffs(found_config, self.header.config)
            if settings:
                diffs = ["changed settings: " + ", ".join(settings)] + diffs
        raise StaleOutputError(
            f"{what} was written with a different configuration ({'; '.join(diffs)}). "
            "Re-run with --overwrite to replace it, or choose another output folder."
        )

    def _prepare(self, overwrite: bool) -> None:
        if overwrite:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    found = {k: _attr_str(f, k) or "" for k in self._expected()}
                    if found != self._expected():
                        try:
                            found_config = json.loads(_attr_str(f, "config") or "null")
                        except ValueError:
                            found_config = None
                        if not isinstance(found_config, dict):
                            found_config = None
                        self._refuse(self.path, found, found_config)
                    for names in _iter_item_names(f, self._depth):
                        self._done.add(names)
                        grp = f["/".join(name_to_key(n) for n in names)]
                        self._attrs[names] = {k: _plain(v) for k, v in grp.attrs.items()}
            except OSError as e:
                raise StorageError(
                    f"{self.path} is not a readable HDF5 file ({e}); "
                    "re-run with --overwrite to rebuild it."
                ) from None
        meta_path = self.parts_dir / "meta.json"
        if self.parts_dir.exists():
            try:
                found = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                found = {}
            if found != self._expected():
                if not found and not any(self.parts_dir.glob("*.npz")):
                    found = self._expected()  # empty leftover folder: harmless
                else:
                    self._refuse(self.parts_dir, found)
            for part in sorted(self.parts_dir.glob("*.npz")):
                try:
                    names, _, part_attrs = _read_part(part)
                except (OSError, ValueError, KeyError) as e:
                    logger.warning("Ignoring unreadable partial result %s (%s)", part, e)
                    part.unlink(missing_ok=True)
                    continue
                self._pending.append(part)
                self._done.add(names)
                self._attrs[names] = part_attrs
            if self._pending:
                logger.info(
                    "Resuming %s: %d finished items from an interrupted run",
                    self.path.name,
                    len(self._pending),
                )
            self._counter = len(list(self.parts_dir.glob("*.npz")))
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, self.parts_dir) from None
        atomic_write_json(meta_path, self._expected())

    @property
    def _depth(self) -> int:
        return 2 if self.header.schema == MATCHES_SCHEMA else 1

    def add(
        self,
        names: tuple[str, ...],
        arrays: dict[str, np.ndarray],
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """Store one finished item atomically (as a part file)."""
        if len(names) != self._depth:
            raise StorageError(f"{self.path.name} items are keyed by {self._depth} names")
        payload = {f"a_{k}": np.asarray(v) for k, v in arrays.items()}
        payload["names"] = np.array(json.dumps(list(names)))
        payload["attrs"] = np.array(json.dumps(attrs or {}, default=_json_default))
        part = self.parts_dir / f"{self._counter:08d}.npz"
        while part.exists():
            self._counter += 1
            part = self.parts_dir / f"{self._counter:08d}.npz"
        self._counter += 1
        buf = io.BytesIO()
        np.savez(buf, **payload)
        atomic_write_bytes(part, buf.getvalue())
        self._pending.append(part)
        self._done.add(tuple(names))
        self._attrs[tuple(names)] = json.loads(str(payload["attrs"]))

    def finalize(self) -> Path:
        """Fold the parts (and the previous file) into `path`, atomically."""
        if not self._pending and self.path.exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return self.path
        need = sum(p.stat().st_size for p in self._pending if p.exists())
        if self.path.exists():
            need += self.path.stat().st_size
        try:
            fd, tmp_name = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        except OSError as e:
            raise storage_error(e, self.path, need_bytes=need) from None
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
                mode = "a"
            else:
                mode = "w"
            with h5py.File(tmp, mode) as f:
                _write_header(f, self.header)
                for part in self._pending:
                    names, arrays, attrs = _read_part(part)
                    key = "/".join(name_to_key(n) for n in names)
                    if key in f:
                        del f[key]
                    grp = f.create_group(key)
                    for k, v in arrays.items():
                        grp.create_dataset(k, data=v)
                    for k, v in attrs.items():
                        grp.attrs[k] = v
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            make_public(tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            # h5py reports a full disk as a generic OSError; the parts stay, so a re-run resumes.
            tmp.unlink(missing_ok=True)
            if e.errno is None and _free_bytes(self.path.parent) < need:
                e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise storage_error(e, self.path, need_bytes=need) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._pending.clear()
        return self.path

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        # On an exception (KeyboardInterrupt included) the parts stay on disk: the next run
        # with the same configuration resumes from them.


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _read_part(part: Path) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, Any]]:
    with np.load(part, allow_pickle=False) as z:
        names = tuple(json.loads(str(z["names"])))
        attrs = json.loads(str(z["attrs"]))
        arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
    return names, arrays, attrs


def _iter_item_names(f: h5py.File, depth: int) -> Iterator[tuple[str, ...]]:
    for k0, g0 in f.items():
        if depth == 1:
            yield (key_to_name(k0),)
        else:
            for k1 in g0:
                yield (key_to_name(k0), key_to_name(k1))


# ----------------------------------------------------------------------------- readers


class FeaturesReader:
    """Read access to ``features.h5``; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = _open_read(self.path, FEATURES_SCHEMA)
        self.config_hash = _attr_str(self._f, "config_hash") or ""

    def names(self) -> list[str]:
        """Images with features (unreadable images are excluded: see :meth:`failed`)."""
        return sorted(
            n
            for (n,) in _iter_item_names(self._f, 1)
            if "error" not in self._f[name_to_key(n)].attrs
        )

    def failed(self) -> dict[str, str]:
        """Images the extraction could not read, with the reason."""
        out = {}
        for (n,) in _iter_item_names(self._f, 1):
            err = self._f[name_to_key(n)].attrs.get("error")
            if err is not None:
                out[n] = _plain(err)
        return dict(sorted(out.items()))

    def __contains__(self, name: str) -> bool:
        key = name_to_key(name)
        return key in self._f and "error" not in self._f[key].attrs

    def read(self, name: str) -> Features:
        key = name_to_key(name)
        if key not in self._f:
            raise StorageError(f"no features for image {name!r} in {self.path}")
        g = self._f[key]
        return Features(
            keypoints=g["keypoints"][()].astype(np.float32).reshape(-1, 2),
            descriptors=g["descriptors"][()].astype(np.float32),
            scores=g["scores"][()].astype(np.float32),
            image_size=tuple(int(x) for x in g.attrs["image_size"]),
        )

    def num_keypoints(self, name: str) -> int:
        return int(self._f[name_to_key(name)]["keypoints"].shape[0])

    def read_item(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The stored arrays (dtypes as stored) and attributes of `name`, as
        `ResultWriter.add` takes them: copying an item into another file keeps it exact."""
        g = self._f[name_to_key(name)]
        return {k: g[k][()] for k in g}, self.attrs(name)

    def attrs(self, name: str) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self._f[name_to_key(name)].attrs.items()}

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> FeaturesReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MatchesReader:
    """Read access to ``matches.h5``; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = _open_read(self.path, MATCHES_SCHEMA)
        self.config_hash = _attr_str(self._f, "config_hash") or ""
        self.features_hash = _attr_str(self._f, "features_hash") or ""

    def pairs(self) -> list[tuple[str, str]]:
        return sorted(_iter_item_names(self._f, 2))  # type: ignore[arg-type]

    def __contains__(self, pair: tuple[str, str]) -> bool:
        a, b, _ = canonical_pair(*pair)
        return f"{name_to_key(a)}/{name_to_key(b)}" in self._f

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of matches of every stored pair (from dataset shapes; no arrays are read)."""
        return {
            (a, b): int(self._f[f"{name_to_key(a)}/{name_to_key(b)}"]["matches"].shape[0])
            for a, b in self.pairs()
        }

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        """uint32 (K, 2) indices (column 0 indexes name0) and float32 (K,) scores."""
        a, b, swapped = canonical_pair(name0, name1)
        key = f"{name_to_key(a)}/{name_to_key(b)}"
        if key not in self._f:
            raise StorageError(f"no matches for pair ({name0!r}, {name1!r}) in {self.path}")
        g = self._f[key]
        matches = g["matches"][()].astype(np.uint32).reshape(-1, 2)
        scores = g["scores"][()].astype(np.float32)
        if swapped:
            matches = matches[:, ::-1].copy()
        return matches, scores

    def attrs(self, name0: str, name1: str) -> dict[str, Any]:
        a, b, _ = canonical_pair(name0, name1)
        return {
            k: _plain(v) for k, v in self._f[f"{name_to_key(a)}/{name_to_key(b)}"].attrs.items()
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MatchesReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_matches(
    matches_paths: Sequence[Path], names: Container[str]
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name0, name1, matches, scores) of every pair of two `names` in the files
    `matches_paths`, each pair from the first file that holds it (a rescue's matches of images
    extracted again come before the run's own)."""
    seen: set[tuple[str, str]] = set()
    for path in matches_paths:
        with MatchesReader(path) as reader:
            for a, b in reader.pairs():
                if (a, b) in seen or a not in names or b not in names:
                    continue
                seen.add((a, b))
                yield (a, b, *reader.read(a, b))


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_global_descriptors(path: Path) -> tuple[list[str], np.ndarray]:
    """Names (sorted) and an (N, D) float32 matrix from ``global.h5``."""
    with _open_read(Path(path), GLOBAL_SCHEMA) as f:
        names = sorted(n for (n,) in _iter_item_names(f, 1))
        if not names:
            return [], np.zeros((0, 0), np.float32)
        desc = np.stack([f[name_to_key(n)]["descriptor"][()] for n in names]).astype(np.float32)
    return names, desc


class GlobalDescriptorsReader:
    """Block reads from a global-descriptors file, so that selection over many images never holds
    the (N, D) matrix; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = _open_read(self.path, GLOBAL_SCHEMA)
        self.config_hash = _attr_str(self._f, "config_hash") or ""

    def names(self) -> list[str]:
        """Images with a descriptor, sorted."""
        return sorted(n for (n,) in _iter_item_names(self._f, 1))

    def read(self, names: Iterable[str]) -> np.ndarray:
        """(len(names), D) float32 descriptors of `names`, in that order."""
        rows = [self._f[name_to_key(n)]["descriptor"][()] for n in names]
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> GlobalDescriptorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- pairs files


def write_pairs(
    path: Path,
    pairs: Iterable[tuple[str, str]],
    *,
    scores: Iterable[float] | None = None,
    header: dict[str, Any] | None = None,
) -> Path:
    """Write a pairs file atomically: one plain ``name0 name1`` line per pair, the format hloc
    and COLMAP read. `header` and `scores` go to the sidecar ``pairs.json`` beside it (see
    :func:`pairs_sidecar`), which records a hash of the pairs file it belongs to.

    Names are percent-encoded only where needed (space, tab, newline, ``%``, ``#``), so ordinary
    names stay readable and any name round-trips.
    """
    path = Path(path)
    text = "".join(f"{_pairs_escape(a)} {_pairs_escape(b)}\n" for a, b in pairs)
    score_list = [float(s) for s in scores] if scores is not None else None
    sidecar = pairs_sidecar(path)
    if header or score_list is not None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        record = {"pairs_sha256": digest, "header": header or {}, "scores": score_list}
        atomic_write_text(sidecar, json.dumps(record, default=str) + "\n")
    else:
        sidecar.unlink(missing_ok=True)
    atomic_write_text(path, text)
    return path


def pairs_sidecar(path: Path) -> Path:
    """Where the metadata and scores of a pairs file live: ``pairs.txt`` -> ``pairs.json``."""
    return Path(path).with_suffix(".json")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of `path` if it belongs to the pairs file as it is now, else None."""
    sidecar = pairs_sidecar(path)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except ValueError:
        return None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if not isinstance(record, dict) or record.get("pairs_sha256") != digest:
        return None
    return record


def _pairs_escape(name: str) -> str:
    return "".join(quote(c, safe="") if c in " \t\r\n%#" else c for c in name)


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Read a pairs file (ours or hloc's plain ``name0 name1`` format)."""
    return [p for p, _ in read_pairs_with_scores(path)]


def read_pairs_with_scores(path: Path) -> list[tuple[tuple[str, str], float | None]]:
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"pairs file {path} does not exist")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise StorageError(
                f"{path}:{lineno}: expected 'name0 name1 [score]', got {line!r} "
                "(encode spaces in names as %20)"
            )
        score = None
        if len(parts) == 3:
            try:
                score = float(parts[2])
            except ValueError:
                raise StorageError(f"{path}:{lineno}: score {parts[2]!r} is not a number") from None
        a, b = unquote(parts[0]), unquote(parts[1])
        if a == b:
            raise StorageError(f"{path}:{lineno}: self-pair {a!r}")
        out.append(((a, b), score))
    record = _read_sidecar(path)
    scores = record.get("scores") if record is not None else None
    if isinstance(scores, list) and len(scores) == len(out):
        out = [(p, float(s)) for (p, _), s in zip(out, scores, strict=True)]
    return out


def read_pairs_header(path: Path) -> dict[str, Any]:
    """The metadata of a pairs file we wrote (its sidecar; ``# key: json`` lines of old files)."""
    record = _read_sidecar(path)
    if record is not None:
        return dict(record.get("header") or {})
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out
