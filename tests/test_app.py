"""The app's page logic (Streamlit's AppTest) and its upload safety rules."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from reconstruct.app import state, uploads
from reconstruct.app.jobs import Job
from reconstruct.errors import InputError
from reconstruct.progress import Step, progress

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
    assert app.main[0].type == "title"  # no stray text above it (Streamlit prints bare strings)
    assert any("none yet" in c.value for c in app.caption)
    assert (tmp_path / "sessions" / app.session_state.session_id).is_dir()


def test_settings_start_from_the_chosen_preset(app):
    from reconstruct.config import resolve_config_path
    from reconstruct.settings import load_config

    for name in ("fast", "accurate", "fast"):
        app.sidebar.selectbox[0].set_value(name).run()  # the Preset box comes first
        want = load_config(resolve_config_path(name))
        assert app.sidebar.number_input(key="max_kp").value == want.keypoints.max_keypoints
        assert app.sidebar.number_input(key="resize").value == (want.keypoints.resize or 0)
        assert app.sidebar.number_input(key="top_k").value == want.pairs.top_k
        assert app.sidebar.number_input(key="min_pairs").value == want.pairs.min_pairs
    fast, accurate = (load_config(resolve_config_path(n)).keypoints for n in ("fast", "accurate"))
    assert fast.max_keypoints != accurate.max_keypoints  # else this test proves nothing


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


@pytest.fixture()
def gate(monkeypatch):
    """Holds the keypoints stage inside its first image until the test opens the gate."""
    import reconstruct.keypoints as kp

    reached, opened = threading.Event(), threading.Event()
    original = kp.extract_item

    def held(*args, **kwargs):
        reached.set()
        if not opened.wait(120):
            raise TimeoutError("the test never opened the gate")
        return original(*args, **kwargs)

    monkeypatch.setattr(kp, "extract_item", held)
    yield reached, opened
    opened.set()


def _finish(at):
    """Wait for the session's background job, then redraw the page as its poll would."""
    job = at.session_state.job
    assert job.wait(300), "the job did not end"
    return at.run()


def _progress_texts(at) -> list[str]:
    return [e.proto.text for e in at.get("progress")]


def test_cancel_then_resume_then_every_view(app, gate, tmp_path):
    reached, opened = gate
    app.sidebar.selectbox(key="extractor").set_value("sift")  # seconds, not minutes, on CPU
    app.sidebar.slider(key="demo_n").set_value(4)
    app.button(key="load_demo").click().run()
    app.button(key="run_all").click().run()
    assert not app.exception and not _errors(app)
    assert reached.wait(120), "keypoints never started"
    app.run()  # what the poll shows while the first image is in flight
    texts = _progress_texts(app)
    assert texts[0] == "Stage 1/6: keypoints" and "keypoints: image 0/4" in texts
    assert any("Extracting sift features of 4 images" in c.value for c in app.caption)
    assert app.button(key="run_all").disabled and app.button(key="run_matching").disabled
    app.button(key="cancel").click().run()
    assert app.session_state.job.cancel_requested
    assert any("Cancelling" in i.value for i in app.info)
    opened.set()  # the image in flight finishes, then the next step stops the run
    _finish(app)
    assert app.session_state.job.state == "cancelled"
    assert any("Cancelled: cancelled during keypoints" in w.value for w in app.warning)
    assert not app.exception and not _errors(app)
    assert any("finished stages: none" in c.value for c in app.caption)
    out = tmp_path / "sessions" / app.session_state.session_id / "output"
    assert len(list((out / "features.h5.parts").glob("*.npz"))) == 1  # the finished image
    assert not app.button(key="run_all").disabled
    app.button(key="run_matching").click().run()
    assert any("cannot run matching before keypoints" in e for e in _errors(app))

    app.button(key="run_all").click().run()  # resumes: only the three other images
    _finish(app)
    job = app.session_state.job
    assert job.state == "done", job.message
    assert job.steps()[0] == Step("keypoints", 3, 3, "img")
    assert not app.exception, app.exception
    assert not _errors(app), _errors(app)
    assert any(
        "finished stages: keypoints, pairs, matching, mapping, export" in c.value
        and "unfinished" not in c.value
        for c in app.caption
    )
    assert app.success and "Registered 4 of 4" in app.success[0].value
    timings = json.loads((out / "run.json").read_text())["timings"]
    assert tuple(k for k in timings if k != "total") == state.PIPELINE_STAGES

    charts = [c for c in app.get("plotly_chart")]
    assert len(charts) == 2  # heatmap and 3D model
    assert any(m.label == "Pairs kept" for m in app.metric)
    assert len(app.get("download_button")) == 3
    assert (out / "points.ply").read_bytes().startswith(b"ply")
    # Matches: sorted by inliers, worst first by default, best first on request.
    labels = app.selectbox(key="pair").options
    inliers = [int(label.split(" inliers")[0]) for label in labels]
    assert inliers == sorted(inliers) and len(labels) == 6
    app.radio(key="order").set_value("best first").run()
    assert [int(x.split(" inliers")[0]) for x in app.selectbox(key="pair").options] == sorted(
        inliers, reverse=True
    )
    assert list((out / "viz").glob("matches_*.png"))
    # Evaluation against the demo's known cameras (chosen by default for the demo).
    assert app.radio(key="gt_source").value == "Demo scene's ground truth"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Registered (GT images)"] == "4 / 4"
    assert float(metrics["AUC @5 deg"]) > 0.5 and float(metrics["mAA (1-10 deg)"]) > 0.5
    assert len(app.dataframe) == 1
    table = app.dataframe[0].value  # per-image errors, worst first
    assert sorted(table["image"]) == sorted(p.name for p in (out.parent / "demo/images").iterdir())
    assert (table["status"] == "aligned").all() and (table["rotation error (deg)"] < 5).all()


