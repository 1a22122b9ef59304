"""DINOv2 backbones built by timm, and where their weights come from.

The model code is timm's `VisionTransformer` (``vit_*_patch14_dinov2`` and, with four register
tokens, ``vit_*_patch14_reg4_dinov2``), created with ``dynamic_img_size=True`` so any input whose
sides are multiples of 14 works. timm's own ``checkpoint_filter_fn`` converts the official Meta
checkpoints (``dinov2_vits14_pretrain.pth``: ``mask_token``, ``register_tokens``, ``mlp.w12`` of
the giant model) to its layout; timm's safetensors files from the Hugging Face hub are already in
that layout. Both go through the same :func:`load_backbone`.

Weights are resolved in this order (:func:`resolve_weights`):

1. an explicit file (``--set pairs.retrieval.weights=PATH``, or the caller's own setting);
2. the cache: ``$RECONSTRUCT_CACHE/weights/`` (default ``~/.cache/reconstruct/weights/``), then
   torch hub's checkpoint folder and the Hugging Face hub cache, read-only;
3. a download of the official file into the cache, with a progress bar (only when allowed);
4. a :class:`~reconstruct.errors.ModelWeightsError` naming the model, the URL, where to put the
   file, the caller's setting and the caller's way around the model.

:func:`load_model` is the one way to get a ready backbone (a :class:`DinoModel`): retrieval, the
patch features and the tracker all call it with their own setting name (``pairs.retrieval``,
``keypoints.patch``, ``tracking``), and a backbone is loaded once per process for each weights
file and device. Nothing here downloads or builds a model at import; torch and timm are
imported when needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import ModelWeightsError

logger = logging.getLogger(__name__)

PATCH_SIZE = 14


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

Backbone = Literal[
    "vits14",
    "vits14_reg",
    "vitb14",
    "vitb14_reg",
    "vitl14",
    "vitl14_reg",
    "vitg14",
    "vitg14_reg",
]


def target_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the long side at `resolution` and both sides multiples of 14."""
    scale = resolution / max(width, height)
    w = max(PATCH_SIZE, round(width * scale / PATCH_SIZE) * PATCH_SIZE)
    h = max(PATCH_SIZE, round(height * scale / PATCH_SIZE) * PATCH_SIZE)
    return int(w), int(h)


def preprocess(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, h, w), resized and ImageNet-normalised."""
    import cv2

    height, width = image.shape[:2]
    w, h = target_size(width, height, resolution)
    shrink = w * h < width * height
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    x = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def check_resolution(resolution: int) -> None:
    """Raise ValueError (a ConfigError through config.override) unless `resolution` is a
    multiple of the patch size and at least two patches."""
    if resolution < 2 * PATCH_SIZE or resolution % PATCH_SIZE:
        lo = max(2, resolution // PATCH_SIZE) * PATCH_SIZE
        raise ValueError(
            f"resolution must be a multiple of {PATCH_SIZE} and at least {2 * PATCH_SIZE}, "
            f"got {resolution}; use {lo} or {lo + PATCH_SIZE}"
        )


PRETRAIN_SIZE = 518  # DINOv2's last training resolution: 37 x 37 patches, the pos_embed grid
DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a download is abandoned


@dataclass(frozen=True)
class BackboneSpec:
    """One DINOv2 backbone: its timm model and its official weights."""

    name: str  # our name, e.g. "vits14_reg"
    timm_name: str
    filename: str  # the official Meta file name
    embed_dim: int
    depth: int
    registers: int
    url: str  # the official Meta download
    approx_mb: int  # size of the official file, for messages
    sha256: str | None = None  # Meta publishes no checksums; set when one is verified

    @property
    def hf_url(self) -> str:
        """timm's safetensors copy on the Hugging Face hub (an alternative download)."""
        return (
            f"https://huggingface.co/timm/{self.timm_name}.lvd142m/resolve/main/model.safetensors"
        )

    @property
    def cache_names(self) -> tuple[str, ...]:
        """File names looked for in the cache folder, in order."""
        return (
            self.filename,
            f"{self.timm_name}.safetensors",
            f"{self.timm_name}.lvd142m.safetensors",
        )


def _spec(size: str, dim: int, depth: int, mb: int, registers: bool) -> BackboneSpec:
    timm_size = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    reg = "_reg4" if registers else ""
    filename = f"dinov2_vit{size}14{reg}_pretrain.pth"
    return BackboneSpec(
        name=f"vit{size}14{'_reg' if registers else ''}",
        timm_name=f"vit_{timm_size}_patch14{reg}_dinov2",
        filename=filename,
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{filename}",
        embed_dim=dim,
        depth=depth,
        registers=4 if registers else 0,
        approx_mb=mb,
    )


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for size, dim, depth, mb in (
        ("s", 384, 12, 85),
        ("b", 768, 12, 330),
        ("l", 1024, 24, 1160),
        ("g", 1536, 40, 4230),
    )
    for s in (_spec(size, dim, depth, mb, False), _spec(size, dim, depth, mb, True))
}


