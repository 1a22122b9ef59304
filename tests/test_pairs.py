"""Pair selection: exact-value rules on hand-made matrices, and the stage end to end."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from reconstruct import paths
from reconstruct.config import override
from reconstruct.errors import ConfigError, InputError, ModelWeightsError
from reconstruct.models import dinov2
from reconstruct.pairs import (
    PairsConfig,
    PairScores,
    _ranked,
    bridge_components,
    components,
    exhaustive_pairs,
    loop_closure_pairs,
    natural_key,
    neighbour_pairs,
    rule_pairs,
    score_cutoff,
    select_pairs,
    sequential_pairs,
)
from reconstruct.storage import read_pairs, read_pairs_header, read_pairs_with_scores, write_pairs

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


pytestmark = pytest.mark.usefixtures("caches")


# A similarity matrix whose neighbours are known: {0, 1, 2} and {3, 4} are two groups.
S = np.array(
    [
        [1.0, 0.9, 0.8, 0.1, 0.2],
        [0.9, 1.0, 0.7, 0.3, 0.1],
        [0.8, 0.7, 1.0, 0.4, 0.0],
        [0.1, 0.3, 0.4, 1.0, 0.6],
        [0.2, 0.1, 0.0, 0.6, 1.0],
    ]
)

# Five unit vectors with known distances: l1, l2, linf and cosine all differ.
A, B, C, D, E = 0, 1, 2, 3, 4
V = np.array(
    [
        [1.0, 0.0, 0.0],  # a
        [0.8, 0.6, 0.0],  # b: cos(a,b)=0.8, l1=0.8, l2=0.632, linf=0.6
        [0.0, 1.0, 0.0],  # c: cos(b,c)=0.6, l1=1.2, l2=0.894, linf=0.8
        [0.0, 0.0, 1.0],  # d: orthogonal to a, b, c
        [-1.0, 0.0, 0.0],  # e: opposite a
    ]
)


# ----------------------------------------------------------------------------- top-k


def test_top_k_on_a_known_matrix():
    pairs, fallback = neighbour_pairs(PairScores.from_matrix(S), top_k=1)
    # 0->1, 1->0, 2->0, 3->4, 4->3
    assert pairs == {(0, 1), (0, 2), (3, 4)}
    assert fallback == []
    pairs, _ = neighbour_pairs(PairScores.from_matrix(S), top_k=2)
    # 0->1,2  1->0,2  2->0,1  3->4,2  4->3,0
    assert pairs == {(0, 1), (0, 2), (1, 2), (3, 4), (2, 3), (0, 4)}
    pairs, _ = neighbour_pairs(PairScores.from_matrix(S), top_k=None)
    assert pairs == set(exhaustive_pairs(list(range(5))))


def test_top_k_ties_go_to_the_lower_index():
    tied = np.ones((4, 4))
    pairs, _ = neighbour_pairs(PairScores.from_matrix(tied), top_k=1)
    assert pairs == {(0, 1), (0, 2), (0, 3)}  # 0->1, 1->0, 2->0, 3->0


# ----------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("metric", "threshold", "expected"),
    [
        ("cosine", 0.7, {(A, B)}),
        ("cosine", 0.5, {(A, B), (B, C)}),
        ("cosine", -0.5, {(A, B), (B, C), (A, C), (A, D), (B, D), (C, D), (C, E), (D, E)}),
        ("l2", 0.7, {(A, B)}),
        ("l2", 0.9, {(A, B), (B, C)}),
        ("l1", 1.0, {(A, B)}),
        ("l1", 1.3, {(A, B), (B, C)}),
        ("linf", 0.7, {(A, B)}),
        ("linf", 0.85, {(A, B), (B, C)}),
        ("linf", 1.0, {(A, B), (B, C), (A, C), (A, D), (B, D), (C, D), (C, E), (D, E)}),
        ("l1", 2.0, {(A, B), (B, C), (A, C), (A, D), (C, D), (C, E), (D, E), (A, E)}),
    ],
)
def test_thresholds_in_each_metric(metric, threshold, expected):
    scores = PairScores.from_descriptors(V, metric)
    pairs, fallback = neighbour_pairs(
        scores, top_k=None, min_score=score_cutoff(metric, threshold), min_pairs=0
    )
    assert pairs == expected
    assert fallback == []


def test_distance_scores_are_minus_the_distance():
    np.testing.assert_allclose(
        PairScores.from_descriptors(V, "l1").rows(0, 1)[0, 1:], [-0.8, -2, -2, -2]
    )
    np.testing.assert_allclose(
        PairScores.from_descriptors(V, "l2").rows(1, 2)[0, [0, 2, 4]],
        [-np.sqrt(0.4), -np.sqrt(0.8), -np.sqrt(3.6)],
    )
    np.testing.assert_allclose(
        PairScores.from_descriptors(V, "linf").rows(1, 2)[0, [0, 2, 4]], [-0.6, -0.8, -1.8]
    )
    assert np.isneginf(PairScores.from_descriptors(V, "cosine").rows(0, 5).diagonal()).all()
    assert score_cutoff("cosine", 0.6) == 0.6 and score_cutoff("l2", 0.6) == -0.6
    assert score_cutoff("l2", None) is None


def test_top_k_and_threshold_combine():
    # cos >= 0.5 keeps a-b and b-c; top_k = 1 then keeps only each image's best among those.
    scores = PairScores.from_descriptors(V, "cosine")
    pairs, _ = neighbour_pairs(scores, top_k=1, min_score=0.5)
    # a->b, b->a, c->b; d's and e's best are below 0.5
    assert pairs == {(A, B), (B, C)}


def test_min_pairs_overrides_the_threshold():
    scores = PairScores.from_descriptors(V, "cosine")
    pairs, fallback = neighbour_pairs(scores, top_k=None, min_score=0.7, min_pairs=1)
    # a-b pass; c's best is b (0.6); d ties everything at 0 -> a; e ties c, d at 0 -> c.
    assert pairs == {(A, B), (B, C), (A, D), (C, E)}
    assert fallback == [C, D, E]
    pairs, fallback = neighbour_pairs(scores, top_k=None, min_score=0.7, min_pairs=10)
    assert pairs == set(exhaustive_pairs(list(range(5))))  # capped at N - 1 neighbours
    assert fallback == [A, B, C, D, E]


# ----------------------------------------------------------------------------- connectivity


def test_bridging_joins_two_groups_with_their_most_similar_pair():
    scores = PairScores.from_matrix(S)
    pairs, _ = neighbour_pairs(scores, top_k=1)
    assert components(5, pairs).max() == 1
    bridged, bridges = bridge_components(scores, pairs)
    assert bridges == [(2, 3, 0.4)]
    assert bridged == pairs | {(2, 3)}
    assert components(5, bridged).max() == 0


def test_bridging_builds_a_maximum_spanning_tree_of_components():
    # Groups X = {0, 1}, Y = {2, 3}, Z = {4, 5}; best cross links X-Y 0.5, Y-Z 0.3, X-Z 0.2.
    m = np.full((6, 6), 0.0)
    for i, j in [(0, 1), (2, 3), (4, 5)]:
        m[i, j] = m[j, i] = 0.9
    for (i, j), s in {(1, 2): 0.5, (3, 4): 0.3, (0, 5): 0.2, (0, 3): 0.1}.items():
        m[i, j] = m[j, i] = s
    pairs = {(0, 1), (2, 3), (4, 5)}
    bridged, bridges = bridge_components(PairScores.from_matrix(m), pairs)
    assert sorted(bridges) == [(1, 2, 0.5), (3, 4, 0.3)]
    assert bridged == pairs | {(1, 2), (3, 4)}


def test_isolated_image_is_bridged():
    scores = PairScores.from_descriptors(V, "cosine")
    pairs, _ = neighbour_pairs(scores, top_k=None, min_score=0.5, min_pairs=0)
    assert components(5, pairs).tolist() == [0, 0, 0, 1, 2]
    bridged, bridges = bridge_components(scores, pairs)
    assert components(5, bridged).max() == 0
    # d's best is a (0, ties broken by lower index); e's best is c (0) over a (-1) and b (-0.8).
    assert sorted((i, j) for i, j, _ in bridges) == [(A, D), (C, E)]


def test_row_blocks_give_the_same_answer_as_one_block():
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(37, 8))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    for metric in ("cosine", "l1", "l2", "linf"):
        whole = PairScores.from_descriptors(desc, metric, block=1000)
        small = PairScores.from_descriptors(desc, metric, block=5)
        cut = score_cutoff(metric, {"cosine": 0.3, "l1": 3.0, "l2": 1.1, "linf": 0.6}[metric])
        a = neighbour_pairs(whole, top_k=4, min_score=cut, min_pairs=2)
        b = neighbour_pairs(small, top_k=4, min_score=cut, min_pairs=2)
        assert a == b
        assert bridge_components(whole, a[0]) == bridge_components(small, b[0])


# ----------------------------------------------------------------------------- sequential


def test_sequential_window():
    assert sequential_pairs(5, 2) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)}
    assert sequential_pairs(3, 10) == {(0, 1), (0, 2), (1, 2)}
    assert sequential_pairs(1, 3) == set()


def test_loop_closure_finds_the_revisit_outside_the_window():
    n = 8
    m = np.full((n, n), 0.1)
    for i in range(n - 1):
        m[i, i + 1] = m[i + 1, i] = 0.9  # neighbours in time look alike
    m[0, 7] = m[7, 0] = 0.8  # the camera comes back to the start
    m[1, 6] = m[6, 1] = 0.3
    scores = PairScores.from_matrix(m)
    assert loop_closure_pairs(scores, window=2, top_k=1, min_score=0.5) == {(0, 7)}
    assert loop_closure_pairs(scores, window=2, top_k=1, min_score=0.2) == {(0, 7), (1, 6)}
    # Without a threshold every frame gets one neighbour outside its window.
    closure = loop_closure_pairs(scores, window=2, top_k=1)
    assert (0, 7) in closure and (1, 6) in closure
    assert all(j - i > 2 for i, j in closure)
    # A window covering everything leaves nothing to close.
    assert loop_closure_pairs(scores, window=7, top_k=3) == set()


def test_natural_order():
    names = ["f10.jpg", "f2.jpg", "f1.jpg", "a/f3.jpg"]
    assert sorted(names, key=natural_key) == ["a/f3.jpg", "f1.jpg", "f2.jpg", "f10.jpg"]


# ----------------------------------------------------------------------------- config


def test_config_validation_is_a_config_error():
    base = PairsConfig()
    assert base.strategy == "auto" and base.exhaustive_if_less == 20
    with pytest.raises(ConfigError, match="min_pairs"):
        override(base, {"min_pairs": 30})
    assert override(base, {"min_pairs": 30, "top_k": None}).min_pairs == 30
    with pytest.raises(ConfigError, match=r"cosine threshold must be in \[-1, 1\]"):
        override(base, {"threshold": 1.5})
    assert override(base, {"threshold": 1.5, "metric": "l2"}).threshold == 1.5
    with pytest.raises(ConfigError, match="strategy"):
        override(base, {"strategy": "vocab_tree"})
    with pytest.raises(ConfigError, match="window"):
        override(base, {"window": 0})
    with pytest.raises(ConfigError, match="top_k"):
        override(base, {"top_k": 0})


def test_pairs_module_imports_without_torch():
    code = (
        "import sys, reconstruct.pairs; "
        "bad = [m for m in ('torch', 'timm') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ----------------------------------------------------------------------------- the stage


def check_pairs_file(path, names):
    pairs = read_pairs(path)
    assert all(a < b for a, b in pairs), "name0 < name1"
    assert len(set(pairs)) == len(pairs), "no duplicates"
    assert all(a != b for a, b in pairs), "no self-pairs"
    assert all(a in names and b in names for a, b in pairs)
    return set(pairs)


def test_small_scene_is_exhaustive_without_a_model(tmp_path, monkeypatch):
    monkeypatch.setattr(dinov2, "resolve_weights", lambda *a, **k: pytest.fail("needs no model"))
    names = [f"img{i}.jpg" for i in range(5)]
    for strategy in ("auto", "retrieval", "sequential"):
        cfg = override(PairsConfig(), {"strategy": strategy})
        path = select_pairs(tmp_path / "images", tmp_path / "out", cfg, image_names=names)
        assert check_pairs_file(path, names) == set(exhaustive_pairs(names))
        report = json.loads((tmp_path / "out" / "pairs_report.json").read_text())
        assert report["strategy_used"] == "exhaustive" and report["num_pairs"] == 10
        assert report["degree"] == {"min": 4, "median": 4.0, "max": 4}
    assert not (tmp_path / "out" / "global.h5").exists()
    assert not (tmp_path / "out" / paths.GLOBAL_LOCAL).exists()


def test_large_scene_without_weights_is_an_error_with_the_fix(tmp_path):
    names = [f"img{i:02d}.jpg" for i in range(25)]
    cfg = override(PairsConfig(), {"retrieval": {"download": False, "model": "dinov2"}})
    with pytest.raises(ModelWeightsError) as info:
        select_pairs(tmp_path / "images", tmp_path / "out", cfg, image_names=names)
    assert "--set pairs.strategy=exhaustive" in str(info.value)
    assert "pairs.retrieval.model=local" in str(info.value)
    assert "dinov2_vitb14_pretrain.pth" in str(info.value)
    # With downloads on, the (blocked) download fails fast into the same typed error.
    cfg = override(PairsConfig(), {"retrieval": {"model": "dinov2"}})
    with pytest.raises(ModelWeightsError, match="download failed"):
        select_pairs(tmp_path / "images", tmp_path / "out", cfg, image_names=names)
    assert not (tmp_path / "out" / "pairs.txt").exists()


def test_sequential_without_loop_closure_uses_natural_order(tmp_path):
    names = [f"frame_{i}.jpg" for i in range(1, 13)]
    cfg = override(
        PairsConfig(),
        {"strategy": "sequential", "window": 1, "loop_closure": False, "exhaustive_if_less": 0},
    )
    path = select_pairs(tmp_path / "images", tmp_path / "out", cfg, image_names=names)
    pairs = check_pairs_file(path, names)
    assert len(pairs) == 11
    assert ("frame_10.jpg", "frame_9.jpg") in pairs  # canonical order: "frame_10" < "frame_9"
    assert ("frame_1.jpg", "frame_10.jpg") not in pairs
    assert read_pairs_header(path)["strategy_used"] == "sequential"


def test_extra_pairs_are_merged(tmp_path, caplog):
    names = [f"f{i}.jpg" for i in range(6)]
    extra = write_pairs(
        tmp_path / "mine.txt", [("f5.jpg", "f0.jpg"), ("f1.jpg", "f2.jpg"), ("f0.jpg", "zz.jpg")]
    )
    cfg = override(
        PairsConfig(),
        {
            "strategy": "sequential",
            "window": 1,
            "loop_closure": False,
            "exhaustive_if_less": 0,
            "extra_pairs": str(extra),
        },
    )
    path = select_pairs(tmp_path / "images", tmp_path / "out", cfg, image_names=names)
    pairs = check_pairs_file(path, names)
    assert ("f0.jpg", "f5.jpg") in pairs and len(pairs) == 6
    report = json.loads((tmp_path / "out" / "pairs_report.json").read_text())
    assert report["extra_pairs"]["added"] == 1
    assert report["extra_pairs"]["unknown_images"] == ["zz.jpg"]
    assert "zz.jpg" in caplog.text
    missing = override(cfg, {"extra_pairs": str(tmp_path / "nope.txt")})
    with pytest.raises(InputError, match="nope.txt"):
        select_pairs(tmp_path / "images", tmp_path / "out", missing, image_names=names)


def _scene(folder, groups=3, per_group=4):
    """Images in visually distinct groups (colour and texture), 64 x 48 px."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for g in range(groups):
        base = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (64, 48))
        for k in range(per_group):
            noise = rng.integers(-20, 20, base.shape)
            image = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
            name = f"g{g}/im {k}.png"  # a space and a folder: awkward names on purpose
            (folder / f"g{g}").mkdir(exist_ok=True)
            cv2.imwrite(str(folder / name), image)
            names.append(name)
    return names


