"""The "what will be trained" block of each stage, for `submit` (and its dry run) and `describe`.

Per stage: where the LLM, the tokenizer and the CLIP teacher come from, trainable and frozen
parameters and the learning rate of each module group, world size, batches and length (the
content is eve_trainer.stage_summary's; the trainer logs the same block to the stage's MLflow
run). `submit` refuses here (exit 2) what every rank would refuse at start and can be known now:
no tokenizer, a tokenizer of known size that does not fit, a stage that trains the
patch-aligning loss without a teacher.
"""

from __future__ import annotations

from typing import Any

from eve_trainer.config import ConfigError
from eve_trainer.stage_summary import StageSummary, summarize

from eve_operator.cli.common import fail, info
from eve_operator.spec import PipelineSpec


def stage_blocks(name: str, spec: PipelineSpec) -> list[StageSummary]:
    """The block of every stage the pipeline runs; ConfigError naming the stage when one cannot run."""
    from eve_operator.jobspec import resolve_stage_config
    from eve_operator.pipeline import SubmitJob, job_name

    chain = spec.chain()
    blocks = []
    for stage in chain:
        init_from = spec.planned_init_from(name, stage)
        chained = init_from is not None and (stage != chain[0] or init_from != spec.init_from)
        try:
            cfg = resolve_stage_config(name, spec, SubmitJob(stage, 1, job_name(name, stage, 1), init_from, None))
            res = spec.resources_for(stage)
            blocks.append(summarize(cfg, world_size=res.nodes * res.procs_per_node, nodes=res.nodes,
                                    procs_per_node=res.procs_per_node, chained=chained))
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith(f"stage {stage} ") else f"stage {stage}: {message}") \
                from None
    return blocks


def show_for_submit(name: str, spec: PipelineSpec, *, quiet: bool = False) -> None:
    """Print every stage's block to stderr (not with `quiet`: -o json|yaml), or fail with exit 2 when a
    stage cannot train what it names."""
    try:
        blocks = stage_blocks(name, spec)
    except ConfigError as err:
        fail(str(err))
    if quiet:
        return
    info("\n\n".join("\n".join(block.lines()) for block in blocks))


def show_for_describe(obj: dict[str, Any]) -> None:
    """Print the blocks of a pipeline object (the operator's defaults it reported included)."""
    raw = dict(obj.get("spec") or {})
    effective = (obj.get("status") or {}).get("effective") or {}
    for key, entry in effective.items():  # trainer defaults the operator applied (eve_operator.defaults)
        if key.startswith("overrides.") and entry.get("value") and entry.get("source") != "pipeline":
            raw["overrides"] = {**(raw.get("overrides") or {}), key.removeprefix("overrides."): entry["value"]}
    print("\nWhat will be trained:")
    try:
        blocks = stage_blocks(obj["metadata"]["name"], PipelineSpec.model_validate(raw))
    except (ConfigError, ValueError) as err:
        print(f"  (cannot be resolved: {str(err).splitlines()[0]})")
        return
    print("\n\n".join("\n".join(block.lines()) for block in blocks))


def comment_for_config(cfg: Any) -> str:
    """`config show`'s note: the stage's block (world size 1), or why submit would refuse it, as YAML
    comments (a stage on its own: its init_from is taken as given, not as a previous stage's export)."""
    try:
        lines = summarize(cfg, world_size=1).lines()
    except ConfigError as err:
        lines = [f"submit would refuse this stage: {err}"]
    return "\n".join(f"# {line}" for line in lines)