def get_spec(backbone: str) -> BackboneSpec:
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise ModelWeightsError(
            f"unknown DINOv2 backbone {backbone!r}; choose one of {', '.join(BACKBONES)}"
        ) from None


# ----------------------------------------------------------------------------- where weights live


def weights_dir() -> Path:
    """Our weights cache: ``$RECONSTRUCT_CACHE/weights`` or ``~/.cache/reconstruct/weights``."""
    root = os.environ.get("RECONSTRUCT_CACHE")
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "reconstruct" / "weights"


def _torch_hub_checkpoints() -> Path:
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        return Path(torch_home).expanduser() / "hub" / "checkpoints"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torch" / "hub" / "checkpoints"


def _hf_hub_snapshots(spec: BackboneSpec) -> list[Path]:
    hf_home = os.environ.get("HF_HOME")
    hub = (
        Path(os.environ["HF_HUB_CACHE"]).expanduser()
        if os.environ.get("HF_HUB_CACHE")
        else (Path(hf_home).expanduser() if hf_home else Path.home() / ".cache" / "huggingface")
        / "hub"
    )
    folder = hub / f"models--timm--{spec.timm_name}.lvd142m" / "snapshots"
    return sorted(folder.glob("*/model.safetensors")) if folder.is_dir() else []


def cache_candidates(spec: BackboneSpec) -> list[Path]:
    """Every place the cache step looks, in order (our cache first)."""
    ours = weights_dir()
    out = [ours / n for n in spec.cache_names]
    out.append(_torch_hub_checkpoints() / spec.filename)
    out.extend(_hf_hub_snapshots(spec))
    return out


def find_cached(spec: BackboneSpec) -> Path | None:
    """The first existing cached weights file of `spec`, if any."""
    for p in cache_candidates(spec):
        if p.is_file():
            return p
    return None


def _missing_message(spec: BackboneSpec, reason: str, setting: str, alternative: str) -> str:
    cache = weights_dir()
    looked = ", ".join(str(p) for p in cache_candidates(spec)[:2]) + ", torch hub and HF hub caches"
    return (
        f"DINOv2 weights for backbone {spec.name!r} (timm {spec.timm_name}) are not available: "
        f"{reason}. Looked in {looked}.\n"
        f"Fix it with one of:\n"
        f"  - download {spec.url} (about {spec.approx_mb} MB) and put it in {cache}/ "
        f"(or anywhere, and pass --set {setting}.weights=PATH); timm's copy "
        f"{spec.hf_url} works too;\n"
        f"  - choose a smaller backbone whose file you have (`reconstruct weights list`);\n"
        f"  - or {alternative}."
    )


def resolve_weights(
    backbone: str,
    explicit: Path | None = None,
    *,
    download: bool = True,
    setting: str,
    alternative: str,
) -> Path:
    """The weights file to use for `backbone`: explicit path, cache, download, or a typed error.

    `setting` is the caller's settings prefix (``pairs.retrieval``, ``keypoints.patch``,
    ``tracking``: the error messages name ``<setting>.weights`` and ``<setting>.download``) and
    `alternative` the way around the model, both named in the error messages."""
    spec = get_spec(backbone)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ModelWeightsError(
                f"weights file {path} ({setting}.weights) does not exist; give the path of "
                f"{spec.filename} (official, {spec.url}) or of timm's model.safetensors "
                f"({spec.hf_url}), or unset it to use the cache ({weights_dir()}/)."
            )
        return path
    cached = find_cached(spec)
    if cached is not None:
        logger.debug("Using cached %s weights %s", spec.name, cached)
        return cached
    if not download:
        raise ModelWeightsError(
            _missing_message(
                spec,
                f"not in the cache and downloads are off ({setting}.download)",
                setting,
                alternative,
            )
        )
    return download_weights(spec, setting=setting, alternative=alternative)


# ----------------------------------------------------------------------------- download


def _urlopen(url: str, timeout: float):
    """Open `url` for reading (a seam for tests, which serve files from memory)."""
    request = urllib.request.Request(url, headers={"User-Agent": "reconstruct"})
    return urllib.request.urlopen(request, timeout=timeout)  # our fixed https URLs only