@pytest.fixture
def tiny_weights(caches, monkeypatch):
    """A tiny ViT-S/14 in the official layout, in the cache where a download would put it."""
    monkeypatch.setattr(dinov2, "build_model", functools.partial(dinov2.build_model, **TINY))
    torch.manual_seed(0)
    model = dinov2.build_model("vits14")
    caches.mkdir(parents=True)
    path = caches / "dinov2_vits14_pretrain.pth"
    torch.save(dinov2.to_meta_layout(model), path)
    return path


def test_retrieval_end_to_end_with_resume(tmp_path, tiny_weights, monkeypatch):
    names = _scene(tmp_path / "images")
    cfg = override(
        PairsConfig(),
        {
            "strategy": "retrieval",
            "exhaustive_if_less": 0,
            "top_k": 2,
            "min_pairs": 1,
            "retrieval": {"backbone": "vits14", "resolution": 56, "download": False},
        },
    )
    path = select_pairs(tmp_path / "images", tmp_path / "out", cfg)
    pairs = check_pairs_file(path, names)
    out = tmp_path / "out"
    assert (out / "global.h5").is_file()
    report = json.loads((out / "pairs_report.json").read_text())
    assert report["strategy_used"] == "retrieval"
    assert report["num_images"] == 12 and report["num_exhaustive_pairs"] == 66
    assert report["num_pairs"] == len(pairs) < 66
    assert report["degree"]["min"] >= 2
    assert set(report["degree_per_image"]) == set(names)
    assert components(12, {(names.index(a), names.index(b)) for a, b in pairs}).max() == 0, (
        "connected"
    )
    scored = read_pairs_with_scores(path)
    assert all(s is not None and -1.0 <= s <= 1.0 + 1e-6 for _, s in scored)
    header = read_pairs_header(path)
    assert header["strategy_used"] == "retrieval" and "global_hash" in header

    # Changing selection rules reuses the descriptors: the model is not loaded again.
    monkeypatch.setattr(dinov2, "load_backbone", lambda *a, **k: pytest.fail("recomputed"))
    looser = override(cfg, {"top_k": 5, "threshold": 1.5, "metric": "l2"})
    more = check_pairs_file(select_pairs(tmp_path / "images", out, looser), names)
    assert len(more) > len(pairs)


