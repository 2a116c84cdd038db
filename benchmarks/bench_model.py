"""CPU micro-benchmarks of eve_model (forward + backward).

1. Patch embedding (VisionTokenizer: conv + CA1 + CLS/CA2 + SPL) at the real vision width 1024,
   672 px canvas, a batch of mixed aspect ratios: batched ``forward`` vs the per-sample reference
   loop ``forward_reference``; outputs and gradients are checked to agree first.
2. The whole tiny model (preset "tiny") and a mid-size model (512-wide 8-layer LLM, real 1024-wide
   PEL at 672 px, small teacher) - images/s and tokens/s of a training step (fwd + bwd).

3. With ``--device cuda``: the same in bf16 on the GPU, plus the ``small`` preset (1.1B-class LLM,
   real PEL/PAL/CLIP-L teacher at 672 px) with gradient checkpointing.
4. Issue 23's levers, what a CPU can show honestly, each against its baseline in the same run:
   - LM loss at a 32000 vocabulary: peak memory (RSS growth of a forked child) and time of
     fwd + bwd for full [N, V] logits vs the chunked loss with recompute vs the fused linear +
     cross-entropy (eve_model/fused_loss.py), on N positions of which half have a label;
   - attention on packed rows (EVE SFT-like and caption-like sample lengths) at small dims: the
     decoder fwd + bwd with today's masked SDPA (dense document mask) vs the varlen path (its
     per-segment SDPA fallback on CPU), and the forward alone for FlexAttention too (torch has
     no FlexAttention backward on CPU).

Usage:  .venv/bin/python benchmarks/bench_model.py [--batch 16] [--repeats 2] [--skip-models]
                                                   [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from eve_model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, EveForCausalLM, EveImageProcessor, get_preset, set_trainable
from eve_model.patch_embedding import VisionTokenizer

ASPECTS = [(640, 480), (480, 640), (1920, 1080), (1080, 1920), (800, 800), (1000, 500), (500, 1000), (700, 400)]


def images_for(proc: EveImageProcessor, n: int, text_only_every: int = 0):
    rng = np.random.default_rng(0)
    out, clips, sizes = [], [], []
    for i in range(n):
        if text_only_every and i % text_only_every == text_only_every - 1:
            im = None
        else:
            w, h = ASPECTS[i % len(ASPECTS)]
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a, c = proc(im)
        out.append(a)
        clips.append(c)
        sizes.append(None if im is None else im.size)
    return torch.stack(out), torch.stack(clips), sizes


DEVICE = torch.device("cpu")
DTYPE = torch.float32


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_patch_embedding(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    proc = EveImageProcessor.from_config(get_preset("eve-7b"))
    images, _, _ = images_for(proc, batch)
    images = images.to(DEVICE)
    vt = VisionTokenizer(1024, 14, 2, 8).to(DEVICE, DTYPE)
    params = list(vt.parameters())

    fast, ref = vt(images), vt.forward_reference(images)
    assert fast.lengths == ref.lengths
    err = ((fast.tokens - ref.tokens).abs().max() / ref.tokens.abs().max()).item()
    g_fast = torch.autograd.grad(fast.tokens.float().square().mean(), params)
    g_ref = torch.autograd.grad(ref.tokens.float().square().mean(), params)
    gerr = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(g_fast, g_ref))
    tol = (1e-4 if DEVICE.type == "cpu" else 2e-3) if DTYPE == torch.float32 else 5e-2  # cuda fp32: TF32 conv
    assert err < tol and gerr < tol, (err, gerr)
    n_tokens = sum(fast.lengths)

    def step(fn):
        def run():
            vt.zero_grad(set_to_none=True)
            fn(images).tokens.float().square().mean().backward()
        return run

    t_fast = timed(step(vt.forward), repeats)
    t_ref = timed(step(vt.forward_reference), repeats)
    print(f"patch embedding (width 1024, 672 px, batch {batch} mixed aspect, {n_tokens} visual tokens), "
          f"fwd+bwd, {DEVICE.type} {str(DTYPE).removeprefix('torch.')}")
    print(f"  outputs agree: max relative diff {err:.2e}, max relative grad diff {gerr:.2e}")
    print(f"  batched      {t_fast:7.3f} s  {batch / t_fast:7.2f} images/s  {n_tokens / t_fast:9.0f} tokens/s")
    print(f"  per-sample   {t_ref:7.3f} s  {batch / t_ref:7.2f} images/s  {n_tokens / t_ref:9.0f} tokens/s")
    print(f"  speed-up     {t_ref / t_fast:.2f}x")


def bench_model(name: str, config, batch: int, text_len: int, repeats: int, checkpointing: bool = False) -> None:
    torch.manual_seed(0)
    model = EveForCausalLM(config).to(DEVICE, DTYPE).train()
    set_trainable(model, "pretrain")
    if checkpointing:
        model.gradient_checkpointing_enable()
    proc = EveImageProcessor.from_config(config)
    images, clips, sizes = images_for(proc, batch, text_only_every=4)
    images, clips = images.to(DEVICE), clips.to(DEVICE)
    ids = torch.randint(3, config.vocab_size, (batch, text_len + 2))
    ids[:, 0] = 1
    ids[:, 1] = torch.tensor([IMAGE_TOKEN_INDEX if s else 5 for s in sizes])
    labels = torch.where(ids > 2, ids, IGNORE_INDEX)
    ids, labels = ids.to(DEVICE), labels.to(DEVICE)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=images, images_clip=clips)
    with torch.no_grad():
        tokens = int(model(**inputs).attention_mask.sum())

    def run():
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    t = timed(run, repeats)
    n_img = sum(s is not None for s in sizes)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if DEVICE.type == "cuda" else ""
    print(f"{name} ({n_params:.1f}M params, batch {batch}: {n_img} images + {batch - n_img} text-only, "
          f"{tokens} tokens), fwd+bwd{', checkpointing' if checkpointing else ''}{mem}")
    print(f"  {t:7.3f} s  {n_img / t:7.2f} images/s  {tokens / t:9.0f} tokens/s")


def cpu_timed(fns: dict, repeats: int) -> dict:
    """Median CPU seconds (this process, 1 thread) of each fn, run alternately after one warm-up
    each: on a shared, loaded machine the CPU time moves far less than the wall time."""
    import statistics

    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for i in range(repeats):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            t0 = time.process_time()
            fns[k]()
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _peak_rss_growth(fn) -> tuple[float, float]:
    """(peak RSS growth in MiB, CPU seconds) of fn() run in a forked child (a fresh peak per variant)."""
    import multiprocessing as mp
    import resource

    def child(conn):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.process_time()
        fn()
        dt = time.process_time() - t0
        conn.send(((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, dt))

    ctx = mp.get_context("fork")
    parent, sent = ctx.Pipe()
    proc = ctx.Process(target=child, args=(sent,))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def bench_lm_loss(positions: int, hidden: int, vocab: int, chunk: int) -> None:
    """Full logits vs chunked-with-recompute vs fused linear + CE: the model's own code paths."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    torch.manual_seed(0)
    h = torch.randn(positions, hidden)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    labels = torch.randint(0, vocab, (positions,))
    labels[::2] = IGNORE_INDEX  # half the positions have a target (image tokens and prompts have none)

    def full():
        x = h.clone().requires_grad_()
        loss = F.cross_entropy(head(x).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        loss.backward()
        return loss

    def chunked(fused: bool):
        owner = SimpleNamespace(lm_head=head, loss_chunk_tokens=chunk, loss_fused=fused)

        def run():
            x = h.clone().requires_grad_()
            loss = EveForCausalLM._chunked_lm_loss(owner, x, labels)
            loss.backward()
            return loss
        return run

    ref = full().item()
    for name, fn in (("recompute", chunked(False)), ("fused", chunked(True))):
        head.zero_grad()
        got = fn().item()
        assert abs(got - ref) <= 1e-4 * abs(ref), (name, got, ref)
    print(f"LM loss fwd+bwd, {positions} positions ({positions // 2} with a label), hidden {hidden}, vocab {vocab}, "
          f"chunk {chunk}, cpu fp32 (losses agree first)")
    rows = [("full logits [N, V] (baseline)", full), ("labelled only, chunks recomputed", chunked(False)),
            ("labelled only, fused linear + CE", chunked(True))]
    runs = {label: [] for label, _ in rows}
    for i in range(3):  # alternate the variants; each run in its own forked child
        for label, fn in (rows if i % 2 == 0 else rows[::-1]):
            runs[label].append(_peak_rss_growth(fn))
    base = None
    for label, _ in rows:
        mem = min(r[0] for r in runs[label])
        t = sorted(r[1] for r in runs[label])[1]
        base = base or (mem, t)
        print(f"  {label:34} peak +{mem:7.0f} MiB ({mem / base[0]:.2f}x)  {t:6.3f} CPU s ({base[1] / t:.2f}x speed)")


def _packed_lengths(profile: str, width: int, rows: int, seed: int = 0) -> list[list[int]]:
    """Sample lengths packed into `rows` rows of `width`: sft ~ log-normal (median ~200) text
    conversations, caption ~ 130-650 positions (an image of 126-601 tokens + a short caption)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        row, used = [], 0
        while True:
            n = max(16, round(rng.lognormvariate(5.3, 0.8))) if profile == "sft" else rng.randint(130, 650)
            n = min(n, width)  # a row always holds at least one sample
            if used + n > width:
                break
            row.append(n)
            used += n
        out.append(row)
    return out


def bench_attention(width: int, rows: int, repeats: int) -> None:
    """The decoder on packed rows: masked SDPA vs varlen (fwd + bwd), and the forward of all three."""
    from eve_model import attention as attn

    config = get_preset("tiny", hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=width)
    torch.manual_seed(0)
    model = EveForCausalLM(config).train()
    attn.register()
    for profile in ("sft", "caption"):
        layout = _packed_lengths(profile, width, rows)
        seg = attn.segments_of(layout, width, "cpu")
        # positions restart at 0 for every sample and for the row's trailing padding
        pos = torch.stack([torch.cat([torch.arange(n) for n in row + [width - sum(row)] if n > 0]) for row in layout])
        real = torch.stack([torch.arange(width) < sum(row) for row in layout])
        x = torch.randn(rows, width, config.hidden_size)

        def run(kind: str, backward: bool):
            model.config._attn_implementation = "sdpa" if kind == "sdpa" else attn.EVE_ATTN_IMPL

            def step():
                with torch.set_grad_enabled(backward):
                    if kind == "sdpa":  # today's packed path: transformers builds the dense document mask
                        h = model.model(inputs_embeds=x, attention_mask=None, position_ids=pos,
                                        use_cache=False).last_hidden_state
                    elif kind == "varlen":
                        h = model.model.decode(x, pos, None, eve_segments=seg)[0]
                    else:
                        h = model.model.decode(x, pos, attn.document_block_mask(seg.doc))[0]
                    if backward:
                        model.zero_grad(set_to_none=True)
                        h.square().mean().backward()
                    return h
            return step

        with torch.no_grad():
            ref = run("sdpa", False)()
            for kind in ("varlen", "flex"):
                err = (run(kind, False)() - ref)[real].abs().max().item()
                assert err < 1e-4, (kind, err)
        n_docs = sum(len(r) for r in layout)
        tokens = sum(sum(r) for r in layout)
        print(f"attention, {profile} profile: {rows} rows x {width} positions, {n_docs} samples ({tokens} tokens), "
              f"hidden 256, 4 heads, 2 layers, cpu fp32 (outputs agree first)")
        t = cpu_timed({"sdpa": run("sdpa", True), "varlen": run("varlen", True)}, repeats)
        print(f"  fwd+bwd  masked SDPA {t['sdpa']:6.3f} CPU s   varlen (per-segment) {t['varlen']:6.3f} CPU s   "
              f"speed-up {t['sdpa'] / t['varlen']:.2f}x")
        f = cpu_timed({k: run(k, False) for k in ("sdpa", "varlen", "flex")}, repeats)
        f_base, f_var, f_flex = f["sdpa"], f["varlen"], f["flex"]
        print(f"  forward  masked SDPA {f_base:6.3f} CPU s   varlen {f_var:6.3f} CPU s ({f_base / f_var:.2f}x)   "
              f"flex (eager) {f_flex:6.3f} CPU s ({f_base / f_flex:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--levers-only", action="store_true", help="only the issue-23 lever benchmarks (CPU)")
    parser.add_argument("--skip-levers", action="store_true")
    parser.add_argument("--loss-positions", type=int, default=4096, help="LM-loss benchmark: positions")
    parser.add_argument("--attn-width", type=int, default=2048, help="attention benchmark: packed row width")
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if DEVICE.type == "cpu" and not args.skip_levers:
        bench_lm_loss(args.loss_positions, 512, 32000, 1024)
        bench_attention(args.attn_width, 2, args.repeats)
        if args.levers_only:
            return
    bench_patch_embedding(args.batch, args.repeats)
    if args.skip_models:
        return
    bench_model("tiny model", get_preset("tiny"), 8, 32, args.repeats)
    mid = get_preset(
        "tiny", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096, mm_hidden_size=1024,
        mm_vision_tower="openai/eve-patch14-anypixel-672", image_size=672, image_size_clip=336,
        clip_vision_config=dict(hidden_size=256, intermediate_size=1024, projection_dim=256, num_hidden_layers=4,
                                num_attention_heads=4, image_size=336, patch_size=14, hidden_act="quick_gelu"))
    bench_model("mid-size model", mid, 4, 64, args.repeats)
    if DEVICE.type == "cuda":
        bench_model("small preset", get_preset("small"), 8, 256, args.repeats, checkpointing=True)


if __name__ == "__main__":
    main()
