"""Packed batches (several samples per row, document-masked attention) are exact: the same
per-sample losses, alignment loss and gradients as the padded one-sample-per-row batch (fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.eve_model_testutils import make_batch, make_image, tiny_config, tiny_proc  # noqa: F401

from eve_model import IGNORE_INDEX, EveForCausalLM, set_trainable


def pack(batch: dict, rows: list[list[int]]) -> dict:
    """The padded batch's samples laid back to back in `rows` (lists of sample indices)."""
    lens = batch["attention_mask"].sum(1).tolist()
    width = max(sum(lens[k] for k in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    index = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k in row:
            n = lens[k]
            ids[r, at:at + n], labels[r, at:at + n] = batch["input_ids"][k, :n], batch["labels"][k, :n]
            mask[r, at:at + n], index[r, at:at + n] = 1, k
            at += n
    return dict(input_ids=ids, attention_mask=mask, labels=labels, sample_index=index,
                images=batch["images"], images_clip=batch["images_clip"])


def per_sample_losses(out, rows: list[list[int]] | None) -> dict[int, torch.Tensor]:
    """Summed next-token loss of each sample, read off the spliced logits."""
    lengths = out.sample_lengths.tolist()
    spans = {}
    if rows is None:
        spans = {k: (k, 0, n) for k, n in enumerate(lengths)}
    else:
        for r, row in enumerate(rows):
            at = 0
            for k in row:
                spans[k] = (r, at, lengths[k])
                at += lengths[k]
    losses = {}
    for k, (r, at, n) in spans.items():
        logits, labels = out.logits[r, at:at + n - 1], out.labels[r, at + 1:at + n]
        losses[k] = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return losses


@pytest.fixture(scope="module")
def samples(tiny_proc):
    return make_batch(tiny_proc, [
        (make_image(300, 200, seed=1), [10, 11, 12, 13]),
        (None, [30, 31, 32, 33, 34, 35, 36]),
        (make_image(90, 220, seed=2), [20, 21]),
        (make_image(224, 224, seed=3), [40, 41, 42, 43, 44, 45]),
        (None, [50, 51, 52]),
    ])


@pytest.mark.parametrize("stage", ["prealign", "sft"])
def test_packed_batch_equals_padded_batch(tiny_config, samples, stage):
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float()
    set_trainable(model, stage)
    model.train()
    rows = [[0, 1], [2, 4, 3]]  # a row may hold images, text-only samples, in any order
    packed = pack(samples, rows)

    grads, outs = [], []
    for batch in (samples, packed):
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    padded, pk = outs
    assert pk.logits.shape[0] == 2 and pk.logits.shape[1] < padded.logits.shape[1] * 2
    assert pk.sample_lengths.tolist() == padded.sample_lengths.tolist()
    torch.testing.assert_close(pk.lm_loss, padded.lm_loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(pk.align_loss, padded.align_loss, rtol=0, atol=1e-5)
    assert float(padded.align_loss.detach()) > 0  # the PAL ran on the images' own tokens in both layouts
    a, b = per_sample_losses(padded, None), per_sample_losses(pk, rows)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5 * max(1.0, float(a[k].detach().abs())))
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-5, msg=name)


def test_packed_positions_restart_per_sample(tiny_config, samples):
    model = EveForCausalLM(tiny_config).eval()
    packed = pack(samples, [[1, 4]])  # text only: positions are visible directly
    index = packed["sample_index"]
    index = torch.where(index == 1, 0, torch.where(index == 4, 1, index))  # samples are numbered 0..n-1
    mm = model.prepare_multimodal_inputs(packed["input_ids"], packed["attention_mask"], packed["labels"],
                                         None, sample_index=index)
    n1, n4 = mm.sample_lengths
    assert mm.position_ids[0].tolist() == list(range(n1)) + list(range(n4))
    assert mm.labels[0, n1] == IGNORE_INDEX  # a sample's first token is nobody's target


def test_packed_sample_index_shape_is_checked(tiny_config, samples):
    model = EveForCausalLM(tiny_config).eval()
    packed = pack(samples, [[0, 1], [2, 4, 3]])
    with pytest.raises(ValueError, match="sample_index"):
        model(**dict(packed, sample_index=packed["sample_index"][:, :-1]))
    split = packed["sample_index"].clone()
    split[0, 1] = 1  # sample 0 interrupted by sample 1: not one contiguous run
    with pytest.raises(ValueError, match="contiguous"):
        model(**dict(packed, sample_index=split))


def test_chunked_loss_on_targets_only_is_exact(tiny_config, samples):
    """loss_chunk_tokens: the LM head only where there is a label, a few rows at a time."""
    torch.manual_seed(0)
    model = EveForCausalLM(tiny_config).float().train()
    results = []
    for chunk in (0, 3):
        model.loss_chunk_tokens = chunk
        model.zero_grad(set_to_none=True)
        out = model(**samples)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full, g_full), (chunked, g_chunked) = results
    assert chunked.logits is None and full.logits is not None
    torch.testing.assert_close(chunked.lm_loss, full.lm_loss, rtol=0, atol=1e-5)
    assert g_full.keys() == g_chunked.keys()
    for name, g in g_full.items():
        torch.testing.assert_close(g_chunked[name], g, rtol=0, atol=1e-5, msg=name)
