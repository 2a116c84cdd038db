"""CPU micro-benchmarks of eve_model (forward + backward).

1. Patch embedding (VisionTokenizer: conv + CA1 + CLS/CA2 + SPL) at the real vision width 1024,
   672 px canvas, a batch of mixed aspect ratios: batched ``forward`` vs the per-sample reference
   loop ``forward_reference``; outputs and gradients are checked to agree first.
2. The whole tiny model (preset "tiny") and a mid-size model (512-wide 8-layer LLM, real 1024-wide
   PEL at 672 px, small teacher) - images/s and tokens/s of a training step (fwd + bwd).

3. With ``--device cuda``: the same in bf16 on the GPU, plus the ``small`` preset (1.1B-class LLM,
   real PEL/PAL/CLIP-L teacher at 672 px) with gradient checkpointing.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
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
