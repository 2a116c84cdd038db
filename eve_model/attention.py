"""Document-masked causal attention without a dense mask, for packed and padded training batches.

A training batch is laid out as segments: each sample of a row (one per row when padded,
several when packed) and the row's trailing padding are contiguous runs of positions, and a
position attends only to the earlier positions of its own segment (padding forms a segment of
its own: its outputs feed no loss). ``segments_of`` describes that layout once per forward; the
attention function then runs one of:

- ``varlen``: the rows flattened to one ``[B*T, H, D]`` sequence with cumulative segment
  boundaries, the way flash-attention's varlen kernel takes them. On CUDA in bf16/fp16 that is
  ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention, no mask, no padding FLOPs);
  elsewhere the same contract runs one causal SDPA call per segment (exact, mask-free, and it
  spends no FLOPs on the masked cross-sample blocks - the CPU and fp32 fallback).
- ``flex``: FlexAttention with a document-causal ``BlockMask`` (blocks that are fully masked are
  skipped). On CUDA it is compiled once; on CPU torch 2.13 runs it forward-only, so a CPU forward
  that needs gradients falls back to today's masked SDPA.
- ``sdpa``: transformers' SDPA with the dense [B, 1, T, T] boolean mask (today's path).

``resolve_attention`` turns the user's choice (``auto|sdpa|flex|varlen``) into one of those
for a device and dtype and says why, once (auto: on CPU the per-segment path for packed rows,
which measured about 2x faster than the dense mask there, with masked SDPA for one-sample-per-row
batches; on CUDA masked SDPA, the path measured on the H200, until benchmarks/gpu_suite.sh has
measured varlen and flex there: both are opt-in on GPU). The model registers one transformers attention
implementation, ``"eve"``, whose mask function is SDPA's: everything that is not a training
forward of EveForCausalLM (generation with a KV cache, plain Llama calls) sees exactly sdpa.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger("eve_model.attention")

ATTENTION_CHOICES = ("auto", "sdpa", "flex", "varlen")
EVE_ATTN_IMPL = "eve"
_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info(message)


def varlen_kernel_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether torch's FlashAttention varlen kernel can run here (CUDA, sm80+, bf16/fp16)."""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class AttentionChoice:
    kind: str  # "sdpa" | "flex" | "varlen"
    reason: str
    packed_only: bool = False  # use `kind` for packed rows only; one sample per row keeps masked SDPA


def resolve_attention(requested: str, device: torch.device | str, dtype: torch.dtype) -> AttentionChoice:
    """The attention path for `requested` on this device and dtype, and why (logged once)."""
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"attention={requested!r}; allowed: {', '.join(ATTENTION_CHOICES)}")
    device = torch.device(device)
    kernel = varlen_kernel_available(device, dtype)
    if requested == "auto":
        if device.type == "cpu":
            choice = AttentionChoice("varlen", "auto: packed rows: per-segment causal SDPA (about 2x faster than "
                                               "the dense document mask on CPU, docs/benchmarks.md); one sample "
                                               "per row: SDPA with its padding mask", packed_only=True)
        else:
            # The varlen kernel and compiled FlexAttention have not yet run on a GPU of ours
            # (benchmarks/gpu_suite.sh measures them): until they have, auto keeps the measured path
            # there, and `model.attention=varlen|flex` opts in.
            choice = AttentionChoice("sdpa", f"auto: masked SDPA on {device.type} (the path measured on GPU; "
                                             "model.attention=varlen or flex opts into the new kernels)")
    elif requested == "varlen":
        choice = AttentionChoice("varlen", "varlen: FlashAttention varlen kernel" if kernel else
                                 f"varlen: per-segment causal SDPA (no varlen kernel on {device.type} "
                                 f"{str(dtype).removeprefix('torch.')})")
    elif requested == "flex":
        if not flex_available():
            choice = AttentionChoice("sdpa", "flex requested but torch.nn.attention.flex_attention is missing: "
                                             "masked SDPA")
        elif device.type == "cpu":
            choice = AttentionChoice("flex", "flex: FlexAttention with a document BlockMask (CPU: forward-only "
                                             "in torch; forwards that need gradients use masked SDPA)")
        else:
            choice = AttentionChoice("flex", "flex: compiled FlexAttention with a document BlockMask")
    else:
        choice = AttentionChoice("sdpa", "sdpa: masked SDPA (dense [B, 1, T, T] mask for packed rows)")
    _log_once(f"attention: {choice.reason}")
    return choice


