"""Whether a pipeline may run on this cluster at all: the install-time rules, checked as data.

Pure. The operator asks before it starts a pipeline (a refusal: status Failed with the reason,
condition Admitted=False, a Warning Event naming the field; nothing is created) and asks the
pod policy again of every job it builds. `eve-platform submit --dry-run` asks the same.

    rule                          reason                 chart values
    pod policy                    PodPolicyViolation     podPolicy.*
    the operator's S3 identity    CredentialsRefused     storage.s3.*, operator.s3.*
    required gang scheduler       SchedulingRequired     scheduling.gangScheduler, scheduling.required
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eve_operator import pod_policy
from eve_operator.defaults import OperatorDefaults
from eve_operator.spec import PipelineSpec

CONDITION = "Admitted"


@dataclass(frozen=True)
class Refusal:
    reason: str
    """PodPolicyViolation | CredentialsRefused | SchedulingRequired (the Event's and condition's reason)."""
    message: str
    """Starts with "invalid spec: " (a user's fault: exit 2, never retried; fixing the spec re-admits it)."""


class PolicyError(ValueError):
    """A job the operator built breaks the pod policy; carries the refusal."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def refuse(defaults: OperatorDefaults, spec: PipelineSpec, namespace: str | None) -> Refusal | None:
    """The first rule the pipeline breaks, else None."""
    if violations := pod_policy.check_pipeline(spec, defaults.pod_policy, namespace=namespace):
        return Refusal("PodPolicyViolation", "invalid spec: " + pod_policy.refusal(violations, defaults.pod_policy))
    if why := defaults.scheduling_refusal(spec):
        return Refusal("SchedulingRequired", f"invalid spec: {why}")
    if why := defaults.credentials_refusal(spec):
        return Refusal("CredentialsRefused", f"invalid spec: {why}")
    return None


def check_job(defaults: OperatorDefaults, job: dict[str, Any], namespace: str | None,
              spec: PipelineSpec | None = None) -> None:
    """Raises PolicyError when a rendered job's pods break the pod policy (the second line of defence:
    the podTemplate was checked at admission, this checks what the operator actually built). The
    pipeline's own S3 Secret (spec.s3.credentialsSecret), which the operator references, is allowed."""
    own = [spec.s3.credentials_secret] if spec is not None and spec.s3.credentials_secret else []
    if violations := pod_policy.check_job(job, defaults.pod_policy, namespace=namespace, own_secrets=own):
        name = (job.get("metadata") or {}).get("name")
        raise PolicyError(Refusal("PodPolicyViolation", f"invalid spec: {job.get('kind')} {name}: "
                                  + pod_policy.refusal(violations, defaults.pod_policy)))


def condition(refusal: Refusal | None, now_iso: str) -> dict[str, Any]:
    """The status condition `Admitted`."""
    if refusal is None:
        return {"type": CONDITION, "status": "True", "reason": "Admitted", "lastTransitionTime": now_iso,
                "message": "the pipeline meets the cluster's pod policy, S3 and scheduling rules"}
    return {"type": CONDITION, "status": "False", "reason": refusal.reason, "lastTransitionTime": now_iso,
            "message": refusal.message[:1000]}


__all__ = ["Refusal", "PolicyError", "refuse", "check_job", "condition", "CONDITION"]
