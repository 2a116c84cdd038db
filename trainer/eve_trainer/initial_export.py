"""The model a stage starts from without init_from, as an export folder: the "before training" baseline.

    python -m eve_trainer.initial_export <folder> [--preset tiny] [--seed 42] [--tokenizer builtin:tiny]

The weights are the trainer's random initialisation (the same seeding, `Trainer._seed_everything`,
then `EveForCausalLM(get_preset(preset))`), saved with the tokenizer and `preprocessor_config.json`
like a stage export, so `eve-eval` and `eve_model.inference.load_export` read it. `make demo` scores
it beside the trained model.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def write_initial_export(folder: str | Path, *, preset: str = "tiny", seed: int = 42,
                         tokenizer: str = "builtin:tiny") -> Path:
    import numpy as np
    import torch

    from eve_model import EveForCausalLM, EveImageProcessor, get_preset
    from eve_model.inference import PROCESSOR_FILE, processor_config
    from eve_trainer.data import load_tokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    config = get_preset(preset)
    EveForCausalLM(config).save_pretrained(out)
    load_tokenizer(tokenizer).save_pretrained(out)
    (out / PROCESSOR_FILE).write_text(json.dumps(processor_config(EveImageProcessor.from_config(config)), indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eve_trainer.initial_export", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tokenizer", default="builtin:tiny")
    args = parser.parse_args(argv)
    print(write_initial_export(args.folder, preset=args.preset, seed=args.seed, tokenizer=args.tokenizer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
