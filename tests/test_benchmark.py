"""scripts/benchmark.py end to end: our pipeline and COLMAP's SIFT pipeline on the same scene."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from reconstruct.gt import write_cameras_txt

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_benchmark_on_a_synthetic_scene(synthetic_scene, tmp_path, capsys):
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    names = [f"view_00{i}.jpg" for i in range(5)]
    for name in names:
        shutil.copy(synthetic_scene.image_dir / name, scene / "images" / name)
    (scene / "gt").mkdir()
    write_cameras_txt(scene / "gt" / "cameras.txt", [synthetic_scene.cameras[n] for n in names])
    out = tmp_path / "results.json"
    bench = _load_script()
    code = bench.main(
        [
            str(scene),
            "--set",
            "keypoints.max_keypoints=512",
            "--json",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "-q",
            "--known-intrinsics",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "time ours/colmap" in table and "AUC@5" in table
    (result,) = json.loads(out.read_text())
    for side in ("ours", "colmap"):
        assert result[side]["registered"] == 5
        assert result[side]["auc"]["5"] > 0.8
    assert result["time_ratio"] > 0
    assert set(result["ours"]["timings"]) >= {"keypoints", "matching", "mapping", "total"}


@pytest.mark.slow
@pytest.mark.realdata
def test_benchmark_herz_jesu(real_data, tmp_path):
    """Our default pipeline on Herz-Jesu-P8: every image, and at least COLMAP's accuracy."""
    bench = _load_script()
    out = tmp_path / "results.json"
    scene = real_data / "Herz-Jesu-P8"
    code = bench.main([str(scene), "--json", str(out), "--work", str(tmp_path), "-q"])
    assert code == 0
    (result,) = json.loads(out.read_text())
    assert result["ours"]["registered"] == 8
    assert result["ours"]["auc"]["5"] >= result["colmap"]["auc"]["5"] - 0.01