def download_weights(
    spec: BackboneSpec,
    dest_dir: Path | None = None,
    *,
    setting: str,
    alternative: str,
) -> Path:
    """Download the official weights of `spec` into the cache with a progress bar.

    The file is written under a temporary name, checked (size, checksum when known, and that it
    loads as a checkpoint) and only then renamed, so an interrupted or corrupt download never
    lands in the cache. Any failure is a ModelWeightsError that says how to get the file.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else weights_dir()
    dest = dest_dir / spec.filename
    tmp = dest_dir / f".{spec.filename}.{os.getpid()}.part"
    logger.info("Downloading %s weights from %s to %s", spec.name, spec.url, dest)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        written, total, sha = _stream_to_file(spec.url, tmp, f"download {spec.filename}")
        problem = _download_problem(spec, tmp, written, total, sha, setting)
        if problem:
            raise ModelWeightsError(_missing_message(spec, problem, setting, alternative))
        os.replace(tmp, dest)
    except ModelWeightsError:
        tmp.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as e:  # URLError, timeouts, refused sockets, disk full
        tmp.unlink(missing_ok=True)
        raise ModelWeightsError(
            _missing_message(spec, f"the download failed ({e})", setting, alternative)
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remember_sha256(dest, sha)
    logger.info("Saved %s (%.0f MB, sha256 %s)", dest, written / 2**20, sha)
    return dest


def _stream_to_file(url: str, path: Path, desc: str) -> tuple[int, int | None, str]:
    """Write the body of `url` to `path` with a progress bar; returns (bytes written, the
    announced Content-Length or None, SHA-256 of what was written)."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    written = 0
    with _urlopen(url, DOWNLOAD_TIMEOUT) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            open(path, "wb") as f,
            tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar,
        ):
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    return written, total, digest.hexdigest()


def _download_problem(
    spec: BackboneSpec, path: Path, written: int, total: int | None, sha: str, setting: str
) -> str | None:
    """What is wrong with a downloaded file (truncated, wrong checksum, not a checkpoint), or
    None when it can go into the cache."""
    if total is not None and written != total:
        return f"the download stopped after {written} of {total} bytes"
    if spec.sha256 and sha != spec.sha256:
        return f"the download has SHA-256 {sha}, expected {spec.sha256}"
    try:
        read_state_dict(path, setting=setting)
    except ModelWeightsError as e:
        return f"the downloaded file is not a checkpoint ({e})"
    return None


# ----------------------------------------------------------------------------- identity


def _sha_cache_path() -> Path:
    return weights_dir() / "sha256.json"


def _file_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember_sha256(path: Path, sha: str) -> None:
    from ..storage import atomic_write_json

    cache = _sha_cache_path()
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
        known[str(path.resolve())] = {**_file_stamp(path), "sha256": sha}
        atomic_write_json(cache, known)
    except (OSError, ValueError):
        pass  # a read-only cache only costs re-hashing next time


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file: its identity in the ``global.h5`` config hash.

    Remembered in ``<cache>/sha256.json`` (keyed by path, size and mtime) so large files are
    hashed once.
    """
    path = Path(path)
    try:
        known = json.loads(_sha_cache_path().read_text())
        entry = known.get(str(path.resolve()))
        if entry and {k: entry.get(k) for k in ("size", "mtime_ns")} == _file_stamp(path):
            return str(entry["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    except OSError as e:
        raise ModelWeightsError(f"cannot read weights file {path}: {e}") from None
    sha = digest.hexdigest()
    _remember_sha256(path, sha)
    return sha


# ----------------------------------------------------------------------------- model


def build_model(backbone: str, **overrides: Any):
    """timm's DINOv2 ViT for `backbone`, randomly initialised, in eval mode; never downloads.

    `overrides` go to ``timm.create_model`` (tests build tiny ViTs of the same class with
    ``depth=2, embed_dim=64, num_heads=2``).
    """
    import timm

    spec = get_spec(backbone)
    kwargs: dict[str, Any] = {
        "pretrained": False,
        "num_classes": 0,
        "dynamic_img_size": True,
        "img_size": PRETRAIN_SIZE,
    }
    kwargs.update(overrides)
    return timm.create_model(spec.timm_name, **kwargs).eval()


def _weights_hint(setting: str | None) -> str:
    if setting is None:
        return "pass another weights file"
    return f"pass another file with --set {setting}.weights=PATH"


def read_state_dict(path: Path, *, setting: str | None = None) -> dict[str, Any]:
    """Tensors of a checkpoint file (.pth/.pt/.bin through torch, .safetensors), on the CPU.

    `setting` (the caller's settings prefix) is named in the error messages."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors" or _is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelWeightsError(f"weights file {path} does not exist") from None
    except Exception as e:  # pickle, zip, safetensors and torch errors alike
        raise ModelWeightsError(
            f"weights file {path} is corrupt or not a checkpoint ({type(e).__name__}: {e}); "
            f"delete it and download it again, or {_weights_hint(setting)}"
        ) from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "teacher"):
            if key in state and isinstance(state[key], dict) and not _has_tensors(state):
                state = state[key]
    if not isinstance(state, dict) or not _has_tensors(state):
        raise ModelWeightsError(
            f"weights file {path} holds no tensors (found {type(state).__name__}); it is not a "
            "DINOv2 checkpoint"
        )
    return state


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _has_tensors(state: dict) -> bool:
    import torch

    return any(isinstance(v, torch.Tensor) for v in state.values())