def test_sequential_with_loop_closure_end_to_end(tmp_path, tiny_weights):
    names = _scene(tmp_path / "images", groups=2, per_group=5)
    cfg = override(
        PairsConfig(),
        {
            "strategy": "sequential",
            "exhaustive_if_less": 0,
            "window": 2,
            "loop_top_k": 1,
            "retrieval": {"backbone": "vits14", "resolution": 56},
        },
    )
    path = select_pairs(tmp_path / "images", tmp_path / "out", cfg)
    pairs = check_pairs_file(path, names)
    order = sorted(names, key=natural_key)
    window = {tuple(sorted((order[i], order[j]))) for i, j in sequential_pairs(len(order), 2)}
    assert window <= pairs and len(pairs) > len(window)
    assert read_pairs_header(path)["strategy_used"] == "sequential+loop_closure"


# ----------------------------------------------------------------------------- streaming


def _write_global(path, names, desc):
    from reconstruct.aggregation import LocalDescriptorConfig
    from reconstruct.retrieval import global_header
    from reconstruct.storage import ResultWriter

    header = global_header(LocalDescriptorConfig(), model="test")
    with ResultWriter(path, header) as w:
        for n, d in zip(names, desc, strict=True):
            w.add((n,), {"descriptor": d.astype(np.float32)})


