"""The fused cross-attention equals scm-lightglue's own block (outputs and matches)."""

import pytest
import torch

from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import (
    LightGlueMatcher,
    MatchingConfig,
    lightglue_precision,
    match_pairs,
)
from reconstruct.models.lightglue_cpu import (
    BFloat16Layer,
    FusedCrossAttention,
    cpu_has_bfloat16_units,
    use_bfloat16_layers,
    use_fused_cross_attention,
)
from reconstruct.storage import MATCHES_SCHEMA, FeaturesReader, read_header, write_pairs


def _lightglue():
    from scm_lightglue import LightGlue

    return LightGlue(features="aliked").eval()


def test_fused_block_equals_the_library_block():
    block = _lightglue().transformers[0].cross_attn
    fused = FusedCrossAttention(block)
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(1, 37, 256, generator=gen), torch.randn(1, 53, 256, generator=gen)
    with torch.inference_mode():
        want, got = block(x0, x1), fused(x0, x1)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # a masked (padded) call is the block's own
    mask = torch.ones(1, 1, 37, 53, dtype=torch.bool)
    with torch.inference_mode():
        for w, g in zip(block(x0, x1, mask), fused(x0, x1, mask), strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_wrapping_is_idempotent_and_only_off_cuda():
    model = use_fused_cross_attention(use_fused_cross_attention(_lightglue()))
    for layer in model.transformers:
        assert isinstance(layer.cross_attn, FusedCrossAttention)
        assert not isinstance(layer.cross_attn.block, FusedCrossAttention)
    matcher = LightGlueMatcher(MatchingConfig(), torch.device("cpu"))
    layers = [t.layer if isinstance(t, BFloat16Layer) else t for t in matcher.model.transformers]
    assert all(isinstance(t.cross_attn, FusedCrossAttention) for t in layers)
    model = use_bfloat16_layers(use_bfloat16_layers(_lightglue()))
    assert all(
        isinstance(t, BFloat16Layer) and not isinstance(t.layer, BFloat16Layer)
        for t in model.transformers
    )


def test_bfloat16_layer_equals_autocast_of_the_float32_layer():
    import copy

    layer = use_fused_cross_attention(_lightglue()).transformers[0]
    reference = copy.deepcopy(layer)
    wrapped = BFloat16Layer(layer)
    assert layer.self_attn.Wqkv.weight.dtype == torch.bfloat16
    assert layer.self_attn.ffn[1].weight.dtype == torch.float32  # the layer norm
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(1, 37, 256, generator=gen), torch.randn(1, 53, 256, generator=gen)
    enc0, enc1 = (
        torch.randn(2, 1, 1, 37, 64, generator=gen),
        torch.randn(2, 1, 1, 53, 64, generator=gen),
    )
    with torch.inference_mode():
        got = wrapped(x0, x1, enc0, enc1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = reference(x0, x1, enc0, enc1)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w.float(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def features(synthetic_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    names = ["view_000.jpg", "view_001.jpg", "view_002.jpg"]
    cfg = KeypointsConfig(max_keypoints=512, resize=640)
    return extract_keypoints(synthetic_scene.image_dir, out, cfg, image_names=names), names


def test_fused_matches_equal_the_library_matches(features):
    path, names = features
    matcher = LightGlueMatcher(MatchingConfig(mixed_precision=False), torch.device("cpu"))
    assert matcher.precision == "float32"
    with FeaturesReader(path) as r:
        data = {n: matcher.to_input(r.read(n)) for n in names}
    fused = [matcher(data[a], data[b])[0] for a, b in [names[:2], names[1:]]]
    for layer in matcher.model.transformers:  # back to the library's blocks
        layer.cross_attn = layer.cross_attn.block
    plain = [matcher(data[a], data[b])[0] for a, b in [names[:2], names[1:]]]
    for f, p in zip(fused, plain, strict=True):
        a, b = set(map(tuple, f.tolist())), set(map(tuple, p.tolist()))
        assert len(a) > 100
        assert len(a & b) >= 0.99 * max(len(a), len(b))


def test_bfloat16_units_are_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_bfloat16_units(cpuinfo) is False
    assert cpu_has_bfloat16_units(tmp_path / "missing") is False
    amx = tmp_path / "cpuinfo-amx"  # another file: the answer is cached per path
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert cpu_has_bfloat16_units(amx) is torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_precision_follows_the_setting_and_is_recorded(features, tmp_path):
    path, names = features
    pairs = write_pairs(tmp_path / "pairs.txt", [tuple(names[:2])])
    expected = "bfloat16" if cpu_has_bfloat16_units() else "float32"
    assert lightglue_precision(MatchingConfig(), torch.device("cpu")) == expected
    assert lightglue_precision(MatchingConfig(mixed_precision=False), torch.device("cpu")) == (
        "float32"
    )
    assert lightglue_precision(MatchingConfig(), torch.device("cuda")) == "float16"
    out = match_pairs(pairs, path, tmp_path / "a", MatchingConfig(), device="cpu")
    assert read_header(out, MATCHES_SCHEMA).extra["precision"] == expected


@pytest.mark.skipif(not cpu_has_bfloat16_units(), reason="this CPU has no bfloat16 units")
def test_bfloat16_matches_are_those_of_float32(features):
    path, names = features
    fast = LightGlueMatcher(MatchingConfig(), torch.device("cpu"))
    exact = LightGlueMatcher(MatchingConfig(mixed_precision=False), torch.device("cpu"))
    assert fast.precision == "bfloat16"
    with FeaturesReader(path) as r:
        data = {n: exact.to_input(r.read(n)) for n in names}
    for a, b in [names[:2], names[1:]]:
        x = set(map(tuple, fast(data[a], data[b])[0].tolist()))
        y = set(map(tuple, exact(data[a], data[b])[0].tolist()))
        assert len(y) > 100
        assert len(x & y) >= 0.95 * max(len(x), len(y))  # 98.5% on 20 sacre_coeur pairs