# -- the layout of a batch ---------------------------------------------------------------------

@dataclass
class Segments:
    """Contiguous runs of positions that attend only within themselves (causally)."""
    doc: torch.Tensor  # [B, T] long: segment id of each position (unique over the batch)
    cu_seqlens: torch.Tensor  # [S + 1] int32: boundaries in the flattened [B*T] order
    bounds: list[int]  # the same on the host
    max_seqlen: int


def segments_of(lengths_per_row: list[list[int]], width: int, device: torch.device | str) -> Segments:
    """Segments of a right-padded batch: `lengths_per_row[r]` are the sample lengths laid back to
    back in row r; what is left of the row up to `width` is one padding segment."""
    bounds, doc_rows = [0], []
    seg = 0
    for lengths in lengths_per_row:
        row = []
        used = 0
        for n in list(lengths) + [width - sum(lengths)]:
            if n <= 0:
                continue
            bounds.append(bounds[-1] + n)
            row += [seg] * n
            seg += 1
            used += n
        doc_rows.append(row)
    max_len = max((b - a for a, b in zip(bounds, bounds[1:])), default=0)
    doc = torch.tensor(doc_rows, dtype=torch.long).reshape(len(lengths_per_row), width)
    return Segments(doc.to(device, non_blocking=True),
                    torch.tensor(bounds, dtype=torch.int32).to(device, non_blocking=True), bounds, max_len)


def document_block_mask(doc: torch.Tensor):
    """FlexAttention BlockMask: causal within a segment (doc [B, T] segment ids)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (doc[b, q_idx] == doc[b, kv_idx])

    b, t = doc.shape
    return create_block_mask(mask_mod, B=b, H=None, Q_LEN=t, KV_LEN=t, device=doc.device, _compile=doc.is_cuda)


def dense_document_mask(doc: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean: causal within a segment (the masked-SDPA fallback)."""
    t = doc.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


# -- the attention function -------------------------------------------------------------------

_compiled_flex = None


def _flex(query, key, value, block_mask, scale, gqa):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if query.is_cuda and not torch.compiler.is_compiling():
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    with warnings.catch_warnings():  # CPU: eager on purpose (no compiled CPU kernel with a backward anyway)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return fn(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, seg: Segments,
                     scale: float | None) -> torch.Tensor:
    """query [B, H, T, D], key/value [B, Hk, T, D] -> [B, T, H, D], causal within each segment."""
    b, h, t, d = query.shape
    hk = key.shape[1]
    q = query.transpose(1, 2).reshape(b * t, h, d)
    k = key.transpose(1, 2).reshape(b * t, hk, d)
    v = value.transpose(1, 2).reshape(b * t, hk, value.shape[-1])
    if varlen_kernel_available(q.device, q.dtype):
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, seg.cu_seqlens, seg.cu_seqlens, seg.max_seqlen, seg.max_seqlen, scale=scale,
                          window_size=(-1, 0), enable_gqa=hk != h)
    else:  # one causal SDPA call per segment: exact, and no FLOPs on the cross-segment blocks
        parts = []
        for a, z in zip(seg.bounds, seg.bounds[1:]):
            parts.append(F.scaled_dot_product_attention(
                q[a:z].transpose(0, 1), k[a:z].transpose(0, 1), v[a:z].transpose(0, 1), is_causal=True,
                scale=scale, enable_gqa=hk != h).transpose(0, 1))
        out = torch.cat(parts)
    return out.view(b, t, h, -1)


def eve_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, eve_segments: Segments | None = None, **kwargs):
    """transformers attention interface ``"eve"``: varlen when the forward passed its segments,
    FlexAttention when the mask is a BlockMask, transformers' SDPA otherwise (generation)."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if eve_segments is not None:
        return varlen_attention(query, key, value, eve_segments, scaling), None
    if isinstance(attention_mask, BlockMask):
        out = _flex(query, key, value, attention_mask, scaling, key.shape[1] != query.shape[1])
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def register() -> None:
    """Register ``"eve"`` with transformers (attention function + SDPA's mask function)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(EVE_ATTN_IMPL, eve_attention_forward)
    AttentionMaskInterface.register(EVE_ATTN_IMPL, sdpa_mask)
