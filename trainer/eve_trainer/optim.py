"""Optimizer, LR schedule and the DeepSpeed config, built from the typed config.

The schedule is a pure function of the optimizer step, so a restored step count
restores the exact learning rate (the LambdaLR state is saved with the checkpoint too).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from eve_trainer.config import OptimSection, TrainConfig

if TYPE_CHECKING:
    import torch

#: Parameter names that train at `optim.vision_lr` (the reference's vision_tower_lr /
#: mm_projector_lr groups; "vision_tower" also matches the PAL `vision_tower_compressor`).
VISION_LR_KEYS: tuple[str, ...] = ("vision_tower", "mm_projector")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """HF Trainer convention: ceil(ratio x total)."""
    return math.ceil(total_steps * warmup_ratio)


def lr_multiplier(step: int, *, total_steps: int, num_warmup: int, schedule: str = "cosine") -> float:
    """Factor on the base LR for optimizer step `step` (0-based), as in HF get_cosine_schedule_with_warmup."""
    if step < num_warmup:
        return step / max(1, num_warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - num_warmup) / max(1, total_steps - num_warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


class WarmupCosine:
    """A callable object rather than a lambda: LambdaLR saves its __dict__ in state_dict()."""

    def __init__(self, *, total_steps: int, num_warmup: int, schedule: str = "cosine"):
        self.total_steps, self.num_warmup, self.schedule = total_steps, num_warmup, schedule

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, total_steps=self.total_steps, num_warmup=self.num_warmup,
                             schedule=self.schedule)


def param_groups(named_params: list[tuple[str, torch.nn.Parameter]], optim: OptimSection,
                 ) -> list[dict[str, Any]]:
    """Trainable parameters split into the base group (optim.lr) and the vision group (optim.vision_lr).

    Frozen parameters are left out; empty groups are dropped.
    """
    vision_lr = optim.vision_lr if optim.vision_lr is not None else optim.lr
    base, vision = [], []
    base_names, vision_names = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if any(key in name for key in VISION_LR_KEYS):
            vision.append(param)
            vision_names.append(name)
        else:
            base.append(param)
            base_names.append(name)
    groups = [
        {"params": base, "lr": optim.lr, "name": "base", "param_names": base_names},
        {"params": vision, "lr": vision_lr, "name": "vision", "param_names": vision_names},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, optim: OptimSection, *, fused: bool = False) -> torch.optim.Optimizer:
    """torch AdamW over the LR groups; fused=True (CUDA) runs the update as one kernel per group."""
    import torch

    groups = param_groups(list(model.named_parameters()), optim)
    if not groups:
        raise ValueError("no trainable parameters: set_trainable left everything frozen")
    for g in groups:
        g.pop("param_names")
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                             weight_decay=optim.weight_decay, **({"fused": True} if fused else {}))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection, total_steps: int,
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    import torch

    fn = WarmupCosine(total_steps=total_steps, num_warmup=warmup_steps(total_steps, optim.warmup_ratio),
                      schedule=optim.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def deepspeed_config(cfg: TrainConfig, *, world_size: int, bf16: bool, cuda: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config for this run (ZeRO stage from `deepspeed.zero_stage`)."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage > 0:
        # overlap_comm needs CUDA streams; on CPU it only costs memory
        zero.update(overlap_comm=ds.overlap_comm and cuda, contiguous_gradients=True,
                    reduce_bucket_size=int(5e8), allgather_bucket_size=int(5e8))
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True,
                    stage3_param_persistence_threshold=int(1e5))
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    return {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation(world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        # torch AdamW is passed in: DeepSpeed's fused/CPU Adam need compiled ops
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
