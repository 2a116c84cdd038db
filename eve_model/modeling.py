"""EveForCausalLM: transformers' Llama + PEL (vision_tower, mm_projector) + PAL + frozen CLIP teacher.

Module tree and parameter names follow the published checkpoint (eve-v1.md 4.3)::

    model.embed_tokens / model.layers.* / model.norm / lm_head      Llama (transformers, SDPA)
    model.vision_tower.*                                            PEL: conv + CA1 + CLS/CA2 + SPL
    model.mm_projector.{0,2}.*                                      PEL output MLP (mlp2x_gelu)
    model.vision_tower_compressor.*                                 PAL (if requires_cliploss)
    model.vision_clip.backbone.vision_model.*                       CLIP teacher (if requires_cliploss)

The reference registers the teacher a second time as ``vision_tower_compressor.clip_layer``; here
it is registered once (``loading.py`` accepts both prefixes), so the state dict has no duplicate.

Forward = splice (``prepare_multimodal_inputs``) + Llama + LM loss + alignment loss (eve-v1.md 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers.utils import ModelOutput

from .config import EveConfig
from .constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .patch_aligner import ClipTeacher, PatchAligner
from .patch_embedding import VisionTokenizer

VISION_MODULES = ("vision_tower", "mm_projector", "vision_tower_compressor")
# Arguments generate() passes to forward for the plain-Llama decoding steps.
_DECODE_KWARGS = {"cache", "past_key_values", "use_cache", "cache_position", "logits_to_keep", "return_dict",
                  "output_attentions", "output_hidden_states"}


@dataclass
class EveCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None  # lm_loss + align_loss (None without labels)
    lm_loss: torch.Tensor | None = None
    align_loss: torch.Tensor | None = None  # 0 when the teacher is off or images_clip is None
    logits: torch.Tensor | None = None  # [B, T', V] over the spliced sequence
    attention_mask: torch.Tensor | None = None  # [B, T'] after the splice
    labels: torch.Tensor | None = None  # [B, T'] after the splice
    sample_lengths: torch.Tensor | None = None  # [n] spliced length of each sample (FLOP accounting)
    image_grids: torch.Tensor | None = None  # [n_img, 2] (h, w) visual-token grid of each image


@dataclass
class MultimodalInputs:
    inputs_embeds: torch.Tensor  # [B, T', D]
    attention_mask: torch.Tensor  # [B, T'] long
    labels: torch.Tensor | None  # [B, T']
    image_spans: list[tuple[int, int, int, int]]  # (row, start, h, w) per image sample
    image_rows: list[int]  # batch rows that carry an image
    dummy: torch.Tensor | None  # zero touching the PEL when the batch has no image
    position_ids: torch.Tensor | None = None  # [B, T'] per-sample positions (packed batches only)
    sample_lengths: list[int] = field(default_factory=list)  # spliced length of each sample
    image_grids: list[tuple[int, int]] = field(default_factory=list)  # (h, w) of each image


class _EveInitMixin:
    """Vision modules get PyTorch's default init, as in the reference's ``initialize_vision_modules``
    (they are built after the Vicuna weights are loaded, outside HF's ``_init_weights``)."""

    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_eve_torch_init", False):
            if isinstance(module, VisionTokenizer):
                nn.init.normal_(module.class_embedding)
                nn.init.normal_(module.split_embedding)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            return
        super()._init_weights(module)


def build_projector(config: EveConfig) -> nn.Sequential:
    """mlp2x_gelu: Linear(mm_hidden, hidden) -> GELU -> Linear(hidden, hidden); names .0 / .2."""
    return nn.Sequential(nn.Linear(config.mm_hidden_size, config.hidden_size), nn.GELU(),
                         nn.Linear(config.hidden_size, config.hidden_size))


class EveModel(_EveInitMixin, LlamaModel):
    config_class = EveConfig

    def __init__(self, config: EveConfig) -> None:
        super().__init__(config)
        config.validate_vision()
        self.vision_tower = VisionTokenizer(config.mm_hidden_size, config.patch_stride, config.conv_stride,
                                            config.vision_num_heads)
        self.mm_projector = build_projector(config)
        if config.requires_cliploss:
            teacher = config.teacher_config()
            self.vision_tower_compressor = PatchAligner(
                config.hidden_size, teacher.hidden_size, config.num_hidden_layers, config.align_layer_stride,
                config.vision_num_heads, config.patch_ratio)
            self.vision_clip = ClipTeacher(teacher, config.mm_vision_select_layer, config.mm_vision_select_feature)
        for name in VISION_MODULES:
            for module in getattr(self, name, nn.Module()).modules():
                module._eve_torch_init = True
        self.post_init()

    @property
    def has_aligner(self) -> bool:
        return hasattr(self, "vision_tower_compressor")


class EveForCausalLM(_EveInitMixin, LlamaForCausalLM):
    config_class = EveConfig
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower_compressor\.clip_layer\..*"]

    def __init__(self, config: EveConfig) -> None:
        super(LlamaForCausalLM, self).__init__(config)  # PreTrainedModel init, not Llama's body
        self.model = EveModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        #: 0: full logits [B, T', V] (returned). N > 0: with labels, the LM head runs only on the
        #: positions that have a target, N at a time, each chunk's logits recomputed in the
        #: backward (no [B, T', V] float32 tensor is kept); ``logits`` is then None. Same loss.
        self.loss_chunk_tokens = 0
        self.post_init()

    # ------------------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor, name: str, size: int, batch: int) -> None:
        if images.dim() != 4 or images.shape[1] != 4:
            raise ValueError(f"{name}: expected [B, 4, {size}, {size}] (RGB + mask channel), got "
                             f"{tuple(images.shape)}; the channel count must be 4")
        if images.shape[0] != batch:
            raise ValueError(f"{name}: batch size {images.shape[0]} != input_ids batch size {batch}")
        hw = tuple(images.shape[-2:])
        if hw != (size, size):
            what = "larger than" if max(hw) > size else "different from"
            raise ValueError(f"{name}: canvas {hw} is {what} the configured canvas ({size}, {size}); "
                             f"allowed: exactly [B, 4, {size}, {size}] (use EveImageProcessor)")

    def encode_images(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """PEL: images [n, 4, S, S] -> per-image [1 + h*(w+1), D] LLM-space tokens and (h, w)."""
        pt = self.model.vision_tower(images)
        feats = self.model.mm_projector(pt.tokens)  # [sum len, D]  projector over the whole sequence
        return list(feats.split(pt.lengths)), pt.grid_hw

    def prepare_multimodal_inputs(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
                                  labels: torch.LongTensor | None, images: torch.Tensor | None,
                                  padding_side: str = "right",
                                  sample_index: torch.LongTensor | None = None) -> MultimodalInputs:
        """Replace each IMAGE_TOKEN_INDEX by the sample's visual tokens (labels IGNORE_INDEX there),
        drop padding, re-pad to the longest spliced row (right for training as in the reference,
        left for generation), extend the attention mask.

        Packed batches (``sample_index`` [R, T]: the sample each position belongs to, 0..n-1 in
        the order of ``images``, -1 on padding): each row holds several samples back to back.
        They are spliced one by one and re-packed in their row; ``position_ids`` restart at 0 for
        every sample (and for the trailing padding), which makes the decoder's mask
        block-diagonal (document-masked causal attention), and the first label of each sample is
        ignored so no sample predicts its neighbour's first token."""
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}; allowed: 'right', 'left'")
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        if sample_index is None:  # one sample per row
            sample_row = list(range(b))
            sample_pos = [keep[i] for i in range(b)]
        else:
            if padding_side != "right" or sample_index.shape != input_ids.shape:
                raise ValueError(f"sample_index: expected shape {tuple(input_ids.shape)} (right padding), got "
                                 f"{tuple(sample_index.shape)}")
            si = sample_index.cpu()
            n = int(si.max()) + 1 if si.numel() else 0
            first = torch.ones_like(si, dtype=torch.bool)  # where a run of one sample starts
            first[:, 1:] = si[:, 1:] != si[:, :-1]
            rr, cc = (first & (si >= 0)).nonzero(as_tuple=True)
            layout = si[rr, cc].tolist()  # samples in row-major order of appearance
            if n == 0 or sorted(layout) != list(range(n)):
                raise ValueError("sample_index: every sample 0..n-1 must fill one contiguous run of one row "
                                 f"(got runs of samples {layout[:20]})")
            sample_row = [0] * n
            for r, k in zip(rr.tolist(), layout):
                sample_row[k] = r
            sample_pos = [(sample_index[sample_row[k]] == k) for k in range(n)]
        n = len(sample_row)
        is_img = input_ids == IMAGE_TOKEN_INDEX
        n_placeholders = torch.stack([is_img[r][m].sum() for r, m in zip(sample_row, sample_pos)]) \
            if sample_index is not None else is_img.sum(1)
        if (n_placeholders > 1).any():
            row = int((n_placeholders > 1).nonzero()[0])
            raise ValueError(f"input_ids[{row}]: {int(n_placeholders[row])} IMAGE_TOKEN_INDEX placeholders; "
                             "allowed: at most one per sample")
        has_ph = (n_placeholders == 1).cpu()
        if images is None:
            if has_ph.any():
                raise ValueError(f"input_ids hold {int(has_ph.sum())} IMAGE_TOKEN_INDEX placeholders but "
                                 "images is None (0 images with a valid mask)")
            has_img = has_ph
        else:
            self._check_images(images, "images", self.config.image_size, n)
            has_img = self.model.vision_tower._patch_mask(images).flatten(1).any(1).cpu()
            if (has_img != has_ph).any():
                bad = int((has_img != has_ph).nonzero()[0])
                detail = ("its mask channel has no valid patch but input_ids has a placeholder"
                          if has_ph[bad] else "it has a valid mask but input_ids has no placeholder")
                raise ValueError(
                    f"input_ids hold {int(has_ph.sum())} IMAGE_TOKEN_INDEX placeholders but images has "
                    f"{int(has_img.sum())} samples with a valid mask (sample {bad}: {detail})")

        rows = has_ph.nonzero().flatten().tolist()
        dummy = None
        feats: list[torch.Tensor] = []
        grids: list[tuple[int, int]] = []
        if rows:
            feats, grids = self.encode_images(images[rows])
        elif images is not None:
            # Text-only batch: run the PEL on one blank canvas (dummy crop) so every PEL parameter
            # stays in the graph with a zero contribution (the reference's ZeRO-3 guard).
            dummy = sum(f.sum() for f in self.encode_images(images[:1])[0]) * 0.0

        embeds = self.model.embed_tokens(input_ids.clamp(min=0))  # [B, T, D]
        new_embeds, new_labels, spans = [], [], []
        it = iter(zip(rows, feats, grids))
        for k in range(n):
            r, m = sample_row[k], sample_pos[k]
            e, ids = embeds[r][m], input_ids[r][m]
            lab = labels[r][m] if labels is not None else None
            p = None
            if has_ph[k]:
                _, vis, (h, w) = next(it)
                p = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0])
                e = torch.cat([e[:p], vis.to(e.dtype), e[p + 1:]])
                if lab is not None:
                    lab = torch.cat([lab[:p], lab.new_full((vis.shape[0],), IGNORE_INDEX), lab[p + 1:]])
                spans.append((k, p, h, w))
            if lab is not None and sample_index is not None and lab.numel():
                lab = torch.cat([lab.new_full((1,), IGNORE_INDEX), lab[1:]])  # never a target unpacked either
            new_embeds.append(e)
            new_labels.append(lab)
        lengths = [e.shape[0] for e in new_embeds]
        # place the samples in their rows: (row, offset) of each sample
        offsets, row_len = [0] * n, [0] * b
        for k in (layout if sample_index is not None else range(n)):
            offsets[k] = row_len[sample_row[k]]
            row_len[sample_row[k]] += lengths[k]
        tmax = max(row_len) if row_len else 0
        out_embeds = embeds.new_zeros(b, tmax, embeds.shape[-1])
        out_mask = attention_mask.new_zeros(b, tmax)
        out_labels = None if labels is None else labels.new_full((b, tmax), IGNORE_INDEX)
        out_index = torch.full((b, tmax), -1, dtype=torch.long)
        for k, (e, ln) in enumerate(zip(new_embeds, lengths)):
            r = sample_row[k]
            start = offsets[k] if padding_side == "right" else tmax - ln
            span = slice(start, start + ln)
            out_embeds[r, span] = e
            out_mask[r, span] = 1
            out_index[r, span] = k
            if out_labels is not None:
                out_labels[r, span] = new_labels[k]
        spans = [(sample_row[k], offsets[k] + p if padding_side == "right" else p + tmax - lengths[k], h, w)
                 for k, p, h, w in spans]
        position_ids = None
        if sample_index is not None:
            # per-sample positions; the trailing padding of a row counts as one more sample
            idx = torch.where(out_index >= 0, out_index, n + torch.arange(b)[:, None])
            start_of = torch.ones_like(idx, dtype=torch.bool)
            start_of[:, 1:] = idx[:, 1:] != idx[:, :-1]
            ar = torch.arange(tmax).expand(b, tmax)
            position_ids = (ar - torch.cummax(torch.where(start_of, ar, 0), dim=1).values).to(input_ids.device)
        return MultimodalInputs(out_embeds, out_mask, out_labels, spans, rows, dummy, position_ids=position_ids,
                                sample_lengths=lengths, image_grids=grids)

    # ------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, images: torch.Tensor | None = None,
                images_clip: torch.Tensor | None = None, num_items_in_batch: int | torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                sample_index: torch.LongTensor | None = None, **kwargs):
        """input_ids [B, T] (<=1 IMAGE_TOKEN_INDEX each), images [B,4,S,S], images_clip [B,4,Sc,Sc].

        Packed: ``sample_index`` [R, T] names the sample of each position (-1: padding); images
        and images_clip then hold one canvas per sample [n, 4, S, S], in sample order.  Every
        sample sees only its own tokens (document-masked attention, positions restart at 0).

        ``num_items_in_batch``: divide the summed token loss by this instead of the local count
        (gradient accumulation).  Calls with ``inputs_embeds`` or generation kwargs (``cache``,
        ``use_cache``, ...) are plain Llama steps - that is how ``generate`` decodes.
        """
        unknown = set(kwargs) - _DECODE_KWARGS
        if unknown:
            raise ValueError(f"unexpected arguments {sorted(unknown)}; allowed: input_ids, attention_mask, labels, "
                             f"images, images_clip, num_items_in_batch, sample_index (+ decoding: {sorted(_DECODE_KWARGS)})")
        if inputs_embeds is not None or kwargs:
            if images is not None or images_clip is not None or sample_index is not None:
                raise ValueError("images/images_clip cannot be combined with inputs_embeds or cache arguments")
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                   inputs_embeds=inputs_embeds, position_ids=position_ids, **kwargs)
        if input_ids is None:
            raise ValueError("input_ids is required")
        align = self.model.has_aligner and self.config.requires_cliploss and images_clip is not None
        if align:
            n = input_ids.shape[0] if sample_index is None else images_clip.shape[0]
            self._check_images(images_clip, "images_clip", self.config.image_size_clip, n)
        mm = self.prepare_multimodal_inputs(input_ids, attention_mask, labels, images, sample_index=sample_index)
        if mm.position_ids is None:
            out = self.model(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask,
                             use_cache=False, output_hidden_states=align)
        else:  # packed: no 2-D mask, so transformers derives the per-sample block mask from the positions
            out = self.model(inputs_embeds=mm.inputs_embeds, attention_mask=None, position_ids=mm.position_ids,
                             use_cache=False, output_hidden_states=align)
        hidden = out.last_hidden_state
        chunked = self.loss_chunk_tokens > 0 and mm.labels is not None
        logits = None if chunked else self.lm_head(hidden)  # [B, T', V]

        zero = hidden.new_zeros((), dtype=torch.float32)
        align_loss = zero
        if align:
            aligner = self.model.vision_tower_compressor
            if mm.image_rows:
                clip_in = images_clip[mm.image_rows]
                pc = self.config.patch_stride_clip
                teacher_valid = F.avg_pool2d(clip_in[:, 3:].float(), pc, pc).flatten(1) > 0.5  # [n, Gc*Gc]
                teacher_feats = self.model.vision_clip(clip_in[:, :3])  # [n, Gc*Gc, C]
                align_loss = aligner(out.hidden_states, mm.image_spans, teacher_feats, teacher_valid)
            else:
                align_loss = aligner.dummy_loss(out.last_hidden_state)
        elif self.model.has_aligner and self.training:
            align_loss = self.model.vision_tower_compressor.dummy_loss(out.last_hidden_state)

        lm_loss = loss = None
        if mm.labels is not None:
            shift_labels = mm.labels[:, 1:].reshape(-1)
            if chunked:
                total = self._chunked_lm_loss(hidden[:, :-1].reshape(-1, hidden.shape[-1]), shift_labels)
            else:
                shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
                total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
            # Clamped: a micro-batch whose labels are all IGNORE_INDEX gives 0, not NaN (reference: NaN).
            denom = num_items_in_batch
            if denom is None:
                denom = (shift_labels != IGNORE_INDEX).sum().clamp(min=1)
            lm_loss = total / denom
            loss = lm_loss + align_loss.float()
            if mm.dummy is not None:
                loss = loss + mm.dummy.float()
        dev = hidden.device
        return EveCausalLMOutput(loss=loss, lm_loss=lm_loss, align_loss=align_loss, logits=logits,
                                 attention_mask=mm.attention_mask, labels=mm.labels,
                                 sample_lengths=torch.tensor(mm.sample_lengths, dtype=torch.long).to(dev, non_blocking=True),
                                 image_grids=torch.tensor(mm.image_grids, dtype=torch.long).reshape(-1, 2).to(
                                     dev, non_blocking=True))

    def _chunked_lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the positions with a target, ``loss_chunk_tokens`` at a time."""
        from torch.utils.checkpoint import checkpoint

        rows = (labels != IGNORE_INDEX).nonzero().flatten()
        if rows.numel() == 0:  # no target: a zero that still runs the head (ZeRO-3 / DDP see it used)
            return self.lm_head(hidden[:1]).float().sum() * 0.0
        h, y = hidden.index_select(0, rows), labels.index_select(0, rows)
        total = hidden.new_zeros((), dtype=torch.float32)

        def chunk_loss(h_c: torch.Tensor, y_c: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.lm_head(h_c).float(), y_c, reduction="sum")

        for start in range(0, h.shape[0], self.loss_chunk_tokens):
            sl = slice(start, start + self.loss_chunk_tokens)
            total = total + checkpoint(chunk_loss, h[sl], y[sl], use_reentrant=False)
        return total

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, images: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs):
        """Greedy/sampled decoding with images: splice once (left-padded), then decode from embeddings.

        Returns only the new tokens (HF behaviour for ``inputs_embeds``)."""
        if input_ids is None or (images is None and not (input_ids == IMAGE_TOKEN_INDEX).any()):
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mm = self.prepare_multimodal_inputs(input_ids, attention_mask, None, images, padding_side="left")
        return super().generate(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask, **kwargs)

    # ------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> EveForCausalLM:
        super().train(mode)
        if self.model.has_aligner:
            self.model.vision_clip.eval()  # frozen teacher: always eval
        return self