def test_evaluation_tab_rejects_bad_ground_truth(app, tmp_path):
    app.radio(key="gt_source").set_value("File under workdir").run()
    app.text_input(key="gt_rel").input("../../etc/passwd").run()
    assert any("not a file under" in e for e in _errors(app))
    (tmp_path / "cams.txt").write_text("view.jpg 1 2 3\n")
    app.text_input(key="gt_rel").input("cams.txt").run()
    assert any("No model yet" in i.value for i in app.info)  # parsed only with a model
    assert not app.exception


def test_state_after_cancel_and_current_stage():
    assert state.incomplete_after_cancel("all", "matching") == {"matching", "mapping", "export"}
    assert state.incomplete_after_cancel("all", "upright votes") == {
        "orientation",
        "matching",
        "mapping",
        "export",
    }
    assert state.incomplete_after_cancel("all", "global descriptors") >= {"pairs", "export"}
    assert state.incomplete_after_cancel("keypoints", "keypoints") == {"keypoints"}
    assert state.incomplete_after_cancel("all", "some new bar") == set(state.PIPELINE_STAGES)
    assert state.current_stage("all", None, []) == "keypoints"
    assert state.current_stage("all", "keypoints", ["keypoints"]) == "pairs"  # pairs: no bar
    assert state.current_stage("all", "matching", ["keypoints", "pairs"]) == "matching"
    assert state.current_stage("all", "upright cue", ["keypoints"]) == "orientation"
    assert state.current_stage("all", "mapping", ["mapping"]) == "export"
    assert state.current_stage("export", None, ["export"]) == "export"
    assert state.step_text("matching", 12, 28, "pair") == "matching: pair 12/28"
    assert state.step_text("keypoints", 3, None, "img") == "keypoints: 3 images"


def test_cancelled_stage_blocks_the_next_one(tmp_path):
    (tmp_path / "features.h5").touch()
    state.check_can_run("pairs", tmp_path, True)
    assert state.done(tmp_path, {"keypoints"}) == []
    with pytest.raises(InputError, match="keypoints was cancelled"):
        state.check_can_run("pairs", tmp_path, True, {"keypoints"})


def test_job_runs_reports_and_cancels_in_its_thread():
    started, release = threading.Event(), threading.Event()

    def work() -> str:
        logging.getLogger("reconstruct.matching").warning("Matching %d pairs", 5)
        for i in progress(range(5), desc="matching", unit="pair"):
            if i == 1:
                started.set()
                release.wait(30)
        return "ok"

    job = Job("matching", work).start()
    assert started.wait(30) and job.running
    assert job.steps() == [Step("matching", 1, 5, "pair")] and job.last_bar == "matching"
    assert job.log_tail() == ["Matching 5 pairs"]
    logging.getLogger("reconstruct.matching").warning("not from the job's thread")
    assert job.log_tail() == ["Matching 5 pairs"]
    job.cancel()
    release.set()
    assert job.wait(30)
    assert job.state == "cancelled" and job.cancelled_in == "matching"
    assert job.steps() == [Step("matching", 2, 5, "pair")]  # item 1 finished, then it stopped
    done = Job("all", lambda: "fine").start()
    assert done.wait(30) and done.state == "done" and done.message == "fine"

    def bad() -> str:
        raise InputError("no images")

    failed = Job("all", bad).start()
    assert failed.wait(30) and failed.state == "failed" and failed.message == "no images"