def describe_state_dict(state: dict[str, Any]) -> str:
    """A guess of which DINOv2 a state dict holds, for error messages."""
    w = state.get("patch_embed.proj.weight")
    if w is None or getattr(w, "ndim", 0) != 4:
        return "not a DINOv2/ViT checkpoint (no patch_embed.proj.weight)"
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    registers = "register_tokens" in state or "reg_token" in state
    guess = [
        s.name
        for s in BACKBONES.values()
        if s.embed_dim == w.shape[0] and s.depth == len(blocks) and bool(s.registers) == registers
    ]
    what = f"embed_dim {w.shape[0]}, {len(blocks)} blocks, patch {w.shape[-1]}, " + (
        "with registers" if registers else "no registers"
    )
    return what + (f" (looks like {guess[0]})" if guess else "")


def _flatten_block_chunks(state: dict[str, Any]) -> dict[str, Any]:
    """Meta models built with ``block_chunks`` name blocks ``blocks.<chunk>.<index>.``."""
    if not any(re.match(r"blocks\.\d+\.\d+\.", k) for k in state):
        return state
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def load_backbone(
    backbone: str,
    weights_path: Path,
    *,
    device: Any = "cpu",
    setting: str | None = None,
    **overrides: Any,
):
    """Build `backbone` and load `weights_path` into it (official Meta or timm layout).

    A missing, corrupt or mismatched file is a ModelWeightsError that says what was found (and
    names the caller's `setting` prefix). Most callers want :func:`load_model`.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    spec = get_spec(backbone)
    state = read_state_dict(Path(weights_path), setting=setting)
    model = build_model(backbone, **overrides)
    found = describe_state_dict(state)
    pick = f"Pick the matching {f'{setting}.backbone' if setting else 'backbone'} or file."
    try:
        state = checkpoint_filter_fn(_flatten_block_chunks(dict(state)), model)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, KeyError, ValueError, IndexError) as e:
        raise ModelWeightsError(
            f"weights file {weights_path} does not fit backbone {spec.name!r} "
            f"(expects embed_dim {spec.embed_dim}, {spec.depth} blocks"
            f"{', 4 registers' if spec.registers else ''}; the file has {found}): "
            f"{str(e).splitlines()[0][:300]}. {pick}"
        ) from None
    unexpected = [k for k in unexpected if not k.startswith("head.")]
    if missing or unexpected:
        raise ModelWeightsError(
            f"weights file {weights_path} does not fit backbone {spec.name!r} (the file has "
            f"{found}); missing keys: {', '.join(missing[:5]) or 'none'}"
            f"{' ...' if len(missing) > 5 else ''}; unexpected keys: "
            f"{', '.join(unexpected[:5]) or 'none'}{' ...' if len(unexpected) > 5 else ''}. "
            f"{pick}"
        )
    logger.info("Loaded DINOv2 %s from %s", spec.name, weights_path)
    return model.to(device).eval()


@dataclass(frozen=True)
class DinoModel:
    """A DINOv2 backbone ready for inference, plus what identifies its outputs (for hashes)."""

    module: Any  # timm VisionTransformer, eval mode
    backbone: str  # our name, e.g. "vits14"
    device: Any
    weights_id: str  # SHA-256 of the weights file, or "random-..." for tests and timing runs

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens before the patch tokens."""
        return int(getattr(self.module, "num_prefix_tokens", 1))


class WeightsSettings(Protocol):
    """The weight settings every DINOv2 user has (retrieval, patch features, tracking)."""

    backbone: str
    weights: Path | None
    download: bool


def weights_of(settings: WeightsSettings, *, setting: str, alternative: str) -> tuple[Path, str]:
    """(weights file, SHA-256) of `settings`, resolved as :func:`resolve_weights` says."""
    path = resolve_weights(
        settings.backbone,
        settings.weights,
        download=settings.download,
        setting=setting,
        alternative=alternative,
    )
    return path, weights_sha256(path)