@pytest.mark.parametrize("metric", ["cosine", "l2", "l1", "linf"])
def test_memory_mapped_scores_in_blocks_equal_in_memory(tmp_path, monkeypatch, metric):
    from reconstruct import pairs as pairs_module

    rng = np.random.default_rng(3)
    desc = rng.normal(size=(23, 8))
    desc = (desc / np.linalg.norm(desc, axis=1, keepdims=True)).astype(np.float32)
    names = [f"im{i:02d}.jpg" for i in range(23)]
    path = tmp_path / "g.h5"
    _write_global(path, names, desc)
    order = names[::-1]  # the selection order, not the file's
    whole = PairScores.from_descriptors(np.ascontiguousarray(desc[::-1]), metric)
    exact = PairScores.from_descriptors(desc[::-1].astype(np.float64), metric)
    # 3 descriptor columns and 5 score rows... per block: many row and column blocks
    monkeypatch.setattr(pairs_module, "COLUMN_BUDGET", 3 * 8)
    monkeypatch.setattr(pairs_module, "SCORE_BUDGET", 5 * 23)
    with pairs_module.descriptor_matrix(path, order, tmp_path, chunk=4) as mm:
        assert isinstance(mm, np.memmap) and mm.shape == (23, 8)
        np.testing.assert_array_equal(mm, desc[::-1])
        blocked = PairScores.from_descriptors(mm, metric)
        assert blocked.block == 5
        assert blocked.rows(0, 23).dtype == np.float32  # float32 files are scored in float32
        # blocks of rows and columns give the in-memory float32 scores, to float32 rounding
        np.testing.assert_allclose(blocked.rows(0, 23), whole.rows(0, 23), atol=1e-6)
        np.testing.assert_allclose(blocked.rows(0, 23), exact.rows(0, 23), atol=1e-6)
        cfg = PairsConfig(top_k=3, min_pairs=2, metric=metric)
        a = rule_pairs("retrieval", 23, cfg, mm)
        b = rule_pairs("retrieval", 23, cfg, desc[::-1].astype(np.float64))
        assert a.pairs == b.pairs
    assert not list(tmp_path.glob(".descriptors-*")), "the scratch copy is deleted"


def test_pair_cosines_exact_in_chunks():
    from reconstruct.pairs import pair_cosines

    d = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    idx0, idx1 = np.array([0, 0, 1, 2]), np.array([1, 2, 2, 2])
    np.testing.assert_allclose(pair_cosines(d, idx0, idx1, chunk=3), [0.0, 0.6, 0.8, 1.0])
    assert pair_cosines(d, idx0[:0], idx1[:0]).shape == (0,)


@pytest.mark.parametrize("first", [1, 2, 3, 5])
def test_ranked_first_equals_the_full_sort_with_ties(first):
    # ties at the cut go to the lower index, as in the full stable sort; -inf (the image
    # itself, and masked images) ranks last
    row = np.array([0.5, 0.9, -np.inf, 0.5, 0.9, 0.5, -np.inf])
    full = _ranked(row, 2)
    np.testing.assert_array_equal(full, [1, 4, 0, 3, 5, 6])
    np.testing.assert_array_equal(_ranked(row, 2, first), full[:first])
