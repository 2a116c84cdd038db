"""Names and labels of what the platform creates: the one definition.

The operator and the CLI name child jobs with `job_name`, label them with the LABEL_* keys
(the operator's watches select on LABEL_PIPELINE), and check pipeline names with
`validate_pipeline_name` before anything is created.
"""

from __future__ import annotations

import hashlib
import re

LABEL_PIPELINE = "eve-platform.io/pipeline"
LABEL_STAGE = "eve-platform.io/stage"
LABEL_ATTEMPT = "eve-platform.io/attempt"

#: Pipeline names become job names: a DNS-1035 label, short enough for the suffixes.
PIPELINE_NAME_MAX = 40
#: Child job names stay within this (PyTorchJob pods and Services append -master-0 etc.).
JOB_NAME_MAX = 50
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_pipeline_name(name: str) -> str:
    """`name`, or ValueError naming the rule it breaks."""
    if not _DNS_LABEL.match(name) or len(name) > PIPELINE_NAME_MAX:
        raise ValueError(
            f"name={name!r} must be a DNS-1035 label of at most {PIPELINE_NAME_MAX} characters "
            "(lower-case letters, digits and '-', starting with a letter)")
    return name


def default_pipeline_name(preset: str) -> str:
    """The name `submit` gives a pipeline that has none: eve-tiny, eve-small, eve-7b, eve-7b-hd."""
    name = preset if preset.startswith("eve-") else f"eve-{preset}"
    return name.replace(".", "-").replace("_", "-").lower()


def job_name(pipeline: str, stage: str, attempt: int) -> str:
    """Deterministic child names: <pipeline>-<stage>, then -r<attempt> for retries, within
    JOB_NAME_MAX characters (a long base is cut and given a digest of the whole)."""
    base = f"{pipeline}-{stage}"
    suffix = f"-r{attempt}" if attempt > 1 else ""
    if len(base) + len(suffix) > JOB_NAME_MAX:
        digest = hashlib.sha256(base.encode()).hexdigest()[:6]
        base = f"{base[: JOB_NAME_MAX - len(suffix) - 7].rstrip('-')}-{digest}"
    return base + suffix


def job_labels(pipeline: str, stage: str, attempt: int) -> dict[str, str]:
    """The labels of a stage job (and its pods)."""
    return {LABEL_PIPELINE: pipeline, LABEL_STAGE: stage, LABEL_ATTEMPT: str(attempt)}


__all__ = ["LABEL_PIPELINE", "LABEL_STAGE", "LABEL_ATTEMPT", "PIPELINE_NAME_MAX", "JOB_NAME_MAX",
           "validate_pipeline_name", "default_pipeline_name", "job_name", "job_labels"]