def load_model(
    settings: WeightsSettings, *, device: Any = "cpu", setting: str, alternative: str
) -> DinoModel:
    """The DINOv2 backbone of `settings` on `device`: the weights resolved by
    :func:`weights_of` (an explicit file, the cache, a download, or a ModelWeightsError naming
    `setting` and `alternative`), loaded once per process for each weights file and device."""
    path, sha = weights_of(settings, setting=setting, alternative=alternative)
    backbone = settings.backbone
    key = (backbone, str(path.resolve()), sha, str(device))
    model = _LOADED.get(key)
    if model is None:
        module = load_backbone(backbone, path, device=device, setting=setting)
        model = _LOADED[key] = DinoModel(module, backbone, device, sha)
        while len(_LOADED) > LOADED_MODELS:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return model


# A run holds at most retrieval's backbone and the patch features' one; a third (another file
# or device) evicts the oldest rather than keeping gigabytes alive. Not functools.lru_cache: the
# setting named in load errors must not be part of the key (retrieval and the patch features
# may share one vitb14 file).
LOADED_MODELS = 2
_LOADED: OrderedDict[tuple[str, str, str, str], DinoModel] = OrderedDict()


def clear_model_cache() -> None:
    """Forget the models :func:`load_model` loaded (frees their memory once unreferenced)."""
    _LOADED.clear()


def to_meta_layout(model, *, seed: int = 0) -> dict[str, Any]:
    """The state dict of a timm DINOv2 `model` in the official Meta key layout.

    The inverse of timm's conversion (``register_tokens``, CLS position folded back into
    ``pos_embed``, ``mlp.w12``/``mlp.w3`` for SwiGLU, a ``mask_token``). Tests use it to
    fabricate official-layout checkpoints for tiny models; the CLS position of register models
    is not recoverable from timm's layout, so a random one is split off (the sum is unchanged).
    """
    import torch

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, Any] = {}
    dim = state["cls_token"].shape[-1]
    if "reg_token" in state:
        gen = torch.Generator().manual_seed(seed)
        pos0 = torch.randn(1, 1, dim, generator=gen) * 0.02
        out["register_tokens"] = state.pop("reg_token")
        out["cls_token"] = state.pop("cls_token") - pos0
        out["pos_embed"] = torch.cat([pos0, state.pop("pos_embed")], dim=1)
    swiglu = type(model.blocks[0].mlp).__name__ in ("GluMlp", "SwiGLUPacked")
    for k, v in state.items():
        if swiglu:
            k = re.sub(r"^(blocks\.\d+\.mlp)\.fc1\.", r"\1.w12.", k)
            k = re.sub(r"^(blocks\.\d+\.mlp)\.fc2\.", r"\1.w3.", k)
        out[k] = v
    out["mask_token"] = torch.zeros(1, dim)
    return out


# ----------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a backbone's weights are present, and where."""

    backbone: str
    timm_name: str
    path: Path | None  # None: missing
    size_bytes: int | None
    url: str
    expected_path: Path  # where a download (or the user) puts it


def list_weights() -> list[WeightsStatus]:
    """Every DINOv2 backbone with its weights file, if present."""
    out = []
    for spec in BACKBONES.values():
        path = find_cached(spec)
        out.append(
            WeightsStatus(
                backbone=spec.name,
                timm_name=spec.timm_name,
                path=path,
                size_bytes=path.stat().st_size if path is not None else None,
                url=spec.url,
                expected_path=weights_dir() / spec.filename,
            )
        )
    return out


def format_weights_table() -> str:
    """The text `reconstruct weights list` prints."""
    rows = list_weights()
    lines = [
        f"DINOv2 weights (cache: {weights_dir()}; set RECONSTRUCT_CACHE to move it)",
        f"{'backbone':<11} {'status':<8} {'size':>9}  path or download URL",
    ]
    for r in rows:
        if r.path is not None:
            size = f"{r.size_bytes / 2**20:,.0f} MB"
            lines.append(f"{r.backbone:<11} {'present':<8} {size:>9}  {r.path}")
        else:
            lines.append(f"{r.backbone:<11} {'missing':<8} {'':>9}  {r.url}")
    lines.append(
        "Missing files are downloaded on first use unless the model's download setting is off "
        "(pairs.retrieval.download, keypoints.patch.download, tracking.download); to install "
        "one by hand, put the file from the URL in the cache folder above."
    )
    return "\n".join(lines)
