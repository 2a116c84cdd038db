"""What a stage will train, known before anything heavy runs (torch-free).

One place decides, for a resolved `TrainConfig`:

* where the LLM comes from (`init_from`, the previous stage's export, or random init);
* which tokenizer the stage uses (`data.tokenizer`, else the LLM folder's, since exports carry
  their tokenizer; `builtin:tiny` only for the random-init test presets) and whether it fits
  the model's embedding;
* where the frozen CLIP teacher of the patch-aligning loss comes from (`model.teacher_path`, the
  init export, random weights for `tiny` only, or nothing when `model.align_loss=false`);
* the trainable and frozen parameter counts of each module group (counted analytically from
  the preset's dimensions, which tests compare with eve_model's real modules) and the learning
  rate of each group (eve_model.stages + eve_trainer.optim rules);
* world size, batches, gradient accumulation and length.

The CLI prints `StageSummary.lines()` at submit, dry run and describe; the trainer logs the same
block to the stage's MLflow run (params `what.*` and the artifact `what_will_be_trained.txt`).
The CLI and operator stay torch-free, so eve_model (which imports torch) is not imported here:
`PRESET_DIMS` repeats the few dimensions of eve_model.presets that the counts need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_trainer.config import ConfigError, TrainConfig

TINY_TOKENIZER = "builtin:tiny"
TINY_VOCAB = 1024  # eve_trainer.data.tokenizer.TINY_VOCAB (an upper bound: the trained BPE may be smaller)
#: presets that are only ever trained from random init (tests, benchmarks): no LLM folder to read a
#: tokenizer from, so without init_from they take builtin:tiny
RANDOM_INIT_PRESETS = ("tiny", "small")
#: presets that may train against a random CLIP teacher: tiny (tests); small only from random init
#: (a benchmark model, random throughout)
RANDOM_TEACHER_PRESETS = ("tiny",)
#: the reference's teacher, named in messages
CLIP_TEACHER_NAME = "clip-vit-large-patch14-336"


@dataclass(frozen=True)
class PresetDims:
    """The dimensions of an eve_model preset that its parameter counts depend on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    mm_hidden_size: int
    patch_stride: int
    align_layer_stride: int
    clip_hidden_size: int
    clip_intermediate_size: int
    clip_num_hidden_layers: int
    clip_image_size: int
    clip_patch_size: int


_VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
_CLIP_L14_336 = dict(clip_hidden_size=1024, clip_intermediate_size=4096, clip_num_hidden_layers=24,
                     clip_image_size=336, clip_patch_size=14)
_VISION_1024 = dict(mm_hidden_size=1024, patch_stride=14, align_layer_stride=4)

#: torch-free copy of eve_model.presets.PRESETS (tests/trainer/test_model_meant.py keeps them equal)
PRESET_DIMS: dict[str, PresetDims] = {
    "tiny": PresetDims(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                       mm_hidden_size=64, patch_stride=14, align_layer_stride=4, clip_hidden_size=64,
                       clip_intermediate_size=128, clip_num_hidden_layers=2, clip_image_size=112,
                       clip_patch_size=14),
    "small": PresetDims(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                        num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
                        **_VISION_1024, **_CLIP_L14_336),
    "eve-7b": PresetDims(**_VICUNA_7B, **_VISION_1024, **_CLIP_L14_336),
    "eve-7b-hd": PresetDims(**_VICUNA_7B, **_VISION_1024, **_CLIP_L14_336),
}

# -- parameter counts ------------------------------------------------------------------------

#: module groups in print order: (label, the parameter-name prefix under `model.`)
GROUPS: tuple[tuple[str, str], ...] = (
    ("PEL (vision tower)", "vision_tower"),
    ("projector", "mm_projector"),
    ("PAL", "vision_tower_compressor"),
    ("LLM", ""),
    ("teacher (CLIP)", "vision_clip"),
)


def group_of(param_name: str) -> str:
    """The GROUPS label of a parameter name of EveForCausalLM (e.g. model.mm_projector.0.weight)."""
    rest = param_name.removeprefix("model.")
    for label, prefix in GROUPS:
        if prefix and rest.split(".", 1)[0] == prefix:
            return label
    return "LLM"


