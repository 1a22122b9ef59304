"""The stage commands that read a finished run, through the CLI in process: map, export, eval,
viz (matches, model, pca's missing weights) and weights.

One small SIFT run of the synthetic scene is shared by the whole module (SIFT + mutual nearest
neighbours: no model weights, a few seconds on CPU).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import pytest

from reconstruct import paths
from reconstruct.cli import main
from reconstruct.export import read_points3d, read_poses
from reconstruct.storage import FeaturesReader, MatchesReader
from reconstruct.viz import fundamental_inliers

FAST = [
    "--set",
    "keypoints.extractor=sift",
    "--set",
    "matching.matcher=mnn",
    "--set",
    "keypoints.max_keypoints=1024",
]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`reconstruct ARGV` in process: (exit code, what it printed on stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def run(synthetic_scene, tmp_path_factory):
    """extract, pairs and match, then the stages under test, map and export, each once:
    {command: (exit code, stdout)} plus the output folder and the scene."""
    out = tmp_path_factory.mktemp("stages") / "out"
    images = str(synthetic_scene.image_dir)
    for argv in (
        ["extract", images, "-o", str(out), "--device", "cpu", "-q", *FAST],
        ["pairs", images, "-o", str(out), "--device", "cpu", "-q", *FAST],
        ["match", str(out), "--device", "cpu", "-q", *FAST],
    ):
        assert run_cli(argv)[0] == 0, argv
    results = {
        "map": run_cli(["map", images, "-o", str(out), "-q", *FAST]),
        "export": run_cli(["export", str(out), "-q", *FAST]),
    }
    return out, synthetic_scene, results


def png_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image.shape[1], image.shape[0]


# ----------------------------------------------------------------------------- map, export


def test_map_registers_every_view(run):
    out, scene, results = run
    code, stdout = results["map"]
    assert code == 0
    assert stdout.strip() == str(out / paths.SPARSE)
    assert paths.is_model_dir(out / paths.SPARSE / "0")
    assert sorted(read_poses(out / paths.SPARSE / "0")) == sorted(scene.cameras)
    assert (out / paths.SPARSE / paths.MAPPING_SUMMARY).is_file()


def test_map_without_features_is_a_storage_error(synthetic_scene, tmp_path, capsys):
    code = main(["map", str(synthetic_scene.image_dir), "-o", str(tmp_path / "out"), "-q"])
    assert code == 4
    assert "features.h5 does not exist" in capsys.readouterr().err


def test_export_writes_the_model_and_the_point_cloud(run):
    out, scene, results = run
    code, stdout = results["export"]
    assert code == 0 and stdout.strip() == str(out / paths.MODEL)
    model = out / paths.MODEL
    assert (model / "images.bin").is_file() and (model / "points3D.txt").is_file()
    assert sorted(read_poses(model)) == sorted(scene.cameras)
    xyz, _, tracks = read_points3d(model)
    assert len(xyz) > 100
    ply = (out / paths.PLY).read_bytes()
    header = ply[: ply.index(b"end_header")].decode()
    vertices = int(header.split("element vertex ")[1].split()[0])
    assert 0 < vertices <= len(xyz)  # the PLY keeps the points that pass its filters


def test_export_without_sparse_is_a_storage_error(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["export", str(tmp_path / "out"), "-q"]) == 4
    assert "reconstruct map" in capsys.readouterr().err


# ----------------------------------------------------------------------------- eval


def test_eval_prints_and_writes_the_per_image_table(run, tmp_path, capsys):
    out, scene, _ = run
    json_path = tmp_path / "metrics.json"
    assert main(["eval", str(out), "--gt", str(scene.gt_path), "--json", str(json_path)]) == 0
    text = capsys.readouterr().out
    metrics = json.loads(json_path.read_text())
    assert metrics["registration_ratio"] == 1.0 and metrics["auc"]["5"] > 0.8
    rows = metrics["images"]
    assert sorted(r["name"] for r in rows) == sorted(scene.cameras)
    assert all(r["status"] == "aligned" for r in rows)
    # Worst first: the larger of rotation / 10 deg and centre / 5 % of the extent.
    scores = [max(r["rotation_error_deg"] / 10, r["center_error_relative"] / 0.05) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert max(r["rotation_error_deg"] for r in rows) < 1.0
    assert "per-image errors" in text
    table = text[text.index("per-image errors") :].splitlines()[2:]
    assert [line.split()[0] for line in table] == [r["name"] for r in rows]


def test_eval_of_a_missing_model_or_ground_truth_is_an_input_error(run, tmp_path, capsys):
    out, scene, _ = run
    assert main(["eval", str(tmp_path / "nowhere"), "--gt", str(scene.gt_path), "-q"]) == 3
    assert "not a folder" in capsys.readouterr().err
    assert main(["eval", str(out), "--gt", str(tmp_path / "cameras.txt"), "-q"]) == 3
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- viz


def inlier_counts(out: Path) -> dict[tuple[str, str], int]:
    """RANSAC inliers of every stored pair with 8+ matches, as the match pictures count them."""
    counts = {}
    with FeaturesReader(out / paths.FEATURES) as f, MatchesReader(out / paths.MATCHES) as m:
        for (name0, name1), k in m.counts().items():
            if k >= 8:
                idx, _ = m.read(name0, name1)
                k0, k1 = f.read(name0).keypoints[idx[:, 0]], f.read(name1).keypoints[idx[:, 1]]
                counts[name0, name1] = int(fundamental_inliers(k0, k1).sum())
    return counts


def test_viz_matches_without_names_shows_the_best_pair_and_says_so(run, tmp_path, capsys):
    out, scene, _ = run
    png = tmp_path / "best.png"
    # Stage commands write no run.json: the image folder is given.
    argv = ["viz", "matches", str(out), "--images", str(scene.image_dir), "--max-lines", "20"]
    assert main([*argv, "-o", str(png)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(png)
    assert "No pair given: showing" in captured.err and "most RANSAC inliers" in captured.err
    best = max(inlier_counts(out).items(), key=lambda kv: kv[1])
    assert f"{best[0][0]} - {best[0][1]} has the most RANSAC inliers ({best[1]} of" in captured.err
    assert png_size(png) == (2 * 640, 480 + 32)  # the scene's views are 640 x 480

    assert main([*argv, "--worst"]) == 0
    captured = capsys.readouterr()
    assert "fewest RANSAC inliers" in captured.err
    worst = Path(captured.out.strip())
    assert worst.parent == out / paths.VIZ and worst.is_file()
    # The two choices against inliers counted here for every pair.
    counts = inlier_counts(out)
    worst_pair = tuple(worst.name[len("matches_") : -len(".png")].split(".jpg_"))
    worst_pair = (worst_pair[0] + ".jpg", worst_pair[1])
    assert counts[worst_pair] == min(counts.values()) < max(counts.values())
    assert f"({min(counts.values())} of " in captured.err


def test_viz_matches_of_a_named_pair_and_bad_arguments(run, capsys):
    out, scene, _ = run
    # The names follow OUTPUT (argparse fills optional positionals from the first run of them).
    images = ["--images", str(scene.image_dir), "-q"]
    assert main(["viz", "matches", str(out), "view_002.jpg", "view_003.jpg", *images]) == 0
    assert Path(capsys.readouterr().out.strip()).name == "matches_view_002.jpg_view_003.jpg.png"
    assert main(["viz", "matches", str(out), "view_002.jpg", *images]) == 3
    assert "both image names" in capsys.readouterr().err
    pair = ["view_002.jpg", "view_003.jpg"]
    assert main(["viz", "matches", str(out), *pair, "--worst", *images]) == 3
    assert "--worst" in capsys.readouterr().err
    # No run.json and no --images: the message says what to pass.
    assert main(["viz", "matches", str(out), "-q"]) == 3
    assert "--images IMAGE_DIR" in capsys.readouterr().err


def test_viz_model_of_the_run(run, tmp_path, capsys):
    out, _, _ = run
    png = tmp_path / "model.png"
    assert main(["viz", "model", str(out), "-o", str(png), "--views", "2"]) == 0
    assert png_size(png) == (2 * 480, 480)
    assert "outside the view: 0 cameras" in capsys.readouterr().err


# ----------------------------------------------------------------------------- weights


def test_weights_list_names_every_backbone_and_the_cache(caches, capsys):
    assert main(["weights", "list"]) == 0
    text = capsys.readouterr().out
    assert str(caches) in text
    for backbone in ("vits14", "vitb14", "vitl14", "vitg14"):
        line = next(row for row in text.splitlines() if row.startswith(backbone + " "))
        assert "missing" in line and "https://" in line


def test_missing_weights_message_names_the_setting_and_the_fixes(
    caches, synthetic_scene, tmp_path, capsys
):
    image = synthetic_scene.image_dir / "view_000.jpg"
    argv = ["viz", "pca", str(image), "-o", str(tmp_path / "pca.png"), "--device", "cpu"]
    assert main([*argv, "--set", "keypoints.patch.download=false", "-q"]) == 5
    err = capsys.readouterr().err
    assert "DINOv2 weights for backbone 'vits14'" in err
    assert "keypoints.patch.download" in err and "--set keypoints.patch.weights=PATH" in err
    assert "reconstruct weights list" in err and str(caches) in err
    assert "Traceback" not in err and not (tmp_path / "pca.png").exists()
