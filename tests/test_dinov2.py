"""DINOv2 construction, official-checkpoint conversion and weight resolution (no network)."""

from __future__ import annotations

import dataclasses
import functools
import io
from pathlib import Path

import pytest
import torch

from reconstruct.config import override
from reconstruct.errors import ConfigError, ModelWeightsError
from reconstruct.models import dinov2
from reconstruct.pairs import PairsConfig
from reconstruct.retrieval import ALTERNATIVE, SETTING

resolve = functools.partial(dinov2.resolve_weights, setting=SETTING, alternative=ALTERNATIVE)
"""Weight resolution as retrieval calls it."""

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_GIANT = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # SwiGLU needs an even hidden size


pytestmark = pytest.mark.usefixtures("caches")


def randomized(model, seed: int = 0):
    """Fill every parameter with noise so layer scales and norms all matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def tiny_source(backbone: str, seed: int = 0):
    kwargs = TINY_GIANT if backbone.startswith("vitg") else TINY
    return randomized(dinov2.build_model(backbone, **kwargs), seed)


def features(model, size=(56, 70)) -> torch.Tensor:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model.forward_features(x)


def save_meta_checkpoint(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dinov2.to_meta_layout(model), path)
    return path


# ----------------------------------------------------------------------------- model table


def test_backbone_table_matches_timm_and_meta_names():
    import timm

    assert set(dinov2.BACKBONES) == {f"vit{s}14{r}" for s in "sblg" for r in ("", "_reg")}
    for spec in dinov2.BACKBONES.values():
        assert timm.is_model(spec.timm_name), spec.timm_name
        assert spec.url.endswith("/" + spec.filename)
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/dinov2/")
        assert ("_reg4_" in spec.filename) == bool(spec.registers)
    assert dinov2.BACKBONES["vits14_reg"].filename == "dinov2_vits14_reg4_pretrain.pth"
    assert dinov2.BACKBONES["vitg14"].timm_name == "vit_giant_patch14_dinov2"


def test_build_model_is_dynamic_size_and_registers():
    plain = dinov2.build_model("vits14", **TINY)
    reg = dinov2.build_model("vits14_reg", **TINY)
    assert plain.num_prefix_tokens == 1 and reg.num_prefix_tokens == 5
    assert plain.pos_embed.shape[1] == 1 + 37 * 37  # same grid as the official checkpoints
    for model in (plain, reg):
        out = features(model, (42, 98))  # any multiple of 14
        assert out.shape == (2, model.num_prefix_tokens + 3 * 7, 64)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("backbone", ["vits14", "vits14_reg", "vitg14_reg"])
def test_official_layout_checkpoint_loads_and_reproduces_the_model(tmp_path, backbone):
    source = tiny_source(backbone)
    state = dinov2.to_meta_layout(source)
    assert "mask_token" in state and "patch_embed.proj.weight" in state
    assert ("register_tokens" in state) == backbone.endswith("_reg")
    assert state["pos_embed"].shape[1] == 1 + 37 * 37
    if backbone.startswith("vitg"):
        assert "blocks.0.mlp.w12.weight" in state and "blocks.0.mlp.w3.weight" in state
    else:
        assert "blocks.0.ls1.gamma" in state and "blocks.1.attn.qkv.weight" in state
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    kwargs = TINY_GIANT if backbone.startswith("vitg") else TINY
    loaded = dinov2.load_backbone(backbone, path, **kwargs)
    torch.testing.assert_close(features(loaded), features(source), atol=1e-5, rtol=1e-5)


def test_block_chunked_official_layout_loads(tmp_path):
    source = tiny_source("vits14")
    state = dinov2.to_meta_layout(source)
    chunked = {
        k.replace("blocks.1.", "blocks.1.1.").replace("blocks.0.", "blocks.0.0."): v
        for k, v in state.items()
    }
    torch.save(chunked, tmp_path / "c.pth")
    loaded = dinov2.load_backbone("vits14", tmp_path / "c.pth", **TINY)
    torch.testing.assert_close(features(loaded), features(source), atol=1e-5, rtol=1e-5)


def test_timm_safetensors_layout_loads(tmp_path):
    from safetensors.torch import save_file

    source = tiny_source("vits14_reg", seed=3)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "m.safetensors"
    )
    loaded = dinov2.load_backbone("vits14_reg", tmp_path / "m.safetensors", **TINY)
    torch.testing.assert_close(features(loaded), features(source))


def test_corrupt_checkpoint_is_a_typed_error(tmp_path):
    good = save_meta_checkpoint(tiny_source("vits14"), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    for path in (truncated, garbage, bad_st):
        with pytest.raises(ModelWeightsError, match="corrupt or not a checkpoint"):
            dinov2.load_backbone("vits14", path, **TINY)
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pth")
    with pytest.raises(ModelWeightsError, match="holds no tensors"):
        dinov2.load_backbone("vits14", tmp_path / "no_tensors.pth", **TINY)


def test_checkpoint_of_another_backbone_is_a_typed_error(tmp_path):
    reg = save_meta_checkpoint(tiny_source("vits14_reg"), tmp_path / "reg.pth")
    with pytest.raises(ModelWeightsError, match="does not fit backbone 'vits14'.*with registers"):
        dinov2.load_backbone("vits14", reg, **TINY)
    wide = save_meta_checkpoint(
        randomized(dinov2.build_model("vits14", depth=2, embed_dim=32, num_heads=2)),
        tmp_path / "wide.pth",
    )
    with pytest.raises(ModelWeightsError, match="does not fit backbone 'vits14'.*embed_dim 32"):
        dinov2.load_backbone("vits14", wide, **TINY)


# ----------------------------------------------------------------------------- resolution


def test_explicit_path_comes_first(tmp_path, caches):
    cached = save_meta_checkpoint(tiny_source("vits14"), caches / "dinov2_vits14_pretrain.pth")
    explicit = save_meta_checkpoint(tiny_source("vits14"), tmp_path / "mine.pth")
    assert resolve("vits14", explicit) == explicit
    assert resolve("vits14") == cached
    with pytest.raises(ModelWeightsError, match="does not exist"):
        resolve("vits14", tmp_path / "missing.pth")


def test_cache_then_torch_hub_then_hf_hub(tmp_path, caches):
    spec = dinov2.BACKBONES["vitb14_reg"]
    assert dinov2.find_cached(spec) is None
    hf = tmp_path / "hf" / "hub" / f"models--timm--{spec.timm_name}.lvd142m" / "snapshots" / "abc"
    hf.mkdir(parents=True)
    (hf / "model.safetensors").write_bytes(b"x")
    assert dinov2.find_cached(spec) == hf / "model.safetensors"
    hub = tmp_path / "torch" / "hub" / "checkpoints" / spec.filename
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert dinov2.find_cached(spec) == hub
    ours = caches / f"{spec.timm_name}.safetensors"
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"x")
    assert dinov2.find_cached(spec) == ours


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def test_download_goes_to_the_cache_and_loads(tmp_path, caches, monkeypatch):
    source = tiny_source("vits14")
    payload = save_meta_checkpoint(source, tmp_path / "served.pth").read_bytes()
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(dinov2, "_urlopen", fake_urlopen)
    path = resolve("vits14")
    assert path == caches / "dinov2_vits14_pretrain.pth"
    assert urls == [dinov2.BACKBONES["vits14"].url]
    assert not list(caches.glob(".*.part"))
    loaded = dinov2.load_backbone("vits14", path, **TINY)
    torch.testing.assert_close(features(loaded), features(source), atol=1e-5, rtol=1e-5)
    # The next resolution finds the cached file without any download.
    monkeypatch.setattr(dinov2, "_urlopen", lambda *a: pytest.fail("downloaded twice"))
    assert resolve("vits14") == path


@pytest.mark.parametrize("problem", ["truncated", "garbage"])
def test_bad_download_leaves_nothing_in_the_cache(tmp_path, caches, monkeypatch, problem):
    payload = save_meta_checkpoint(tiny_source("vits14"), tmp_path / "served.pth").read_bytes()
    if problem == "truncated":
        response = FakeResponse(payload[:1000], length=len(payload))
    else:
        response = FakeResponse(b"<html>not found</html>")
    monkeypatch.setattr(dinov2, "_urlopen", lambda url, timeout: response)
    with pytest.raises(ModelWeightsError, match="pairs.strategy=exhaustive"):
        resolve("vits14")
    assert not any(caches.iterdir())


def test_no_network_is_a_typed_error_with_the_fix(caches, monkeypatch):
    # No wall clock: one attempt, through the real opener (sockets are blocked in tests), with
    # a bounded timeout, so an unreachable host cannot hang the run.
    calls = []
    real = dinov2._urlopen
    monkeypatch.setattr(
        dinov2, "_urlopen", lambda url, timeout: calls.append(timeout) or real(url, timeout)
    )
    with pytest.raises(ModelWeightsError) as info:
        resolve("vitl14_reg")
    assert len(calls) == 1 and 0 < calls[0] <= 60
    message = str(info.value)
    spec = dinov2.BACKBONES["vitl14_reg"]
    assert "'vitl14_reg'" in message and spec.timm_name in message
    assert spec.url in message
    assert str(caches) in message
    assert "--set pairs.strategy=exhaustive" in message
    assert "--set pairs.retrieval.weights=PATH" in message
    assert "download failed" in message


def test_download_off_never_touches_the_network(monkeypatch):
    monkeypatch.setattr(dinov2, "_urlopen", lambda *a: pytest.fail("tried to download"))
    with pytest.raises(ModelWeightsError, match="downloads are off"):
        resolve("vits14", download=False)


# ----------------------------------------------------------------------------- listing, identity


def test_list_weights_shows_what_is_present(caches):
    path = save_meta_checkpoint(tiny_source("vits14"), caches / "dinov2_vits14_pretrain.pth")
    status = {s.backbone: s for s in dinov2.list_weights()}
    assert status["vits14"].path == path and status["vits14"].size_bytes == path.stat().st_size
    assert status["vitb14"].path is None
    assert status["vitb14"].expected_path == caches / "dinov2_vitb14_pretrain.pth"
    table = dinov2.format_weights_table()
    assert str(caches) in table
    assert str(path) in table
    assert dinov2.BACKBONES["vitg14_reg"].url in table
    assert len([line for line in table.splitlines() if "missing" in line]) == 7


def test_weights_sha256_is_cached_by_size_and_mtime(tmp_path, caches):
    import hashlib

    f = tmp_path / "w.pth"
    f.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(f.read_bytes()).hexdigest()
    assert dinov2.weights_sha256(f) == expected
    assert (caches / "sha256.json").is_file()
    assert dinov2.weights_sha256(f) == expected
    f.write_bytes(b"abcd" * 1000)
    assert dinov2.weights_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_weights_field_is_settable_and_unhashed():
    from reconstruct.config import config_hash

    base = PairsConfig()
    cfg = override(base, {"retrieval": {"weights": "~/w.pth", "download": "false"}})
    assert cfg.retrieval.weights == Path("~/w.pth").expanduser()
    assert cfg.retrieval.download is False
    assert config_hash(cfg.retrieval) == config_hash(base.retrieval)
    with pytest.raises(ConfigError, match="backbone"):
        override(base, {"retrieval": {"backbone": "vith14"}})


def test_unknown_backbone_is_a_typed_error():
    with pytest.raises(ModelWeightsError, match="unknown DINOv2 backbone"):
        dinov2.get_spec("resnet50")


def test_error_messages_name_the_callers_settings(caches):
    from reconstruct.models.patch_features import PatchFeaturesConfig, resolve_patch_weights

    cfg = override(PatchFeaturesConfig(), {"download": False})
    with pytest.raises(ModelWeightsError) as info:
        resolve_patch_weights(cfg)
    msg = str(info.value)
    assert "keypoints.patch.download" in msg and "keypoints.patch.weights=PATH" in msg
    assert "matching.matcher=lightglue" in msg
    assert "pairs." not in msg
    with pytest.raises(ModelWeightsError, match=r"pairs\.retrieval\.download"):
        resolve("vitb14", download=False)


def test_tracker_errors_name_the_tracking_settings(caches):
    from reconstruct.tracking import PatchTracker, TrackingConfig

    with pytest.raises(ModelWeightsError) as info:
        PatchTracker(TrackingConfig(method="dinov2", download=False))
    msg = str(info.value)
    assert "tracking.download" in msg and "--set tracking.weights=PATH" in msg
    assert "--method flow" in msg
    assert "pairs." not in msg and "keypoints." not in msg


def test_load_errors_name_the_callers_settings(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    from reconstruct.tracking import TrackingConfig

    def load(path):
        config = TrackingConfig(method="dinov2", backbone="vits14", weights=path)
        return dinov2.load_model(config, setting="tracking", alternative="--method flow")

    with pytest.raises(ModelWeightsError, match=r"--set tracking\.weights=PATH") as info:
        load(corrupt)
    assert "pairs." not in str(info.value)
    reg = save_meta_checkpoint(tiny_source("vits14_reg"), tmp_path / "reg.pth")
    with pytest.raises(ModelWeightsError, match=r"tracking\.backbone") as info:
        load(reg)
    assert "pairs." not in str(info.value)


def test_load_model_loads_each_file_once(tmp_path, monkeypatch):
    from reconstruct.models.patch_features import PatchFeaturesConfig

    path = save_meta_checkpoint(tiny_source("vits14"), tmp_path / "w.pth")
    loads = []
    real = dinov2.load_backbone

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **TINY, **kwargs)

    monkeypatch.setattr(dinov2, "load_backbone", counting)
    dinov2.clear_model_cache()
    try:
        config = PatchFeaturesConfig(backbone="vits14", weights=path)
        first = dinov2.load_model(config, setting="a", alternative="b")
        # another user of the same file and device (other settings) gets the same model
        again = dinov2.load_model(
            dataclasses.replace(config, layer=3), setting="c", alternative="d"
        )
        assert again is first and len(loads) == 1
        assert first.weights_id == dinov2.weights_sha256(path) and first.num_prefix_tokens == 1
        other = save_meta_checkpoint(tiny_source("vits14", seed=1), tmp_path / "w2.pth")
        second = dinov2.load_model(PatchFeaturesConfig(weights=other), setting="a", alternative="b")
        assert second is not first and len(loads) == 2
        assert second.weights_id != first.weights_id
    finally:
        dinov2.clear_model_cache()


def test_models_do_not_import_stage_modules():
    import ast

    for path in Path(dinov2.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module in ("config", "errors", "storage", "images", "device"), (
                    path.name,
                    node.module,
                )
