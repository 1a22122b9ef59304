"""The fused cross-attention equals scm-lightglue's own block (outputs and matches)."""

import pytest
import torch

from reconstruct.keypoints import KeypointsConfig, extract_keypoints
from reconstruct.matching import LightGlueMatcher, MatchingConfig
from reconstruct.models.lightglue_fused import FusedCrossAttention, use_fused_cross_attention
from reconstruct.storage import FeaturesReader


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
    assert all(isinstance(t.cross_attn, FusedCrossAttention) for t in matcher.model.transformers)


@pytest.fixture(scope="module")
def features(synthetic_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    names = ["view_000.jpg", "view_001.jpg", "view_002.jpg"]
    cfg = KeypointsConfig(max_keypoints=512, resize=640)
    return extract_keypoints(synthetic_scene.image_dir, out, cfg, image_names=names), names


def test_fused_matches_equal_the_library_matches(features):
    path, names = features
    matcher = LightGlueMatcher(MatchingConfig(), torch.device("cpu"))
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
