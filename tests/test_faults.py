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

from reconstruct import paths, storage
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


# ----------------------------------------------------------------------------- export

# Two different models: A is the export already on disk, B the one being exported. Synthetic
# (pycolmap.synthesize_dataset), so the export stage is tested alone and in seconds; B is big
# enough (20 images, 8,000 points: about 8 MB of .bin and .txt) that its export takes a while.
MODEL_A = {"frames": 6, "points": 500, "seed": 1}
MODEL_B = {"frames": 20, "points": 8000, "seed": 2}


def _synthetic_sparse(folder: Path, frames: int, points: int, seed: int) -> Path:
    import pycolmap

    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig = 1, 1
    options.num_frames_per_rig, options.num_points3D = frames, points
    pycolmap.set_random_seed(seed)
    rec = pycolmap.synthesize_dataset(options)
    (folder / "0").mkdir(parents=True)
    rec.write(str(folder / "0"))  # as mapping.write_models does
    return folder


@pytest.fixture(scope="module")
def export_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{"a": (sparse folder, reference export folder), "b": ...}: each reference is an
    uninterrupted export."""
    from reconstruct.export import export_model

    root = tmp_path_factory.mktemp("export_models")
    out = {}
    for key, spec in (("a", MODEL_A), ("b", MODEL_B)):
        sparse = _synthetic_sparse(root / f"sparse_{key}", **spec)
        ref = root / f"ref_{key}"
        ref.mkdir()
        export_model(sparse, ref)
        out[key] = (sparse, ref)
    return out


def _export_files(out: Path) -> dict[str, bytes]:
    files = {f"model/{p.name}": p.read_bytes() for p in sorted((out / "model").iterdir())}
    files["points.ply"] = (out / "points.ply").read_bytes()
    return files


def _which_export(out: Path, export_models) -> tuple[str, str]:
    """Which complete reference export `out/model` and `out/points.ply` are, byte for byte
    ("a" or "b" each); fails on anything else (missing, partial, mixed). Bytes are compared
    first, so pycolmap never reads a cut-short file."""
    got = _export_files(out)
    refs = {k: _export_files(ref) for k, (_, ref) in export_models.items()}
    model = {k: v for k, v in got.items() if k.startswith("model/")}
    which_model = [
        k
        for k, r in refs.items()
        if model == {n: b for n, b in r.items() if n in model}
        and set(model) == {n for n in r if n.startswith("model/")}
    ]
    which_ply = [k for k, r in refs.items() if got["points.ply"] == r["points.ply"]]
    assert len(which_model) == 1, f"model/ is neither complete export: {sorted(model)}"
    assert len(which_ply) == 1, "points.ply is neither complete export"
    return which_model[0], which_ply[0]


def _hidden_leftovers(out: Path) -> list[str]:
    """Entries of `out` an export may leave when killed; fails on any visible extra entry."""
    known = {paths.MODEL, paths.PLY, paths.SPARSE, LOCK_NAME}
    extra = sorted(p.name for p in out.iterdir() if p.name not in known)
    # `storage.check_output_dir`'s probe too: killed between creating and deleting it
    assert all(n.startswith((".model.", ".points.ply.", ".write-check.")) for n in extra), extra
    return extra


def _start_with(out: Path, export_models, key: str) -> None:
    """`out` holds the complete export `key` as its previous export."""
    ref = export_models[key][1]
    shutil.copytree(ref / paths.MODEL, out / paths.MODEL)
    shutil.copy2(ref / paths.PLY, out / paths.PLY)


def _point_sparse_at(out: Path, sparse: Path) -> None:
    link = out / paths.SPARSE
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(sparse, target_is_directory=True)


def _check_model_stats(out: Path, ref: Path) -> None:
    from reconstruct.export import model_statistics, read_poses

    assert model_statistics(out / paths.MODEL) == model_statistics(ref / paths.MODEL)
    got, want = read_poses(out / paths.MODEL), read_poses(ref / paths.MODEL)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name].rotation, want[name].rotation, atol=1e-12)
        np.testing.assert_allclose(got[name].translation, want[name].translation, atol=1e-12)


def test_real_full_tmpfs_at_export_keeps_the_previous_model(export_models, tmp_path, capsys):
    from reconstruct.cli import main

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to make a small filesystem")
    out = tmp_path / "small"
    _mount_tmpfs(out, "size=40m")
    try:
        _start_with(out, export_models, "a")
        shutil.copytree(export_models["b"][0], out / paths.SPARSE)
        used = shutil.disk_usage(out).used
        # Room for about a third of B's export: the .bin files fit, the .txt ones do not.
        subprocess.run(["mount", "-o", f"remount,size={used + 3_000_000}", str(out)], check=True)
        assert main(["export", str(out), "-q"]) == 9
        err = capsys.readouterr().err
        assert "no space left" in err and str(out) in err and "free at least" in err
        assert "-o" in err and "traceback" not in err.lower()
        assert _which_export(out, export_models) == ("a", "a")  # old export intact
        assert _hidden_leftovers(out) == []  # nothing half-written left behind
        subprocess.run(["mount", "-o", "remount,size=60m", str(out)], check=True)
        assert main(["export", str(out), "-q"]) == 0
        assert _which_export(out, export_models) == ("b", "b")
        _check_model_stats(out, export_models["b"][1])
    finally:
        subprocess.run(["umount", str(out)], check=False)


@pytest.mark.parametrize("fault", ["copy_raises", "silent_short_text"])
def test_disk_full_at_export_injected(export_models, tmp_path, monkeypatch, capsys, fault):
    """Without root: ENOSPC raised by a copy of the .bin files, and pycolmap's behaviour on a
    full disk (a short .txt file and no error, measured on a real tmpfs) with no free space."""
    import pycolmap

    from reconstruct import export
    from reconstruct.cli import main

    out = tmp_path / "out"
    out.mkdir()
    _start_with(out, export_models, "a")
    _point_sparse_at(out, export_models["b"][0])
    if fault == "copy_raises":
        real_copy = shutil.copyfile

        def copyfile(src, dst, *a, **k):
            if Path(src).name == "images.bin":
                Path(dst).write_bytes(Path(src).read_bytes()[:1000])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real_copy(src, dst, *a, **k)

        monkeypatch.setattr(export.shutil, "copyfile", copyfile)
    else:
        real_write = pycolmap.Reconstruction.write_text

        def write_text(self, path):
            real_write(self, path)
            target = Path(path) / "points3D.txt"
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])

        monkeypatch.setattr(pycolmap.Reconstruction, "write_text", write_text)
        monkeypatch.setattr(export, "_free_bytes", lambda folder: 0)
    assert main(["export", str(out), "-q"]) == 9
    err = capsys.readouterr().err
    assert "no space left" in err and "free at least" in err and str(out) in err
    assert _which_export(out, export_models) == ("a", "a")
    assert _hidden_leftovers(out) == []
    monkeypatch.undo()
    assert main(["export", str(out), "-q"]) == 0
    assert _which_export(out, export_models) == ("b", "b")


def test_short_write_with_free_space_is_a_storage_error(export_models, tmp_path, monkeypatch):
    import pycolmap

    from reconstruct.export import export_model

    out = tmp_path / "out"
    out.mkdir()
    _start_with(out, export_models, "a")
    real_write = pycolmap.Reconstruction.write_text

    def write_text(self, path):
        real_write(self, path)
        (Path(path) / "images.txt").write_bytes(b"")

    monkeypatch.setattr(pycolmap.Reconstruction, "write_text", write_text)
    with pytest.raises(StorageError) as e:
        export_model(export_models["b"][0], out)
    assert not isinstance(e.value, DiskFullError)
    assert "incomplete" in str(e.value) and "left as it was" in str(e.value)
    assert _which_export(out, export_models) == ("a", "a")
    assert _hidden_leftovers(out) == []


def test_unwritable_export_folder_is_a_typed_error(export_models, tmp_path, monkeypatch):
    from reconstruct import export

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(export.tempfile, "mkdtemp", denied)
    with pytest.raises(OutputPermissionError) as e:
        export.export_model(export_models["a"][0], tmp_path)
    assert e.value.exit_code == 10 and "-o" in str(e.value)


def test_leftovers_of_a_killed_export_are_removed_and_the_old_model_restored(
    export_models, tmp_path
):
    """Where folders cannot be swapped atomically, `replace_dir` moves the old model aside
    first: a kill right then leaves no model/ but `.model.old.*/model`. The next export puts
    it back before it starts, and removes every temporary."""
    from reconstruct import export

    out = tmp_path / "out"
    out.mkdir()
    ref_a = export_models["a"][1]
    aside = out / ".model.old.x1"
    aside.mkdir()
    shutil.copytree(ref_a / paths.MODEL, aside / paths.MODEL)
    (out / ".model.y2").mkdir()  # a half-written new model
    (out / ".model.y2" / "images.bin").write_bytes(b"\0" * 10)
    (out / ".points.ply.z3.ply").write_bytes(b"ply\n")
    shutil.copy2(ref_a / paths.PLY, out / paths.PLY)
    export._remove_leftovers(out)
    assert _which_export(out, export_models) == ("a", "a")
    assert _hidden_leftovers(out) == []


def _export_tmp_seen(out: Path) -> bool:
    return any(p.name.startswith(".model.") for p in out.iterdir())


def test_kill_9_during_export_leaves_the_old_or_the_new_model(export_models, tmp_path):
    """SIGKILL `reconstruct export` at random moments while it writes; each time model/ and
    points.ply are a complete previous or new export and nothing visible is left; then an
    uninterrupted re-run gives the same files as an uninterrupted export."""
    import random

    out = tmp_path / "out"
    out.mkdir()
    _start_with(out, export_models, "a")
    cmd = [sys.executable, "-m", "reconstruct.cli", "export", str(out), "-q"]

    # Calibration: how long an export of B writes (from its temporary folder to its exit).
    _point_sparse_at(out, export_models["b"][0])
    proc = subprocess.Popen(cmd)
    while not _export_tmp_seen(out) and proc.poll() is None:
        time.sleep(0.001)
    t0 = time.monotonic()
    assert proc.wait(120) == 0
    window = time.monotonic() - t0
    assert _which_export(out, export_models) == ("b", "b")

    rng = random.Random(15)
    alive_kills, outcomes = 0, []
    for i in range(5):
        current, _ = _which_export(out, export_models)
        target = "a" if current == "b" else "b"
        _point_sparse_at(out, export_models[target][0])
        proc = subprocess.Popen(cmd)
        while not _export_tmp_seen(out) and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(0.0 if i == 0 else rng.uniform(0.0, window))
        alive_kills += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        outcomes.append(_which_export(out, export_models))  # complete old or new, each
        assert outcomes[-1][0] in (current, target)
        _hidden_leftovers(out)  # only hidden temporaries
    assert alive_kills >= 1, "no kill landed while an export was running"

    # The re-run after the last kill: the same files as an uninterrupted export.
    assert subprocess.run(cmd, timeout=120).returncode == 0
    final = "b" if (out / paths.SPARSE).resolve() == export_models["b"][0].resolve() else "a"
    assert _which_export(out, export_models) == (final, final)
    assert _hidden_leftovers(out) == []
    _check_model_stats(out, export_models[final][1])


def test_unreadable_sparse_model_is_a_typed_error(export_models, tmp_path):
    """A sparse model cut short (here a text one, which pycolmap reads line by line) is a
    StorageError that says which stage to re-run, not a pycolmap traceback."""
    import pycolmap

    from reconstruct.export import export_model

    sparse = tmp_path / "sparse"
    (sparse / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(export_models["a"][0] / "0")).write_text(str(sparse / "0"))
    points = sparse / "0" / "points3D.txt"
    points.write_bytes(points.read_bytes()[: points.stat().st_size // 2])
    with pytest.raises(StorageError) as e:
        export_model(sparse, tmp_path / "out")
    assert "reconstruct map" in str(e.value) and str(sparse / "0") in str(e.value)


def test_text_only_sparse_model_exports(export_models, tmp_path):
    """A sparse model in text form (written by another tool) is exported too: pycolmap writes
    the .bin files, checked against the free space only."""
    import pycolmap

    from reconstruct.export import export_model

    sparse = tmp_path / "sparse"
    (sparse / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(export_models["a"][0] / "0")).write_text(str(sparse / "0"))
    out = tmp_path / "out"
    out.mkdir()
    export_model(sparse, out)
    assert (out / paths.MODEL / "images.bin").is_file()
    _check_model_stats(out, export_models["a"][1])
