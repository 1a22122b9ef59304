"""progress.py: tqdm bars that report their steps to `watch` callbacks and stop on a cancel."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from tqdm import tqdm

from reconstruct.errors import ReconstructError, RunCancelledError
from reconstruct.progress import CancelToken, ProgressBar, Step, progress, watch


def _counts(steps: list[Step]) -> list[tuple[str, int, int | None]]:
    return [(s.stage, s.done, s.total) for s in steps]


def test_iteration_reports_each_finished_item():
    steps: list[Step] = []
    seen_in_body = []
    with watch(steps.append):
        for item in progress(["a", "b", "c"], desc="keypoints", unit="img"):
            seen_in_body.append((item, steps[-1].done))
    # The start (0/3), then one report after each item's body finished.
    assert _counts(steps) == [("keypoints", i, 3) for i in range(4)]
    assert seen_in_body == [("a", 0), ("b", 1), ("c", 2)]
    assert {s.unit for s in steps} == {"img"}


def test_manual_updates_and_explicit_total():
    steps: list[Step] = []
    with watch(steps.append), progress(total=10, desc="matching", unit="pair") as bar:
        bar.update(3)
        bar.update(7)
    assert _counts(steps) == [("matching", 0, 10), ("matching", 3, 10), ("matching", 10, 10)]
    gen = (i for i in range(4))  # no len(): the total comes from the caller, or stays unknown
    with watch(steps.append):
        list(progress(gen, total=4, desc="g"))
        list(progress((i for i in range(2)), desc="h"))
    assert _counts(steps)[-1] == ("h", 2, None)
    assert ("g", 4, 4) in _counts(steps)


def test_cancel_raises_at_the_next_step():
    token = CancelToken()
    done = []
    with watch(token=token), pytest.raises(RunCancelledError) as info:
        for i in progress(range(10), desc="matching", unit="pair"):
            done.append(i)
            if i == 2:
                token.cancel()
    assert done == [0, 1, 2]  # item 2 finished, item 3 never started
    assert info.value.stage == "matching" and "matching" in str(info.value)
    assert isinstance(info.value, ReconstructError) and info.value.exit_code == 130
    with watch(token=token), pytest.raises(RunCancelledError):  # a bar made after the cancel
        progress(total=5, desc="mapping")
    token2 = CancelToken()
    with watch(token=token2), progress(total=5, desc="mapping") as bar:
        bar.update(1)
        token2.cancel()
        with pytest.raises(RunCancelledError):
            bar.update(1)


def test_cancel_token_alone_does_nothing_outside_watch():
    token = CancelToken()
    token.cancel()
    assert list(progress(range(3), desc="x")) == [0, 1, 2]  # not watched: no reports, no raise


def test_bars_are_tqdm_and_still_draw():
    out = io.StringIO()
    steps: list[Step] = []
    with watch(steps.append):
        bar = progress(range(3), desc="keypoints", unit="img", file=out, mininterval=0)
        assert isinstance(bar, tqdm) and isinstance(bar, ProgressBar)
        list(bar)
    assert "keypoints" in out.getvalue() and "3/3" in out.getvalue()
    assert steps[-1].done == 3


def test_quiet_cli_hides_the_bar_but_still_reports(monkeypatch):
    from reconstruct import cli

    root = logging.getLogger("reconstruct")
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "propagate", root.propagate)
    monkeypatch.setattr(root, "level", root.level)
    restore = cli._setup_logging(0, True)  # what `reconstruct -q` does to tqdm
    try:
        out = io.StringIO()
        steps: list[Step] = []
        with watch(steps.append):
            bar = progress(range(4), desc="matching", unit="pair", file=out, mininterval=0)
            assert bar.disable
            list(bar)
        assert out.getvalue() == ""
        assert _counts(steps) == [("matching", i, 4) for i in range(5)]
    finally:
        restore()
    assert not progress(range(1), desc="x", file=io.StringIO()).disable


def test_watchers_do_not_leak_across_threads_and_nest():
    outer: list[Step] = []
    inner: list[Step] = []
    other: list[Step] = []

    def elsewhere():
        list(progress(range(2), desc="other thread"))
        with watch(other.append):
            list(progress(range(1), desc="own"))

    with watch(outer.append):
        with watch(inner.append):
            list(progress(range(2), desc="both"))
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        list(progress(range(1), desc="outer only"))
    assert {s.stage for s in outer} == {"both", "outer only"}
    assert {s.stage for s in inner} == {"both"}
    assert {s.stage for s in other} == {"own"}
    list(progress(range(1), desc="after"))  # outside every block: nobody hears of it
    assert "after" not in {s.stage for s in outer + inner + other}


def test_a_bar_reports_from_any_thread():
    steps: list[Step] = []
    with watch(steps.append):
        bar = progress(total=3, desc="mapping", unit="img")
    worker = threading.Thread(target=lambda: bar.update(3))  # as pycolmap's callbacks do
    worker.start()
    worker.join()
    bar.close()
    assert _counts(steps) == [("mapping", 0, 3), ("mapping", 3, 3)]


def test_cancelled_extraction_keeps_finished_images_and_resumes(tmp_path):
    from reconstruct.keypoints import KeypointsConfig, extract_keypoints
    from reconstruct.storage import FeaturesReader
    from reconstruct.synthetic import SceneConfig, make_scene

    scene = make_scene(tmp_path / "scene", SceneConfig(num_images=4, width=160, height=120))
    config = KeypointsConfig(extractor="sift", max_keypoints=128)
    token = CancelToken()
    steps: list[Step] = []

    def stop_after_two(step: Step) -> None:
        steps.append(step)
        if step.done == 2:
            token.cancel()

    with watch(stop_after_two, token=token), pytest.raises(RunCancelledError):
        extract_keypoints(scene.image_dir, tmp_path / "out", config, device="cpu")
    assert _counts(steps) == [("keypoints", i, 4) for i in range(3)]
    # The storage contract: finished images stay as part files, the file appears at the end.
    assert not (tmp_path / "out" / "features.h5").exists()
    assert len(list((tmp_path / "out" / "features.h5.parts").glob("*.npz"))) == 2
    steps.clear()
    with watch(steps.append):
        extract_keypoints(scene.image_dir, tmp_path / "out", config, device="cpu")
    assert _counts(steps) == [("keypoints", i, 2) for i in range(3)]  # only the other two
    with FeaturesReader(tmp_path / "out" / "features.h5") as f:
        assert sorted(f.names()) == sorted(scene.cameras)


def test_cancel_inside_pycolmap_mapping_callback_propagates_and_resumes(tmp_path):
    """The mapping bar is updated from pycolmap's C++ callbacks: the cancel must come back out
    as RunCancelledError (not a crash or a swallowed error), and a re-run must finish."""
    from reconstruct.config import resolve_config_path
    from reconstruct.pipeline import run_pipeline
    from reconstruct.settings import load_config
    from reconstruct.synthetic import SceneConfig, make_scene

    scene = make_scene(tmp_path / "scene", SceneConfig(num_images=4, width=320, height=240))
    config = load_config(
        resolve_config_path("fast"), {"keypoints": {"extractor": "sift", "max_keypoints": 512}}
    )
    token = CancelToken()
    steps: list[Step] = []

    def stop_in_mapping(step: Step) -> None:
        steps.append(step)
        if step.stage == "mapping" and step.done >= 2:
            token.cancel()

    with watch(stop_in_mapping, token=token), pytest.raises(RunCancelledError) as info:
        run_pipeline(scene.image_dir, tmp_path / "out", config, device="cpu")
    assert info.value.stage == "mapping"
    assert [s.done for s in steps if s.stage == "mapping"] == [0, 2]  # the initial pair
    assert not (tmp_path / "out" / "points.ply").exists()
    steps.clear()
    with watch(steps.append):
        summary = run_pipeline(scene.image_dir, tmp_path / "out", config, device="cpu")
    assert summary.counts["registered_images"] == 4
    assert "keypoints" not in {s.stage for s in steps}  # finished work reused
