"""The app's page logic (Streamlit's AppTest) and its upload safety rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reconstruct.app import state, uploads
from reconstruct.errors import InputError

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPG = b"\xff\xd8\xff\xe0" + b"\0" * 32
MAIN = str(Path(__file__).parents[1] / "reconstruct" / "app" / "main.py")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("/abs/path/x.JPG", "x.jpg"),
        ("..\\..\\win\\y.png", "y.png"),
        ("a b;rm -rf.png", "a_b_rm_-rf.png"),
        ("..hidden.png", "hidden.png"),
    ],
)
def test_sanitise_name_strips_folders_and_odd_characters(name, expected):
    assert uploads.sanitise_name(name) == expected


@pytest.mark.parametrize("name", ["..", "/", "", "\x00"])
def test_sanitise_name_refuses_empty_names(name):
    with pytest.raises(InputError):
        uploads.sanitise_name(name)


def test_session_dir_is_confined(tmp_path):
    a, b = uploads.new_session_id(), uploads.new_session_id()
    assert a != b
    da, db = uploads.session_dir(tmp_path, a), uploads.session_dir(tmp_path, b)
    assert da != db and da.parent == db.parent == (tmp_path / "sessions").resolve()
    for bad in ("../x", "abc", "0" * 16 + "/.."):
        with pytest.raises(InputError):
            uploads.session_dir(tmp_path, bad)


def test_save_uploads_checks_type_and_limits(tmp_path):
    limits = uploads.UploadLimits(max_file_bytes=100, max_total_bytes=150, max_files=10)
    files = [
        ("ok.png", PNG),
        ("../evil.jpg", JPG),
        ("fake.png", b"#!/bin/sh\necho hi"),
        ("script.py", PNG),
        ("big.png", PNG + b"\0" * 200),
        ("third.png", PNG + b"\0" * 60),  # over the session total
    ]
    saved, rejected = uploads.save_uploads(files, tmp_path / "up", limits)
    assert saved == ["ok.png", "evil.jpg"]
    assert set(rejected) == {"fake.png", "script.py", "big.png", "third.png"}
    assert "not an image" in rejected["fake.png"] and "limit" in rejected["big.png"]
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["evil.jpg", "ok.png"]
    assert not (tmp_path / "evil.jpg").exists()


def test_limits_from_env():
    lim = uploads.limits_from_env(
        {"RECONSTRUCT_APP_MAX_FILE_MB": "1", "RECONSTRUCT_APP_MAX_FILES": "3"}
    )
    assert lim.max_file_bytes == 2**20 and lim.max_files == 3
    assert lim.max_total_bytes == uploads.UploadLimits().max_total_bytes
    with pytest.raises(InputError):
        uploads.limits_from_env({"RECONSTRUCT_APP_MAX_FILES": "many"})


def test_pick_folder_refuses_outside_workdir(tmp_path):
    (tmp_path / "scene").mkdir()
    assert uploads.pick_folder(tmp_path, "scene") == (tmp_path / "scene").resolve()
    for bad in ("..", "/etc", "missing"):
        with pytest.raises(InputError):
            uploads.pick_folder(tmp_path, bad)


def test_stage_order(tmp_path):
    with pytest.raises(InputError, match="no images"):
        state.check_can_run("keypoints", None, False)
    state.check_can_run("keypoints", tmp_path, True)
    with pytest.raises(InputError, match="before keypoints"):
        state.check_can_run("matching", tmp_path, True)
    (tmp_path / "features.h5").touch()
    with pytest.raises(InputError, match="before pairs"):
        state.check_can_run("matching", tmp_path, True)
    (tmp_path / "pairs.txt").touch()
    state.check_can_run("matching", tmp_path, True)
    assert state.done(tmp_path) == ["keypoints", "pairs"]


def test_threshold_preview_counts_fallback_and_connectivity():
    from reconstruct.pairs import PairsConfig

    # two tight clusters {0,1} and {2,3}, orthogonal to each other
    d = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]], float)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    names = ["a", "b", "c", "d"]
    cfg = PairsConfig(top_k=3, min_pairs=0)
    loose = state.threshold_preview(names, d, cfg, -1.0)
    tight = state.threshold_preview(names, d, cfg, 0.9)
    assert loose["pairs"] == 6 and loose["connected"]
    assert tight["pairs"] == 2 and not tight["connected"] and tight["components"] == 2
    fb = state.threshold_preview(names, d, PairsConfig(top_k=3, min_pairs=3), 0.9)
    assert fb["fallback"] and fb["pairs"] == 6


# ----------------------------------------------------------------------------- page logic


@pytest.fixture()
def app(tmp_path, monkeypatch):
    st_testing = pytest.importorskip("streamlit.testing.v1")
    monkeypatch.setenv("RECONSTRUCT_APP_WORKDIR", str(tmp_path))
    at = st_testing.AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_page_starts_clean(app, tmp_path):
    assert not _errors(app)
    assert any("none yet" in c.value for c in app.caption)
    assert (tmp_path / "sessions" / app.session_state.session_id).is_dir()


def test_out_of_order_step_is_an_error_message(app):
    app.button(key="run_keypoints").click().run()
    assert any("no images yet" in e for e in _errors(app))
    app.sidebar.slider(key="demo_n").set_value(4)
    app.button(key="load_demo").click().run()
    assert not app.exception and not _errors(app)
    app.button(key="run_matching").click().run()
    assert any("cannot run matching before keypoints" in e for e in _errors(app))
    assert not app.exception


def test_upload_without_files_is_an_error_message(app):
    app.sidebar.radio(key="source").set_value("Upload").run()
    app.button(key="use_upload").click().run()
    assert any("No images uploaded" in e for e in _errors(app))
    assert not app.exception


def test_folder_outside_workdir_is_an_error_message(app):
    app.sidebar.radio(key="source").set_value("Folder under workdir").run()
    app.sidebar.text_input(key="folder").input("../..").run()
    app.button(key="use_folder").click().run()
    assert any("not a folder under" in e for e in _errors(app))


def test_two_sessions_do_not_share_outputs(tmp_path, monkeypatch):
    st_testing = pytest.importorskip("streamlit.testing.v1")
    monkeypatch.setenv("RECONSTRUCT_APP_WORKDIR", str(tmp_path))
    a = st_testing.AppTest.from_file(MAIN).run()
    b = st_testing.AppTest.from_file(MAIN).run()
    assert a.session_state.session_id != b.session_state.session_id
    assert len(list((tmp_path / "sessions").iterdir())) == 2


def test_demo_run_all_fills_every_view(app, tmp_path):
    app.sidebar.slider(key="demo_n").set_value(4)
    app.button(key="load_demo").click().run()
    app.button(key="run_all").click().run()
    assert not app.exception, app.exception
    assert not _errors(app), _errors(app)
    charts = [c for c in app.get("plotly_chart")]
    assert len(charts) == 2  # heatmap and 3D model
    assert app.metric and any(m.label == "Pairs kept" for m in app.metric)
    assert len(app.get("download_button")) == 3
    out = tmp_path / "sessions" / app.session_state.session_id / "output"
    assert (out / "points.ply").read_bytes().startswith(b"ply")
    assert list((out / "viz").glob("matches_*.png"))
