"""Patch Embedding Layer (PEL) of EVE v1: conv -> CA1 (local) -> CLS + CA2 (global) -> SPL rows.

Reference: ``EVEv1/eve/model/multimodal_encoder/vision_tokenizer.py`` (``VisionTokenizer``,
``LocalAttention``, ``GlobalAttention``); eve-v1.md section 2.2 and pitfalls 9.1-9.4.  Parameter
names match the published checkpoint (``patch_embedding``, ``class_embedding``,
``split_embedding``, ``local_attention.{q,kv,proj}``, ``global_attention.{q,kv,proj}``).

Two implementations of the same function live here:

* ``VisionTokenizer.forward`` - batched.  The pixel patches of the valid 2x2 windows of every
  sample are gathered with one index tensor and embedded by one matmul with the conv weight (a
  stride=kernel conv is exactly that), so padding costs nothing; CA1 runs on the packed
  ``[num_windows, 4, C]`` batch, CA2 runs on a padded ``[B, N_max, C]`` view with a
  key-padding mask, and CLS/SPL are placed by a single permutation gather.  CA1 and CA2 use the
  algebraically equivalent "absorbed" form: the key projection is folded into the query
  (``q . (W_k x) = (W_k^T q) . x``) and the value projection is applied after the softmax-weighted
  sum (``sum_j a_j W_v x_j = W_v sum_j a_j x_j``).  Per CA1 window that is 4 C^2 multiply-adds
  instead of 10 C^2, and CA2 never projects its N keys/values at all.  Same parameters, same
  outputs (to float rounding), same gradients.  (Under DeepSpeed ZeRO-3, where a weight exists
  only inside its own module's forward, the batched path uses the explicit projections instead.)
* ``VisionTokenizer.forward_reference`` - the per-sample loop of the reference code with the
  explicit q/k/v projections.  Kept as the oracle for tests and the benchmark baseline.

Both return ``PatchTokens``: the token sequences of all samples packed along dim 0 (each sample is
``[CLS, r0c0 .. r0c(w-1), SPL, r1c0 .., SPL]``, length ``1 + h*(w+1)``) before ``mm_projector``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Size of the dummy crop the reference uses for a sample whose mask is empty (text-only).
DUMMY_CROP = 16


@dataclass
class PatchTokens:
    tokens: torch.Tensor  # [sum(lengths), C]  packed per-sample sequences
    lengths: list[int]  # per sample: 1 + h*(w+1)
    grid_hw: list[tuple[int, int]]  # per sample: (h, w) visual-token grid


class _PooledCrossAttention(nn.Module):
    """q/kv/proj of CA1/CA2: LN on the q and kv inputs only, no bias on q/kv, bias on proj.

    The attention scale is ``width ** -0.5`` (the full width, not the head dim: pitfall 9.1).
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width={width} must be divisible by vision_num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.scale = width**-0.5
        self.q = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width, bias=False))
        self.proj = nn.Linear(width, width)

    # The absorbed form reads kv[1].weight directly.  Under DeepSpeed ZeRO-3 a parameter is only
    # materialised inside its own module's forward, so there the explicit form is used instead.
    absorb: bool = True

    def _use_absorbed(self) -> bool:
        return self.absorb and not hasattr(self.kv[1].weight, "ds_id")

    def _kv_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_k, W_v as [heads, head_dim, C]; the kv output is laid out as (2, heads, head_dim)."""
        w = self.kv[1].weight.view(2, self.num_heads, self.head_dim, -1)
        return w[0], w[1]


class LocalAttention(_PooledCrossAttention):
    """CA1: one query per conv_stride x conv_stride window (its mean) over that window's patches."""

    def __init__(self, width: int, conv_stride: int, num_heads: int = 8) -> None:
        super().__init__(width, num_heads)
        self.conv_stride = conv_stride

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [N, s*s, C] (row-major inside the window) -> [N, C]."""
        n = windows.shape[0]
        pooled = windows.mean(dim=1)  # [N, C]   == avg_pool2d over the window
        if not self._use_absorbed():
            q = self.q(pooled).view(n, 1, self.num_heads, self.head_dim)  # [N, 1, h, d]
            kv = self.kv(windows).view(n, windows.shape[1], 2, self.num_heads, self.head_dim)
            k, v = kv.unbind(dim=2)  # [N, s*s, h, d]
            attn = ((q * k).sum(-1) * self.scale).softmax(dim=1)  # [N, s*s, h]
            return pooled + self.proj((attn.unsqueeze(-1) * v).sum(1).reshape(n, -1))
        q = self.q(pooled).view(n, self.num_heads, self.head_dim)  # [N, h, d]
        x = self.kv[0](windows)  # [N, s*s, C]   LN(kv input)
        w_k, w_v = self._kv_weights()  # [h, d, C] each
        qk = torch.einsum("nhd,hdc->nhc", q, w_k)  # [N, h, C]   W_k^T q: keys never projected
        attn = torch.bmm(qk, x.transpose(1, 2)).mul_(self.scale).softmax(dim=-1)  # [N, h, s*s]
        ax = torch.bmm(attn, x)  # [N, h, C]     sum_j a_j LN(x_j): values never projected per element
        out = torch.einsum("nhc,hdc->nhd", ax, w_v).reshape(n, -1)  # [N, C]  W_v,h (sum_j a_j LN(x_j))
        return pooled + self.proj(out)

    def forward_grid(self, features: torch.Tensor) -> torch.Tensor:
        """Reference formulation. features [B, C, H, W] -> [B, h*w, C] (h=H//s, w=W//s)."""
        s = self.conv_stride
        reduced = F.avg_pool2d(features, kernel_size=s, stride=s)  # [B, C, h, w]
        b, c, _, _ = features.shape
        h, w = reduced.shape[-2:]
        reduced = reduced.flatten(2).transpose(1, 2)  # [B, h*w, C]
        q = self.q(reduced).view(b, h * w, self.num_heads, self.head_dim)
        win = features[:, :, : h * s, : w * s].unfold(2, s, s).unfold(3, s, s)  # [B, C, h, w, s, s]
        win = win.reshape(b, c, h * w, s * s).permute(0, 2, 3, 1)  # [B, h*w, s*s, C]
        kv = self.kv(win).view(b, h * w, s * s, 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(dim=3)  # [B, h*w, s*s, heads, d]
        attn = (torch.einsum("bnhd,bnjhd->bnhj", q, k) * self.scale).softmax(dim=-1)
        out = torch.einsum("bnhj,bnjhd->bnhd", attn, v).reshape(b, h * w, c)
        return reduced + self.proj(out)


class GlobalAttention(_PooledCrossAttention):
    """CA2: the learned CLS embedding is the single query over all CA1 outputs of a sample."""

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """cls [C], tokens [B, N, C] (padded), key_mask [B, N] bool (True = real) -> [B, C]."""
        q = self.q(cls).view(self.num_heads, self.head_dim)  # [h, d]
        if not self._use_absorbed():
            b, n, _ = tokens.shape
            kv = self.kv(tokens).view(b, n, 2, self.num_heads, self.head_dim)
            scores = torch.einsum("hd,bnhd->bhn", q, kv[:, :, 0]) * self.scale  # [B, h, N]
            attn = scores.masked_fill(~key_mask[:, None, :], float("-inf")).softmax(dim=-1)
            return cls + self.proj(torch.einsum("bhn,bnhd->bhd", attn, kv[:, :, 1]).reshape(b, -1))
        w_k, w_v = self._kv_weights()  # [h, d, C]
        qk = torch.einsum("hd,hdc->hc", q, w_k)  # [h, C]
        x = self.kv[0](tokens)  # [B, N, C]
        scores = torch.matmul(x, qk.t()).transpose(1, 2) * self.scale  # [B, h, N]
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        ax = torch.bmm(scores.softmax(dim=-1), x)  # [B, h, C]
        out = torch.einsum("bhc,hdc->bhd", ax, w_v).reshape(tokens.shape[0], -1)  # [B, C]
        return cls + self.proj(out)

    def forward_reference(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Reference formulation. cls [C], tokens [B, N, C] (unpadded) -> [B, C]."""
        b, n, c = tokens.shape
        cls = cls.expand(b, 1, c)
        q = self.q(cls).view(b, 1, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, 1, d]
        kv = self.kv(tokens).view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) * kv[0]).sum(-1).softmax(dim=-1)  # [B, h, N]
        out = (attn.unsqueeze(-1) * kv[1]).sum(-2).reshape(b, 1, c)
        return (cls + self.proj(out))[:, 0]


class VisionTokenizer(nn.Module):
    """The PEL minus ``mm_projector``: pixels + mask -> packed [CLS, rows+SPL] token sequences."""

    def __init__(self, width: int, patch_stride: int, conv_stride: int, num_heads: int = 8) -> None:
        super().__init__()
        self.hidden_size = width
        self.patch_stride = patch_stride
        self.conv_stride = conv_stride
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch_stride, stride=patch_stride, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.split_embedding = nn.Parameter(torch.randn(width))
        self.local_attention = LocalAttention(width, conv_stride, num_heads)
        self.global_attention = GlobalAttention(width, num_heads)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # ------------------------------------------------------------------------------------------
    def _patch_mask(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 4, S, S] -> valid-patch mask [B, G, G] bool (G = S / patch_stride)."""
        if images.dim() != 4 or images.shape[1] != 4:
            raise ValueError(
                f"images: expected shape [B, 4, S, S] (RGB + mask channel), got {tuple(images.shape)}"
            )
        if images.shape[-1] % self.patch_stride or images.shape[-2] % self.patch_stride:
            raise ValueError(
                f"images: canvas {tuple(images.shape[-2:])} must be a multiple of "
                f"patch_stride={self.patch_stride}"
            )
        pm = F.avg_pool2d(images[:, 3:].float(), self.patch_stride, self.patch_stride)[:, 0]
        if ((pm - pm.round()).abs() > 1e-3).any():
            raise ValueError(
                "images: the mask channel must be constant (0 or 1) over every "
                f"{self.patch_stride}x{self.patch_stride} patch"
            )
        return pm > 0.5

    def _crop_boxes(self, valid: torch.Tensor) -> torch.Tensor:
        """valid [B, G, G] -> [B, 4] (row0, col0, rows, cols) of the valid bounding box, in patches.

        An empty mask gives the reference's dummy crop ``[:16, :16]`` (text-only samples).
        """
        b, g, _ = valid.shape
        rows, cols = valid.any(dim=2), valid.any(dim=1)  # [B, G]
        ar = torch.arange(g, device=valid.device)
        big = torch.full_like(ar, g)
        r0 = torch.where(rows, ar, big).amin(1)
        r1 = torch.where(rows, ar, -1).amax(1)
        c0 = torch.where(cols, ar, big).amin(1)
        c1 = torch.where(cols, ar, -1).amax(1)
        box = torch.stack([r0, c0, r1 - r0 + 1, c1 - c0 + 1], dim=1)
        empty = ~rows.any(1)
        dummy = torch.tensor([0, 0, min(DUMMY_CROP, g), min(DUMMY_CROP, g)], device=valid.device)
        return torch.where(empty[:, None], dummy, box)

    def _grids(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> boxes [B, 4] (patches) and grid [B, 2] (h, w visual tokens) on the CPU."""
        boxes = self._crop_boxes(self._patch_mask(images)).cpu()
        grid = boxes[:, 2:] // self.conv_stride
        if (grid == 0).any():
            bad = int((grid == 0).any(1).nonzero()[0])
            raise ValueError(
                f"images[{bad}]: valid region {tuple(boxes[bad, 2:].tolist())} patches is smaller than "
                f"conv_stride={self.conv_stride} patches in one direction"
            )
        return boxes, grid

    # ------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> PatchTokens:
        """Batched PEL. images [B, 4, S, S] -> PatchTokens (packed, no per-sample Python loop)."""
        boxes, grid = self._grids(images)
        dev, s, c = images.device, self.conv_stride, self.hidden_size
        b = images.shape[0]
        p, g = self.patch_stride, images.shape[-1] // self.patch_stride
        # Patches as rows [B*G*G, 3*p*p] in the conv weight's (channel, ky, kx) order.
        patches = images[:, :3].to(self.dtype).reshape(b, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b * g * g, 3 * p * p)

        # Packed windows, row-major within each sample, samples in order.
        hmax, wmax = int(grid[:, 0].max()), int(grid[:, 1].max())
        ys = torch.arange(hmax)[None, :, None]
        xs = torch.arange(wmax)[None, None, :]
        win_ok = (ys < grid[:, 0, None, None]) & (xs < grid[:, 1, None, None])  # [B, hmax, wmax]
        wb, wy, wx = win_ok.nonzero(as_tuple=True)  # [Nw] each
        dy = torch.arange(s).repeat_interleave(s)  # window element order: (dy, dx) row-major
        dx = torch.arange(s).repeat(s)
        rows = boxes[wb, 0, None] + wy[:, None] * s + dy  # [Nw, s*s]
        cols = boxes[wb, 1, None] + wx[:, None] * s + dx
        src = ((wb[:, None] * g + rows) * g + cols).to(dev)
        # The conv (stride = kernel) on the valid patches only: padding costs nothing.  As a matmul
        # (3x faster than conv2d on 1x1-output patches on CPU); under ZeRO-3 as a module call, so
        # DeepSpeed gathers the weight.
        pixels = patches.index_select(0, src.reshape(-1))  # [Nw*s*s, 3*p*p]
        weight = self.patch_embedding.weight
        if hasattr(weight, "ds_id"):
            windows = self.patch_embedding(pixels.view(-1, 3, p, p))
        else:
            windows = pixels @ weight.view(c, -1).t()
        windows = windows.reshape(-1, s * s, c)  # [Nw, s*s, C]
        ca1 = self.local_attention(windows)  # [Nw, C]

        # CA2 on a padded [B, Nmax, C] view of the packed CA1 outputs.
        counts = grid[:, 0] * grid[:, 1]  # [B]
        nmax = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(wb.numel()) - starts[wb]  # index inside its sample
        pad_index = torch.full((b * nmax,), wb.numel(), dtype=torch.long)
        pad_index[wb * nmax + slot] = torch.arange(wb.numel())
        key_mask = (torch.arange(nmax)[None] < counts[:, None]).to(dev)  # [B, Nmax]
        padded = torch.cat([ca1, ca1.new_zeros(1, c)]).index_select(0, pad_index.to(dev)).view(b, nmax, c)
        cls = self.global_attention(self.class_embedding.to(self.dtype), padded, key_mask)  # [B, C]

        # Assemble [CLS, rows with trailing SPL] per sample with one permutation gather.
        h, w = grid[:, 0], grid[:, 1]
        lengths = 1 + h * (w + 1)  # [B]
        offsets = torch.cumsum(lengths, 0) - lengths
        dest_cls = offsets
        dest_win = offsets[wb] + 1 + wy * (w[wb] + 1) + wx
        sb = torch.repeat_interleave(torch.arange(b), h)  # SPL rows
        sy = torch.arange(int(h.sum())) - torch.repeat_interleave(torch.cumsum(h, 0) - h, h)
        dest_spl = offsets[sb] + 1 + sy * (w[sb] + 1) + w[sb]
        n_spl = int(sb.numel())
        source = torch.cat([cls, ca1, self.split_embedding.to(self.dtype).expand(n_spl, c)])
        perm = torch.empty(int(lengths.sum()), dtype=torch.long)
        perm[torch.cat([dest_cls, dest_win, dest_spl])] = torch.arange(source.shape[0])
        tokens = source.index_select(0, perm.to(dev))
        return PatchTokens(tokens, lengths.tolist(), [tuple(x) for x in grid.tolist()])

    def forward_reference(self, images: torch.Tensor) -> PatchTokens:
        """Per-sample loop of the reference code (explicit q/k/v); the oracle for ``forward``."""
        boxes, grid = self._grids(images)
        feats = self.patch_embedding(images[:, :3].to(self.dtype))  # [B, C, G, G]
        out, lengths = [], []
        for i in range(images.shape[0]):
            r0, c0, nr, nc = boxes[i].tolist()
            f = feats[i : i + 1, :, r0 : r0 + nr, c0 : c0 + nc]
            h, w = grid[i].tolist()
            ca1 = self.local_attention.forward_grid(f)  # [1, h*w, C]
            cls = self.global_attention.forward_reference(self.class_embedding.to(self.dtype), ca1)
            rows = ca1[0].t().reshape(-1, h, w)  # [C, h, w]
            spl = self.split_embedding.to(self.dtype)[:, None, None].expand(-1, h, 1)
            rows = torch.cat([rows, spl], dim=-1).flatten(1).t()  # [h*(w+1), C]
            out.append(torch.cat([cls, rows]))
            lengths.append(1 + h * (w + 1))
        return PatchTokens(torch.cat(out), lengths, [tuple(x) for x in grid.tolist()])