def test_text_upload_and_pick_file(tmp_path):
    limits = uploads.UploadLimits(max_file_bytes=100)
    target = tmp_path / "s" / "gt" / "cameras.txt"
    assert uploads.save_text_upload(b"a 1 1 1 1 1 0 0 0 0 0 0\n", target, limits) == target
    assert target.read_text().startswith("a 1")
    stamp = target.stat().st_mtime_ns
    uploads.save_text_upload(b"a 1 1 1 1 1 0 0 0 0 0 0\n", target, limits)
    assert target.stat().st_mtime_ns == stamp  # unchanged: not rewritten
    uploads.save_text_upload(b"b 1 1 1 1 1 0 0 0 0 0 0\n", target, limits)
    assert target.read_text().startswith("b 1")
    for bad, why in ((b"\xff\xd8\xff", "not UTF-8"), (b"a\x00b", "binary"), (b"x" * 101, "limit")):
        with pytest.raises(InputError, match=why):
            uploads.save_text_upload(bad, target, limits)
    assert uploads.pick_file(tmp_path, "s/gt/cameras.txt") == target.resolve()
    for bad in ("..", "s", "/etc/passwd", "missing.txt"):
        with pytest.raises(InputError):
            uploads.pick_file(tmp_path, bad)


def test_a_full_run_message_carries_the_summary_warnings(make_summary):
    def summary(**counts):
        return make_summary({"images": 16, "pairs": 120, "matches": 900, **counts})

    # a sound run: one line, no warning
    assert state.summary_message(summary(registered_images=16)).splitlines() == [
        summary(registered_images=16).format().splitlines()[0]
    ]
    lines = state.summary_message(
        summary(
            registered_images=16,
            explained_matches=0.19,
            model_consistent=False,
            split_reasons=["no verified pair joins model 1 to another model"],
        )
    ).splitlines()
    assert lines[0].startswith("Registered 16 of 16 images")
    assert lines[1] == "Not one model: no verified pair joins model 1 to another model."
    assert lines[2].startswith("Warning: the model explains only 19%") and len(lines) == 3
    # what the contrast rescue did is shown too (the page's only trace of where the model came from)
    rescued = summary(registered_images=16)
    rescued.contrast_rescue = {
        "keypoints_contrast": "clahe",
        "num_images": 16,
        "before": {"largest": 16, "models": 1, "consistent": False, "explained": 0.27},
        "after": {"largest": 16, "models": 1, "consistent": True, "explained": 0.54},
        "kept": True,
    }
    lines = state.summary_message(rescued).splitlines()
    assert len(lines) == 2 and lines[1] == (
        "Contrast rescue: all 16 images extracted again with keypoints.contrast=clahe; largest "
        "model 16 -> 16 images, kept (the previous largest model contradicted its matches)."
    )


@pytest.mark.parametrize("consistent", [True, False])
def test_the_mapping_stage_alone_warns_of_a_model_contradicting_its_matches(
    tmp_path, monkeypatch, consistent
):
    """The page runs the mapping stage with the library's `run_mapping` (replaced here by one
    that writes only the summary of a flagged or a sound model)."""
    import reconstruct.mapping
    from reconstruct import paths
    from reconstruct.settings import PipelineConfig

    out = tmp_path / "out"
    out.mkdir()
    for name in (paths.FEATURES, paths.PAIRS, paths.MATCHES):
        (out / name).write_bytes(b"")

    def fake_run_mapping(image_dir, features, matches, output_dir, config, pairs_path=None):
        sparse = Path(output_dir) / paths.SPARSE
        sparse.mkdir()
        report = {"pairs": 10, "explained": 0.1, "consistent": consistent}
        (sparse / paths.MAPPING_SUMMARY).write_text(json.dumps({"consistency": report}))
        return sparse

    monkeypatch.setattr(reconstruct.mapping, "run_mapping", fake_run_mapping)
    message = state.run_stage("mapping", tmp_path, out, PipelineConfig())
    assert message.splitlines()[0] == "mapping done"
    assert ("Warning: the model explains only 10% of the verified" in message) is not consistent
