"""Global descriptors: preprocessing, pooling, batching, global.h5 and its resume (tiny ViTs)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from reconstruct import paths, retrieval
from reconstruct.config import override
from reconstruct.errors import ConfigError, StaleOutputError
from reconstruct.models import dinov2
from reconstruct.models.dinov2 import DinoModel, preprocess, target_size
from reconstruct.retrieval import (
    RetrievalConfig,
    compute_global_descriptors,
    describe_batch,
    pool_tokens,
)
from reconstruct.storage import GLOBAL_SCHEMA, read_global_descriptors, read_header

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_model(backbone="vits14", seed=0) -> DinoModel:
    torch.manual_seed(seed)
    module = dinov2.build_model(backbone, **TINY)
    with torch.no_grad():  # make the layer scales matter, as in trained weights
        for block in module.blocks:
            block.ls1.gamma.fill_(0.5)
            block.ls2.gamma.fill_(0.5)
    return DinoModel(module, backbone, torch.device("cpu"), f"random-{seed}")


def write_images(folder, sizes) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"img_{i}.png"
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (5, 5), 0)
        cv2.imwrite(str(folder / name), image)
        names.append(name)
    return names


# ----------------------------------------------------------------------------- preprocessing


def test_target_size_keeps_aspect_and_rounds_to_patches():
    assert target_size(640, 480, 518) == (518, 392)  # 388.5 -> 392 = 28 * 14
    assert target_size(480, 640, 518) == (392, 518)
    assert target_size(1000, 1000, 336) == (336, 336)
    assert target_size(3000, 20, 336) == (336, 14)  # never below one patch
    assert target_size(100, 50, 224) == (224, 112)  # small images are upscaled
    for w, h in [(640, 480), (1234, 567), (33, 999)]:
        tw, th = target_size(w, h, 336)
        assert tw % 14 == 0 and th % 14 == 0 and max(tw, th) == 336


def test_preprocess_shape_dtype_and_normalisation():
    image = np.full((480, 640, 3), 255, np.uint8)
    x = preprocess(image, 518)
    assert x.shape == (3, 392, 518) and x.dtype == np.float32
    np.testing.assert_allclose(
        x[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-5
    )


def test_resolution_must_be_a_multiple_of_14():
    with pytest.raises(ValueError, match="use 504 or 518"):
        RetrievalConfig(resolution=512)
    with pytest.raises(ConfigError, match="multiple of 14"):
        override(RetrievalConfig(), {"resolution": 500})
    assert RetrievalConfig(resolution=518).resolution == 518


# ----------------------------------------------------------------------------- pooling


def test_pool_tokens_exact_values():
    # One image, CLS + 1 register + 3 patches, D = 2.
    tokens = torch.tensor([[[3.0, 4.0], [100.0, 100.0], [1.0, 0.0], [0.0, 2.0], [2.0, 1.0]]])
    cls = pool_tokens(tokens, 2, "cls")
    torch.testing.assert_close(cls, torch.tensor([[0.6, 0.8]]))
    mx = pool_tokens(tokens, 2, "max")  # the register's 100 is not a patch
    torch.testing.assert_close(mx, torch.tensor([[2.0, 2.0]]) / np.sqrt(8))
    gem = pool_tokens(tokens, 2, "gem", gem_p=1.0)  # p = 1: the mean (clamped at 0)
    torch.testing.assert_close(gem, torch.nn.functional.normalize(torch.tensor([[1.0, 1.0]])))
    gem3 = pool_tokens(tokens, 2, "gem", gem_p=3.0)
    raw = torch.tensor([[((1 + 1e-18 + 8) / 3) ** (1 / 3), ((1e-18 + 8 + 1) / 3) ** (1 / 3)]])
    torch.testing.assert_close(gem3, torch.nn.functional.normalize(raw))


@pytest.mark.parametrize("backbone", ["vits14", "vits14_reg"])
@pytest.mark.parametrize("pooling", ["max", "cls", "gem"])
def test_descriptor_shapes_for_each_pooling(backbone, pooling):
    model = tiny_model(backbone)
    batch = np.stack([preprocess(np.full((40, 60, 3), v, np.uint8), 56) for v in (10, 200)])
    desc = describe_batch(model, batch, pooling)
    assert desc.shape == (2, 64) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(desc[0], desc[1])


def test_registers_are_not_pooled():
    model = tiny_model("vits14_reg")
    assert model.num_prefix_tokens == 5
    x = np.stack([preprocess(np.full((56, 56, 3), 90, np.uint8), 56)])
    with torch.inference_mode():
        tokens = model.module.forward_features(torch.from_numpy(x))
    assert tokens.shape[1] == 5 + 16
    expected = torch.nn.functional.normalize(tokens[:, 5:].max(dim=1).values)
    np.testing.assert_allclose(describe_batch(model, x), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_and_single_give_the_same_descriptors():
    model = tiny_model("vits14")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    batch = np.stack([preprocess(im, 56) for im in images])
    together = describe_batch(model, batch)
    alone = np.concatenate([describe_batch(model, batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- global.h5


def test_global_h5_contents_and_mixed_sizes(tmp_path):
    sizes = [(64, 48), (64, 48), (48, 64), (64, 48), (70, 70)]
    names = write_images(tmp_path / "images", sizes)
    model = tiny_model()
    config = RetrievalConfig(backbone="vits14", resolution=56, batch_size=2)
    path, have, desc = compute_global_descriptors(
        tmp_path / "images", names, tmp_path / "out", config, model=model
    )
    assert path == tmp_path / "out" / paths.GLOBAL
    assert have == names and desc.shape == (5, 64) and desc.dtype == np.float32
    stored_names, stored = read_global_descriptors(path)
    assert stored_names == sorted(names)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    # Each descriptor equals the one computed alone (batching across sizes is per shape).
    for i, name in enumerate(names):
        image = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / name)), cv2.COLOR_BGR2RGB)
        alone = describe_batch(model, preprocess(image, 56)[None])[0]
        np.testing.assert_allclose(desc[i], alone, rtol=1e-4, atol=1e-5)
    header = read_header(path, GLOBAL_SCHEMA)
    assert header.config["backbone"] == "vits14" and header.config["pooling"] == "max"
    assert header.extra["weights_sha256"] == "random-0"


def test_resume_skips_done_images_and_hash_ignores_batch_size(tmp_path, monkeypatch):
    names = write_images(tmp_path / "images", [(64, 48)] * 4)
    model = tiny_model()
    config = RetrievalConfig(backbone="vits14", resolution=56)
    compute_global_descriptors(
        tmp_path / "images", names[:2], tmp_path / "out", config, model=model
    )

    calls = []

    def counting(model, batch, *args):
        calls.append(len(batch))
        return describe_batch(model, batch, *args)

    monkeypatch.setattr(retrieval, "describe_batch", counting)
    again = override(config, {"batch_size": 3, "workers": 0})
    _, have, desc = compute_global_descriptors(
        tmp_path / "images", names, tmp_path / "out", again, model=model
    )
    assert sum(calls) == 2 and have == names and desc.shape == (4, 64)


def test_other_descriptor_settings_are_refused_unless_overwrite(tmp_path):
    names = write_images(tmp_path / "images", [(64, 48)] * 2)
    compute_global_descriptors(
        tmp_path / "images",
        names,
        tmp_path / "out",
        RetrievalConfig(backbone="vits14", resolution=56),
        model=tiny_model(),
    )
    cls_config = RetrievalConfig(backbone="vits14", resolution=56, pooling="cls")
    with pytest.raises(StaleOutputError, match="--overwrite"):
        compute_global_descriptors(
            tmp_path / "images", names, tmp_path / "out", cls_config, model=tiny_model()
        )
    other_weights = tiny_model(seed=1)
    with pytest.raises(StaleOutputError):
        compute_global_descriptors(
            tmp_path / "images",
            names,
            tmp_path / "out",
            RetrievalConfig(backbone="vits14", resolution=56),
            model=other_weights,
        )
    _, have, _ = compute_global_descriptors(
        tmp_path / "images",
        names,
        tmp_path / "out",
        cls_config,
        model=tiny_model(),
        overwrite=True,
    )
    assert have == names


def test_unreadable_images_are_left_out_with_a_warning(tmp_path, caplog):
    names = write_images(tmp_path / "images", [(64, 48)] * 3)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _, have, desc = compute_global_descriptors(
        tmp_path / "images",
        [*names, "broken.jpg"],
        tmp_path / "out",
        RetrievalConfig(backbone="vits14", resolution=56),
        model=tiny_model(),
    )
    assert have == names and desc.shape == (3, 64)
    assert "broken.jpg" in caplog.text
