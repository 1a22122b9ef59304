"""Faults users meet: a second writer, a full disk, an unwritable folder, an output path that is
a file, images that change between runs. Each case checks the typed error (message and exit code)
and that a re-run after the fault equals an uninterrupted run."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from reconstruct import storage
from reconstruct.errors import (
    DiskFullError,
    OutputLockedError,
    OutputNotADirectoryError,
    OutputPermissionError,
    StorageError,
)
from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.lock import LOCK_NAME, output_lock
from reconstruct.matching import match_pairs
from reconstruct.storage import FeaturesReader, MatchesReader, check_output_dir, write_pairs

CFG = KeypointsConfig(max_keypoints=256, resize=320)


@pytest.fixture(scope="module")
def images(synthetic_scene, tmp_path_factory) -> Path:
    """Four synthetic views in their own folder."""
    folder = tmp_path_factory.mktemp("images")
    for name in sorted(p.name for p in synthetic_scene.image_dir.glob("*.jpg"))[:4]:
        shutil.copy2(synthetic_scene.image_dir / name, folder / name)
    return folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.jpg"))


def _pairs(folder: Path, out: Path) -> Path:
    names = _names(folder)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return write_pairs(out / "pairs.txt", pairs)


def _features(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with FeaturesReader(path) as r:
        return {n: (r.read(n).keypoints, r.read(n).descriptors) for n in r.names()}


def _matches(path: Path) -> dict[tuple[str, str], np.ndarray]:
    with MatchesReader(path) as r:
        return {p: r.read(*p)[0] for p in r.pairs()}


def _assert_same_features(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for n in want:
        np.testing.assert_allclose(got[n][0], want[n][0], atol=1e-4, err_msg=n)
        np.testing.assert_allclose(got[n][1], want[n][1], atol=1e-4, err_msg=n)


@pytest.fixture(scope="module")
def clean_run(images, tmp_path_factory) -> Path:
    """Extraction and matching of `images` without faults: the reference."""
    out = tmp_path_factory.mktemp("clean")
    feats = extract_keypoints(images, out, CFG, device="cpu")
    match_pairs(_pairs(images, out), feats, out, device="cpu")
    return out


def _fail_after(monkeypatch, n_ok: int, err: int, suffix: str) -> list[int]:
    """Make `os.replace` onto a `suffix` file fail with `err` after `n_ok` successes."""
    real, calls = os.replace, [0]

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            calls[0] += 1
            if calls[0] > n_ok:
                raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(storage.os, "replace", replace)
    return calls


# ----------------------------------------------------------------------------- one writer


def test_second_lock_holder_in_process_is_refused(tmp_path):
    with output_lock(tmp_path / "out"):
        with pytest.raises(OutputLockedError) as e, output_lock(tmp_path / "out"):
            pass
        assert str(tmp_path / "out") in str(e.value)
        assert f"process {os.getpid()}" in str(e.value)
        assert e.value.exit_code == 8
    with output_lock(tmp_path / "out"):  # released on exit
        pass


def test_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import sys, time
        from reconstruct.lock import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError) as e, output_lock(out):
            pass
        assert f"process {proc.pid}" in str(e.value) and str(out) in str(e.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with output_lock(out) as lock_path:  # the OS released it: no stale lock
        assert lock_path == out / LOCK_NAME
        assert str(os.getpid()) in lock_path.read_text()


# ----------------------------------------------------------------------------- disk full


def test_disk_full_during_extraction_then_resume(images, clean_run, tmp_path, monkeypatch):
    calls = _fail_after(monkeypatch, 2, errno.ENOSPC, ".npz")
    with pytest.raises(DiskFullError) as e:
        extract_keypoints(images, tmp_path, CFG, device="cpu")
    assert calls[0] == 3
    assert e.value.exit_code == 9
    assert "no space left" in str(e.value) and "MB" in str(e.value)
    assert str(tmp_path) in str(e.value)
    parts = list((tmp_path / "features.h5.parts").glob("*.npz"))
    assert len(parts) == 2  # finished items are kept
    monkeypatch.undo()
    path = extract_keypoints(images, tmp_path, CFG, device="cpu")
    _assert_same_features(_features(path), _features(clean_run / "features.h5"))


def test_disk_full_when_folding_features_then_resume(images, clean_run, tmp_path, monkeypatch):
    _fail_after(monkeypatch, 0, errno.ENOSPC, "features.h5")
    with pytest.raises(DiskFullError):
        extract_keypoints(images, tmp_path, CFG, device="cpu")
    assert not (tmp_path / "features.h5").exists()
    assert not list(tmp_path.glob(".features.h5.*.tmp"))  # no temporary left behind
    monkeypatch.undo()
    path = extract_keypoints(images, tmp_path, CFG, device="cpu")
    _assert_same_features(_features(path), _features(clean_run / "features.h5"))


def test_disk_full_during_matching_then_resume(images, clean_run, tmp_path, monkeypatch):
    feats = tmp_path / "features.h5"
    shutil.copy2(clean_run / "features.h5", feats)
    pairs = _pairs(images, tmp_path)
    _fail_after(monkeypatch, 3, errno.ENOSPC, ".npz")
    with pytest.raises(DiskFullError) as e:
        match_pairs(pairs, feats, tmp_path, device="cpu")
    assert e.value.exit_code == 9
    assert len(list((tmp_path / "matches.h5.parts").glob("*.npz"))) == 3
    monkeypatch.undo()
    path = match_pairs(pairs, feats, tmp_path, device="cpu")
    want, got = _matches(clean_run / "matches.h5"), _matches(path)
    assert sorted(got) == sorted(want)
    for p in want:
        np.testing.assert_array_equal(got[p], want[p])


def _mount_tmpfs(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")


def test_real_full_tmpfs_during_extraction_then_resume(images, clean_run, tmp_path):
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to make a small filesystem")
    out = tmp_path / "small"
    _mount_tmpfs(out, "size=300k")
    try:
        with pytest.raises(DiskFullError) as e:
            extract_keypoints(images, out, CFG, device="cpu")
        assert "free at least" in str(e.value)
        subprocess.run(["mount", "-o", "remount,size=20m", str(out)], check=True)
        path = extract_keypoints(images, out, CFG, device="cpu")
        _assert_same_features(_features(path), _features(clean_run / "features.h5"))
    finally:
        subprocess.run(["umount", str(out)], check=False)


# ----------------------------------------------------------------------------- unwritable


def test_read_only_filesystem_is_a_typed_error(tmp_path):
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) for a read-only filesystem (chmod does not stop root)")
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        for call in (
            lambda: check_output_dir(ro),
            lambda: check_output_dir(ro / "sub"),
            lambda: output_lock(ro).__enter__(),
        ):
            with pytest.raises(OutputPermissionError) as e:
                call()
            assert e.value.exit_code == 10 and "-o" in str(e.value) and str(ro) in str(e.value)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_permission_denied_injected_at_storage_layer(images, tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(storage.tempfile, "mkstemp", denied)
    with pytest.raises(OutputPermissionError) as e:
        check_output_dir(tmp_path / "out")
    assert e.value.exit_code == 10
    with pytest.raises(OutputPermissionError):
        extract_keypoints(images, tmp_path / "out", CFG, device="cpu")


def test_output_path_that_is_a_file(images, tmp_path):
    f = tmp_path / "out"
    f.write_text("not a folder")
    for call in (
        lambda: check_output_dir(f),
        lambda: check_output_dir(f / "sub"),
        lambda: output_lock(f).__enter__(),
        lambda: extract_keypoints(images, f, CFG, device="cpu"),
    ):
        with pytest.raises(OutputNotADirectoryError) as e:
            call()
        assert e.value.exit_code == 11 and str(f) in str(e.value) and "-o" in str(e.value)
    assert f.read_text() == "not a folder"


def test_distinct_exit_codes():
    codes = [
        c.exit_code
        for c in (
            StorageError,
            OutputLockedError,
            DiskFullError,
            OutputPermissionError,
            OutputNotADirectoryError,
        )
    ]
    assert len(set(codes)) == len(codes)


# ----------------------------------------------------------------------------- changed images


def test_images_replaced_added_removed_between_runs(images, tmp_path, caplog):
    scene = tmp_path / "scene"
    scene.mkdir()
    first = _names(images)
    for n in first[:3]:
        shutil.copy2(images / n, scene / n)
    out = tmp_path / "out"
    feats = extract_keypoints(scene, out, CFG, device="cpu")
    match_pairs(_pairs(scene, out), feats, out, device="cpu")
    before = _features(feats)

    # Replace first[0] with the content of first[3] (same name, same size would not matter),
    # add first[3] under a new name, remove first[2].
    time.sleep(0.01)
    shutil.copyfile(images / first[3], scene / first[0])
    shutil.copy2(images / first[3], scene / "added.jpg")
    (scene / first[2]).unlink()

    with caplog.at_level(logging.INFO, logger="reconstruct.keypoints"):
        extract_keypoints(scene, out, CFG, device="cpu")
    log = caplog.text
    assert "1 changed images" in log and first[0] in log
    assert "1 new images" in log and "added.jpg" in log
    assert "1 removed images" in log and first[2] in log
    match_pairs(_pairs(scene, out), feats, out, device="cpu")

    ref = tmp_path / "ref"
    ref_feats = extract_keypoints(scene, ref, CFG, device="cpu")
    match_pairs(_pairs(scene, ref), ref_feats, ref, device="cpu")
    got, want = _features(feats), _features(ref_feats)
    assert not np.allclose(before[first[0]][0], got[first[0]][0])  # not the old features
    current = {k: v for k, v in got.items() if k in want}
    _assert_same_features(current, want)
    got_m, want_m = _matches(out / "matches.h5"), _matches(ref / "matches.h5")
    for p in want_m:  # every pair of the current images, re-matched where an image changed
        np.testing.assert_array_equal(got_m[p], want_m[p], err_msg=str(p))
