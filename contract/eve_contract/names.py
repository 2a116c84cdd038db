"""Stage and model-preset names: the one definition (eve_model, the trainer and the operator import it)."""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["prealign", "pretrain", "sft", "sft-hd"]
STAGES: tuple[str, ...] = get_args(Stage)
#: The default chain; `sft-hd` replaces `sft` for the HD model.
DEFAULT_CHAIN: tuple[str, ...] = ("prealign", "pretrain", "sft")
HD_CHAIN: tuple[str, ...] = ("prealign", "pretrain", "sft-hd")
MODEL_PRESETS: tuple[str, ...] = ("tiny", "small", "eve-7b", "eve-7b-hd")
