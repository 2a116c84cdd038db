"""Stage 1 starts from a plain Llama folder: the LLM weights load by name, the vision parts
start fresh, and (the LLM being frozen in prealign) the exported LLM equals the Llama exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_prealign_from_a_llama_folder_keeps_the_frozen_llm(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from eve_model import get_preset, load_eve_checkpoint
    from eve_trainer.data import write_synthetic_dataset

    tiny = get_preset("tiny")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    torch.manual_seed(3)
    llama = LlamaForCausalLM(LlamaConfig(**{k: getattr(tiny, k) for k in keys}))
    llama.save_pretrained(tmp_path / "llama")
    write_synthetic_dataset(str(tmp_path / "data"), num_samples=16, kind="caption", seed=0)

    result = subprocess.run(
        [sys.executable, "-m", "eve_trainer", "prealign", f"data.urls=[{tmp_path / 'data'}]",
         f"output={tmp_path / 'out'}", f"init_from={tmp_path / 'llama'}", "max_steps=2", "progress=json",
         "data.num_workers=0"],
        capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]

    model, _ = load_eve_checkpoint(tmp_path / "out/default/prealign/export")
    exported, original = model.state_dict(), llama.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in original.items())  # frozen: untouched
    vision = [k for k in exported if "vision_tower" in k or "mm_projector" in k]
    assert vision and not any(k in original for k in vision)  # trained from fresh init