def group_params(dims: PresetDims, *, align_loss: bool = True) -> dict[str, int]:
    """Parameters per module group, as eve_model builds them (PAL and teacher only with the loss)."""
    d, v, i, n_l = dims.hidden_size, dims.vocab_size, dims.intermediate_size, dims.num_hidden_layers
    head = d // dims.num_attention_heads
    kv = dims.num_key_value_heads * head
    layer = 2 * d * d + 2 * d * kv + 3 * d * i + 2 * d  # q, o; k, v; gate, up, down; 2 RMSNorms
    llm = v * d + n_l * layer + d + (0 if dims.tie_word_embeddings else v * d)
    c, p = dims.mm_hidden_size, dims.patch_stride
    attention = (2 * c + c * c) + (2 * c + 2 * c * c) + (c * c + c)  # q (LN + Linear), kv (LN + Linear), proj
    pel = 3 * c * p * p + 2 * c + 2 * attention  # conv, class + split embeddings, CA1, CA2
    projector = c * d + d + d * d + d
    out = {"PEL (vision tower)": pel, "projector": projector, "PAL": 0, "LLM": llm, "teacher (CLIP)": 0}
    if align_loss:
        cc, ci, cl = dims.clip_hidden_size, dims.clip_intermediate_size, dims.clip_num_hidden_layers
        n_align = len(range(0, n_l + 1, dims.align_layer_stride))
        out["PAL"] = n_align * (2 * d + d * cc) + (d * cc + cc) + (cc * cc + cc)
        patches = (dims.clip_image_size // dims.clip_patch_size) ** 2
        embeddings = cc + 3 * cc * dims.clip_patch_size ** 2 + (patches + 1) * cc
        clip_layer = 4 * (cc * cc + cc) + 2 * cc + (cc * ci + ci) + (ci * cc + cc) + 2 * cc
        out["teacher (CLIP)"] = embeddings + 2 * cc + cl * clip_layer + 2 * cc  # pre- and post-LayerNorm
    return out


def group_trainable(group: str, stage: str) -> bool:
    """eve_model.stages.is_trainable per group: prealign trains PEL, projector and PAL; later stages
    everything but the teacher; the teacher never."""
    if group == "teacher (CLIP)":
        return False
    return group != "LLM" if stage == "prealign" else True


def group_lr(group: str, cfg: TrainConfig) -> float:
    """eve_trainer.optim.param_groups: vision_tower* / mm_projector* at optim.vision_lr, the rest at lr."""
    vision = group in ("PEL (vision tower)", "projector", "PAL")
    return (cfg.optim.vision_lr or cfg.optim.lr) if vision else cfg.optim.lr


# -- where the model, tokenizer and teacher come from -----------------------------------------


@dataclass(frozen=True)
class Source:
    where: str  # a URL, builtin:tiny, "random", "none"
    how: str  # why this one: "init_from", "model.teacher_path", "the previous stage's export", ...
    vocab: int | None = None  # tokenizers only, when known before start

    def text(self) -> str:
        return f"{self.where} ({self.how})" if self.how else self.where


def llm_source(cfg: TrainConfig, *, chained: bool = False) -> Source:
    if not cfg.init_from:
        return Source("random init", "no init_from")
    return Source(cfg.init_from, "the previous stage's export" if chained else "init_from")


def tokenizer_source(cfg: TrainConfig, *, chained: bool = False) -> Source:
    """data.tokenizer; else the LLM folder's (init_from, or the previous export, which carries the
    tokenizer it trained with); builtin:tiny for the random-init presets. ConfigError otherwise."""
    if cfg.data.tokenizer:
        return Source(cfg.data.tokenizer, "data.tokenizer", known_vocab(cfg.data.tokenizer))
    if cfg.model.preset == "tiny":  # its exports carry builtin:tiny; building it needs no download
        return Source(TINY_TOKENIZER, "the tiny preset's test tokenizer", TINY_VOCAB)
    if cfg.init_from:
        how = "from the previous stage's export" if chained else "from init_from"
        return Source(cfg.init_from, how, known_vocab(cfg.init_from))
    if cfg.model.preset in RANDOM_INIT_PRESETS:
        return Source(TINY_TOKENIZER, f"random-init {cfg.model.preset}, no init_from", TINY_VOCAB)
    raise ConfigError(
        f"data.tokenizer is not set and there is no init_from to take it from: model.preset={cfg.model.preset} "
        f"trains a {PRESET_DIMS[cfg.model.preset].vocab_size:,}-token LLM; set init_from=<the Vicuna/Llama folder "
        "or an EVE export> (its tokenizer is used), or data.tokenizer=<a tokenizer folder or s3:// URL>")


def known_vocab(spec: str) -> int | None:
    """The vocabulary size of a tokenizer when it can be read without downloading: builtin:tiny, or
    a local folder's tokenizer.json. None for s3:// (checked at trainer start)."""
    if spec == TINY_TOKENIZER:
        return TINY_VOCAB
    if "://" in spec and not spec.startswith("file://"):
        return None
    path = Path(spec.removeprefix("file://")) / "tokenizer.json"
    try:
        data = json.loads(path.read_text())
        vocab = data["model"]["vocab"]
        ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
        ids |= {t["id"] for t in data.get("added_tokens") or []}
        return len(ids)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def teacher_source(cfg: TrainConfig, *, chained: bool = False) -> Source:
    """Where the frozen CLIP teacher's weights come from; ConfigError (with the three ways out) when
    the stage trains the aligning loss against a teacher that would keep random weights."""
    if not cfg.model.align_loss:
        return Source("none", "model.align_loss=false: no patch-aligning loss, no teacher")
    from_export = bool(cfg.init_from) and (chained or cfg.stage != "prealign")
    if cfg.model.teacher_path and not from_export:
        return Source(cfg.model.teacher_path, "model.teacher_path")
    if from_export:  # an EVE export carries the teacher it trained with; the trainer checks it at start
        how = "carried by the previous stage's export" if chained else "carried by the init_from export"
        fill = f"; else model.teacher_path={cfg.model.teacher_path}" if cfg.model.teacher_path else ""
        return Source(cfg.init_from, how + fill)
    if cfg.model.preset in RANDOM_TEACHER_PRESETS:
        return Source("random", "tiny preset: random teacher weights, for tests only")
    if cfg.model.preset in RANDOM_INIT_PRESETS and not cfg.init_from:
        return Source("random", f"random-init {cfg.model.preset}: a benchmark model, random throughout")
    raise ConfigError(missing_teacher_message(cfg.stage, cfg.model.preset))


def missing_teacher_message(stage: str, preset: str) -> str:
    return (f"stage {stage} trains the patch-aligning loss (the reference's --requires_cliploss in every stage), "
            f"but no CLIP teacher is set, so the teacher would keep random weights (allowed only for the tiny "
            f"preset; model.preset={preset}). Fix it one of three ways: set model.teacher_path=<a CLIPVisionModel "
            f"folder or s3:// URL, e.g. s3://<bucket>/models/{CLIP_TEACHER_NAME}>; or install the chart with "
            "trainer.teacherPath=<that URL>, the operator's default for EvePipelines that set no teacher "
            "(kubectl apply; the CLI cannot see it, so pass model.teacher_path here); or turn the loss off "
            "with model.align_loss=false (not the reference recipe)")


def check_tokenizer_fits(cfg: TrainConfig, vocab: int, spec: str) -> None:
    """ConfigError naming both sizes when a tokenizer of `vocab` tokens does not fit the model: more
    tokens than embedding rows, or (the 7B presets, whose embedding is the LLM's) another size than
    the LLM's vocabulary (builtin:tiny with eve-7b, say)."""
    rows = PRESET_DIMS[cfg.model.preset].vocab_size
    what = (f"the tokenizer {spec} has {vocab:,} tokens but model.preset={cfg.model.preset} has {rows:,} "
            "embedding rows")
    if vocab > rows:
        raise ConfigError(f"{what}: token ids past the embedding cannot be trained; use the LLM's own tokenizer "
                          "(leave data.tokenizer unset to take init_from's) or the matching model.preset")
    if vocab != rows and cfg.model.preset not in RANDOM_INIT_PRESETS:
        raise ConfigError(f"{what}: not the vocabulary the LLM was trained with; use the LLM's own tokenizer "
                          "(leave data.tokenizer unset to take init_from's)")


def check_model_meant(cfg: TrainConfig, *, chained: bool = False) -> list[str]:
    """What can be known without downloading: ConfigError for a missing tokenizer or teacher, or a
    tokenizer of known size that does not fit; returns warning lines (random teacher, loss off)."""
    tokenizer = tokenizer_source(cfg, chained=chained)
    if tokenizer.vocab is not None:
        check_tokenizer_fits(cfg, tokenizer.vocab, tokenizer.where)
    teacher = teacher_source(cfg, chained=chained)
    warnings = []
    if teacher.where == "random":
        warnings.append(f"stage {cfg.stage}: the CLIP teacher keeps random weights ({teacher.how}); "
                        "set model.teacher_path for a real teacher")
    if not cfg.model.align_loss:
        warnings.append(f"stage {cfg.stage}: model.align_loss=false: the patch-aligning loss is off (the "
                        "reference trains it in every stage)")
    return warnings


# -- the block ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRow:
    name: str
    params: int
    trainable: bool
    lr: float | None


@dataclass
class StageSummary:
    stage: str
    preset: str
    llm: Source
    tokenizer: Source
    teacher: Source
    align_loss: bool
    groups: list[GroupRow]
    world_size: int
    nodes: int | None
    procs_per_node: int | None
    global_batch: int
    micro_batch: int
    grad_accum: int | None
    length: str
    warnings: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(g.params for g in self.groups if g.trainable)

    @property
    def frozen(self) -> int:
        return sum(g.params for g in self.groups if not g.trainable)

    def lines(self) -> list[str]:
        vocab = (f", {self.tokenizer.vocab:,} tokens" if self.tokenizer.vocab is not None
                 else ", vocabulary checked at start")
        world = f"{self.world_size}" + (f" ({self.nodes} node(s) x {self.procs_per_node})" if self.nodes else "")
        out = [f"stage {self.stage} (model.preset={self.preset}): what will be trained",
               f"  LLM:           {self.llm.text()}",
               f"  tokenizer:     {self.tokenizer.text()}{vocab}",
               f"  teacher:       {self.teacher.text()}",
               f"  aligning loss: {'on' if self.align_loss else 'off'}",
               f"  {'parameters':<22}{'trainable':>15}{'frozen':>15}  lr"]
        for g in self.groups:
            if not g.params:
                continue
            lr = f"{g.lr:g}" if g.trainable and g.lr is not None else "-"
            out.append(f"    {g.name:<20}{g.params if g.trainable else 0:>15,}{0 if g.trainable else g.params:>15,}  {lr}")
        out.append(f"    {'total':<20}{self.trainable:>15,}{self.frozen:>15,}")
        ga = f", gradient accumulation {self.grad_accum}" if self.grad_accum is not None else ""
        out.append(f"  batch:         world size {world}, global {self.global_batch}, micro {self.micro_batch}{ga}")
        out.append(f"  length:        {self.length}")
        out += [f"  warning: {w}" for w in self.warnings]
        return out

    def text(self) -> str:
        return "\n".join(self.lines()) + "\n"

    def params(self) -> dict[str, Any]:
        """The block as MLflow params (`what.*` once flattened)."""
        out: dict[str, Any] = {
            "llm": self.llm.text(), "tokenizer": self.tokenizer.text(),
            "tokenizer_vocab": self.tokenizer.vocab if self.tokenizer.vocab is not None else "checked at start",
            "teacher": self.teacher.text(), "aligning_loss": "on" if self.align_loss else "off",
            "trainable_params": self.trainable, "frozen_params": self.frozen,
            "world_size": self.world_size, "global_batch": self.global_batch, "micro_batch": self.micro_batch,
            "gradient_accumulation": self.grad_accum if self.grad_accum is not None else "", "length": self.length,
        }
        for g in self.groups:
            key = g.name.split(" ")[0].lower()
            out[f"{key}_trainable"] = g.params if g.trainable else 0
            out[f"{key}_frozen"] = 0 if g.trainable else g.params
            out[f"{key}_lr"] = g.lr if g.trainable and g.params else "-"
        return out


def summarize(cfg: TrainConfig, *, world_size: int, nodes: int | None = None, procs_per_node: int | None = None,
              chained: bool = False, total_steps: int | None = None, tokenizer: Source | None = None,
              teacher: Source | None = None, counts: dict[str, int] | None = None) -> StageSummary:
    """The block for one stage. The trainer passes what it found at start (the tokenizer's real size,
    the teacher it loaded, the model's real counts); the CLI lets them be derived from the config.
    Raises ConfigError like check_model_meant."""
    warnings = check_model_meant(cfg, chained=chained) if tokenizer is None or teacher is None else []
    tokenizer = tokenizer or tokenizer_source(cfg, chained=chained)
    teacher = teacher or teacher_source(cfg, chained=chained)
    counts = counts or group_params(PRESET_DIMS[cfg.model.preset], align_loss=cfg.model.align_loss)
    groups = [GroupRow(label, counts.get(label, 0), group_trainable(label, cfg.stage),
                       group_lr(label, cfg) if group_trainable(label, cfg.stage) else None) for label, _ in GROUPS]
    try:
        grad_accum: int | None = cfg.gradient_accumulation(world_size)
    except ConfigError:
        grad_accum = None  # the job spec reports it with the world size
    if total_steps is not None:
        length = f"{total_steps:,} steps" + (" (max_steps)" if cfg.max_steps else f" ({cfg.epochs} epoch(s) of the data)")
    elif cfg.max_steps:
        length = f"{cfg.max_steps:,} steps (max_steps)"
    else:
        length = f"{cfg.epochs} epoch(s) of the data (steps known at start, from the dataset's index)"
    return StageSummary(stage=cfg.stage, preset=cfg.model.preset, llm=llm_source(cfg, chained=chained),
                        tokenizer=tokenizer, teacher=teacher, align_loss=cfg.model.align_loss, groups=groups,
                        world_size=world_size, nodes=nodes, procs_per_node=procs_per_node,
                        global_batch=cfg.global_batch_size, micro_batch=cfg.micro_batch_size, grad_accum=grad_accum,
                        length=length, warnings=warnings)


__all__ = ["PRESET_DIMS", "PresetDims", "GROUPS", "Source", "StageSummary", "check_model_meant",
           "check_tokenizer_fits", "group_of", "group_params", "known_vocab", "missing_teacher_message",
           "summarize", "teacher_source", "tokenizer_source"]
