"""The pure state machine: every transition of decide(), as data."""

from __future__ import annotations

from typing import Any

import pytest

from eve_operator.pipeline import (
    COMPLETE_GRACE_S,
    STARTUP_GRACE_S,
    Beat,
    Emit,
    EndStageRun,
    Observation,
    PipelineStatus,
    SetSuspended,
    StageComplete,
    StopJob,
    SubmitJob,
    decide,
    initial_status,
    job_name,
    parent_run_params,
    parent_run_tags,
)
from eve_operator.spec import PipelineSpec

NOW = 1_000_000.0
EXPORT = "s3://ckpt/eve/demo/{}/export"


def spec(**extra: Any) -> PipelineSpec:
    return PipelineSpec.model_validate({"output": "s3://ckpt/eve", "maxAttempts": 2, **extra})


def done(stage: str, run_id: str | None = None) -> StageComplete:
    return StageComplete(EXPORT.format(stage), run_id)


def step(sp: PipelineSpec, status: PipelineStatus, obs: Observation = Observation(), now: float = NOW):
    d = decide("demo", sp, status, obs, now)
    return d.status, d.actions


def submits(actions: list) -> list[SubmitJob]:
    return [a for a in actions if isinstance(a, SubmitJob)]


def reasons(actions: list) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Emit)]


def started(sp: PipelineSpec | None = None) -> PipelineStatus:
    """A pipeline whose first stage was submitted."""
    status, _ = step(sp or spec(), PipelineStatus())
    return status


def test_first_pass_submits_the_first_stage() -> None:
    status, actions = step(spec(), PipelineStatus())
    assert [s.name for s in status.stages] == ["prealign", "pretrain", "sft"]
    assert status.phase == "Running" and status.current_stage == "prealign"
    assert submits(actions) == [SubmitJob("prealign", 1, "demo-prealign", None, None)]
    assert status.stages[0].state == "Submitted" and status.stages[0].started_at == NOW
    assert reasons(actions) == ["StageSubmitted"]


def test_init_from_is_used_by_the_first_stage() -> None:
    status, actions = step(spec(initFrom="s3://llama/7b"), PipelineStatus())
    assert submits(actions)[0].init_from == "s3://llama/7b"


def test_mid_chain_start_uses_the_previous_export() -> None:
    status, actions = step(spec(start="sft"), PipelineStatus(), Observation(previous_export=done("pretrain")))
    assert submits(actions)[0].init_from == EXPORT.format("pretrain")
    assert reasons(actions) == ["InitFound", "StageSubmitted"]


def test_mid_chain_start_without_a_previous_export_fails() -> None:
    status, actions = step(spec(start="sft"), PipelineStatus())
    assert status.phase == "Failed" and "no complete pretrain export" in status.message
    assert not submits(actions) and reasons(actions) == ["PipelineFailed"]


def test_suspended_spec_submits_suspended() -> None:
    status, actions = step(spec(suspend=True), PipelineStatus())
    assert status.phase == "Suspended" and len(submits(actions)) == 1


def test_pending_job_keeps_running_phase() -> None:
    status, actions = step(spec(), started(), Observation(job="Pending"))
    assert status.phase == "Running" and status.stages[0].state == "Submitted" and actions == []


def test_running_job_marks_the_stage_running_once() -> None:
    status, actions = step(spec(), started(), Observation(job="Running"))
    assert status.stages[0].state == "Running" and reasons(actions) == ["StageRunning"]
    _, again = step(spec(), status, Observation(job="Running"))
    assert again == []


def test_absent_job_is_recreated_with_the_same_name() -> None:
    status, actions = step(spec(), started(), Observation(job="Absent"))
    assert submits(actions) == [SubmitJob("prealign", 1, "demo-prealign", None, None)]


def test_verified_manifest_finishes_the_stage_and_submits_the_next() -> None:
    status, actions = step(spec(), started(), Observation(job="Succeeded", complete=done("prealign", "run-1")))
    first = status.stages[0]
    assert first.state == "Succeeded" and first.checkpoint == EXPORT.format("prealign")
    assert first.mlflow_run_id == "run-1" and first.finished_at == NOW
    assert submits(actions) == [SubmitJob("pretrain", 1, "demo-pretrain", EXPORT.format("prealign"), "run-1")]
    assert status.current_stage == "pretrain" and reasons(actions) == ["StageSucceeded", "StageSubmitted"]


def test_the_stage_end_validation_loss_reaches_the_status_and_the_transition_line() -> None:
    with_val = StageComplete(EXPORT.format("prealign"), "run-1", val_loss=0.51234, val_step=40)
    status, actions = step(spec(), started(), Observation(job="Succeeded", complete=with_val))
    first = status.stages[0]
    assert (first.val_loss, first.val_step) == (0.51234, 40)
    assert status.model_dump(by_alias=True)["stages"][0]["valLoss"] == 0.51234
    (line,) = [a.message for a in actions if isinstance(a, Emit) and a.reason == "StageSucceeded"]
    assert line == f"stage prealign complete: {EXPORT.format('prealign')} (validation loss 0.5123 at step 40)"
    status, actions = step(spec(), started(), Observation(job="Succeeded", complete=done("prealign")))
    assert status.stages[0].val_loss is None and "validation" not in " ".join(a.message for a in actions
                                                                             if isinstance(a, Emit))


def test_manifest_counts_even_if_the_job_is_gone() -> None:
    status, actions = step(spec(), started(), Observation(job="Absent", complete=done("prealign")))
    assert status.stages[0].state == "Succeeded" and submits(actions)[0].stage == "pretrain"


def test_succeeded_job_without_manifest_waits_within_the_grace() -> None:
    status, actions = step(spec(), started(), Observation(job="Succeeded", job_finished_at=NOW - 10))
    assert status.phase == "Running" and "waiting" in status.stages[0].message
    assert not submits(actions)


def test_succeeded_job_without_manifest_after_the_grace_retries() -> None:
    late = NOW - COMPLETE_GRACE_S - 1
    status, actions = step(spec(), started(), Observation(job="Succeeded", job_finished_at=late))
    assert submits(actions) == [SubmitJob("prealign", 2, "demo-prealign-r2", None, None)]
    assert "StageRetry" in reasons(actions)


def test_failed_job_retries_with_a_new_attempt_name() -> None:
    status, actions = step(spec(), started(), Observation(job="Failed", job_message="OOMKilled"))
    assert status.stages[0].attempt == 2 and status.stages[0].job_name == "demo-prealign-r2"
    assert "OOMKilled" in status.stages[0].message and status.phase == "Running"
    retry = [a for a in actions if isinstance(a, Emit) and a.reason == "StageRetry"][0]
    assert retry.type == "Warning"


def test_failed_job_at_max_attempts_fails_the_pipeline() -> None:
    status, _ = step(spec(), started(), Observation(job="Failed", job_message="x"))
    status, actions = step(spec(), status, Observation(job="Failed", job_message="backoff limit"))
    assert status.phase == "Failed" and status.stages[0].state == "Failed"
    assert "backoff limit" in status.message and "attempt 2 of 2" in status.message
    assert reasons(actions) == ["PipelineFailed"] and not submits(actions)


def test_suspend_then_resume() -> None:
    status, actions = step(spec(suspend=True), started(), Observation(job="Running"))
    assert status.phase == "Suspended" and SetSuspended("demo-prealign", True) in actions
    status, actions = step(spec(suspend=True), status, Observation(job="Suspended"))
    assert status.phase == "Suspended" and actions == []
    status, actions = step(spec(), status, Observation(job="Suspended"))
    assert status.phase == "Running" and SetSuspended("demo-prealign", False) in actions
    assert reasons(actions) == ["Resumed"]


def test_last_stage_complete_succeeds_the_pipeline() -> None:
    sp = spec(until="prealign")
    status, actions = step(sp, started(sp), Observation(job="Succeeded", complete=done("prealign")))
    assert status.phase == "Succeeded" and status.current_stage is None
    assert EXPORT.format("prealign") in status.message and reasons(actions)[-1] == "PipelineSucceeded"


def test_done_pipelines_do_nothing() -> None:
    for phase in ("Succeeded", "Failed"):
        status = initial_status(spec()).model_copy(update={"phase": phase})
        new, actions = step(spec(), status, Observation(job="Failed"))
        assert new == status and actions == []


def test_all_stages_succeeded_without_phase_is_succeeded() -> None:
    status = initial_status(spec())
    for s in status.stages:
        s.state = "Succeeded"
    new, actions = step(spec(), status)
    assert new.phase == "Succeeded" and actions == []


def test_decide_does_not_mutate_its_input() -> None:
    status = started()
    before = status.model_copy(deep=True)
    step(spec(), status, Observation(job="Failed"))
    assert status == before


def test_status_dumps_with_camel_case_aliases() -> None:
    dumped = started().model_dump(by_alias=True, mode="json")
    assert dumped["currentStage"] == "prealign" and dumped["stages"][0]["jobName"] == "demo-prealign"
    assert PipelineStatus.model_validate(dumped) == started()


@pytest.mark.parametrize(("pipeline", "stage", "attempt", "expected"), [
    ("demo", "prealign", 1, "demo-prealign"),
    ("demo", "sft-hd", 3, "demo-sft-hd-r3"),
])
def test_job_names(pipeline: str, stage: str, attempt: int, expected: str) -> None:
    assert job_name(pipeline, stage, attempt) == expected


def test_long_job_names_are_hashed_within_50_characters() -> None:
    name = job_name("a" * 40, "pretrain", 12)
    assert len(name) <= 50 and name.endswith("-r12") and name == job_name("a" * 40, "pretrain", 12)


def test_permanent_failure_fails_at_once_without_retry() -> None:
    status, actions = step(spec(), started(), Observation(job="Failed", job_message="rank 0 exited with code 2",
                                                          job_exit_code=2))
    assert status.phase == "Failed" and "permanently" in status.message
    assert not [a for a in actions if isinstance(a, SubmitJob)]


def test_the_failure_is_a_field_with_its_class_and_exit_code() -> None:
    status, _ = step(spec(), started(), Observation(job="Failed", job_message="bad key", job_exit_code=2))
    assert status.model_dump(by_alias=True)["failure"] == {"class": "permanent", "exitCode": 2,
                                                           "message": status.message}
    # 255 is retryable: a new attempt, then (the attempts spent) a transient failure
    status, actions = step(spec(), started(), Observation(job="Failed", job_message="exited with code 255",
                                                          job_exit_code=255))
    assert status.phase == "Running" and status.failure is None and [a.attempt for a in actions
                                                                      if isinstance(a, SubmitJob)] == [2]
    status, _ = step(spec(), status, Observation(job="Failed", job_message="exited with code 255",
                                                 job_exit_code=255))
    assert status.phase == "Failed" and status.failure is not None
    assert (status.failure.failure_class, status.failure.exit_code) == ("transient", 255)


def test_pending_and_running_jobs_explain_themselves_in_the_stage_message() -> None:
    status, _ = step(spec(), started(), Observation(job="Pending", job_message="waiting for all 4 pods"))
    assert status.stage("prealign").message == "waiting for all 4 pods" and status.phase == "Running"
    status, _ = step(spec(), status, Observation(job="Running"))
    assert status.stage("prealign").message == ""


# -- the stall rule ----------------------------------------------------------------------

CPU2 = {"resources": {"gpusPerNode": 0, "nprocPerNode": 2}}  # world size 2


def running(steps: dict[int, int], phase: str = "train") -> Observation:
    return Observation(job="Running", beats=tuple(Beat(r, s, NOW, phase) for r, s in steps.items()))


def at(sp: PipelineSpec, status: PipelineStatus, obs: Observation, t: float):
    return step(sp, status, obs, NOW + t)


def test_the_stall_clock_starts_when_the_job_is_first_seen_running() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), Observation(job="Pending"), 0)
    assert status.stages[0].progress_at is None  # pending (gang scheduling) is not a stall
    status, _ = at(sp, status, Observation(job="Running"), 100)
    assert status.stages[0].progress_at == NOW + 100 and status.stages[0].step is None


def test_no_heartbeat_within_the_start_up_grace_is_a_stall() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), Observation(job="Running"), 0)
    status, actions = at(sp, status, Observation(job="Running"), STARTUP_GRACE_S - 1)
    assert not submits(actions)  # imports, model load, rendezvous: at least STARTUP_GRACE_S
    status, actions = at(sp, status, Observation(job="Running"), STARTUP_GRACE_S)
    assert StopJob("demo-prealign", status.stages[0].message) in actions
    assert "no rank wrote a heartbeat" in status.stages[0].message and "ranks 0-1" in status.stages[0].message
    assert submits(actions) == [SubmitJob("prealign", 2, "demo-prealign-r2", None, None)]


def test_start_up_and_checkpoints_get_the_start_up_grace_and_a_phase_change_is_progress() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), running({0: 0, 1: 0}, "startup"), 0)  # beats from the first second
    status, actions = at(sp, status, running({0: 0, 1: 0}, "startup"), STARTUP_GRACE_S - 1)
    assert not submits(actions) and status.stages[0].trainer_phase == "startup"
    status, actions = at(sp, status, running({0: 0, 1: 0}), STARTUP_GRACE_S)  # training: the clock restarts
    assert not submits(actions) and status.stages[0].progress_at == NOW + STARTUP_GRACE_S
    status, _ = at(sp, status, running({0: 2, 1: 2}, "checkpoint"), 1000)
    status, actions = at(sp, status, running({0: 2, 1: 2}, "checkpoint"), 1000 + STARTUP_GRACE_S - 1)
    assert not submits(actions)
    status, actions = at(sp, status, running({0: 2, 1: 2}, "checkpoint"), 1000 + STARTUP_GRACE_S)
    assert "ranks stuck in checkpoint at step 2" in status.stages[0].message and submits(actions)


def test_a_step_that_advances_resets_the_clock() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), running({0: 3, 1: 3}), 0)
    status, actions = at(sp, status, running({0: 4, 1: 3}), 50)
    assert status.stages[0].step == 4 and status.stages[0].progress_at == NOW + 50
    status, actions = at(sp, status, running({0: 4, 1: 4}), 109)
    assert not submits(actions) and status.stages[0].progress_at == NOW + 50


def test_a_stall_stops_the_job_closes_its_run_and_retries_from_the_checkpoint() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), running({0: 3, 1: 3}), 0)
    status, actions = at(sp, status, running({0: 7, 1: 7}), 10)
    status, actions = at(sp, status, running({0: 7, 1: 7}), 70)
    reason = next(a.message for a in actions if isinstance(a, Emit) and a.reason == "StageStalled")
    assert "no rank's step advanced past 7 for 60s" in reason and "all 2 ranks stopped at step 7" in reason
    assert actions[:2] == [StopJob("demo-prealign", reason), EndStageRun("prealign", "KILLED", reason)]
    assert reasons(actions) == ["StageStalled", "StageRetry"]
    assert submits(actions) == [SubmitJob("prealign", 2, "demo-prealign-r2", None, None)]
    first = status.stages[0]
    assert (first.attempt, first.state, first.step, first.progress_at) == (2, "Submitted", None, None)
    assert status.phase == "Running" and reason in first.message


def test_the_stall_message_names_the_ranks_behind_and_the_silent_ones() -> None:
    sp = spec(stallTimeoutSeconds=60, resources={"gpusPerNode": 0, "nprocPerNode": 4})
    status, _ = at(sp, started(sp), running({0: 9, 1: 8, 2: 9}), 0)
    status, actions = at(sp, status, running({0: 9, 1: 8, 2: 9}), 61)
    reason = status.stages[0].message
    assert "past 9" in reason and "ranks 1 stopped at step 8" in reason and "ranks 3 wrote no heartbeat" in reason


def test_a_stall_on_the_last_attempt_fails_the_pipeline_and_still_stops_the_job() -> None:
    sp = spec(stallTimeoutSeconds=60, maxAttempts=1, **CPU2)
    status, _ = at(sp, started(sp), running({0: 1, 1: 1}), 0)
    status, actions = at(sp, status, running({0: 1, 1: 1}), 60)
    assert status.phase == "Failed" and "stalled" in status.message and "attempt 1 of 1" in status.message
    assert status.failure is not None and status.failure.failure_class == "stalled"
    assert [type(a) for a in actions] == [StopJob, EndStageRun, Emit, Emit] and not submits(actions)


def test_the_stage_timeout_overrides_the_pipeline_and_zero_turns_it_off() -> None:
    sp = spec(stallTimeoutSeconds=600, stages={"prealign": {"stallTimeoutSeconds": 30}}, **CPU2)
    status, _ = at(sp, started(sp), running({0: 1, 1: 1}), 0)
    _, actions = at(sp, status, running({0: 1, 1: 1}), 30)
    assert any(isinstance(a, StopJob) for a in actions)
    off = spec(stallTimeoutSeconds=600, stages={"prealign": {"stallTimeoutSeconds": 0}}, **CPU2)
    _, actions = at(off, status, running({0: 1, 1: 1}), 10_000)
    assert actions == []
    assert PipelineSpec.model_validate({"output": "s3://xyz"}).stall_timeout_s == 900  # the 15 min default
    long = spec(stallTimeoutSeconds=1000, **CPU2)  # longer than the start-up grace: it applies from the start
    status, _ = at(long, started(long), Observation(job="Running"), 0)
    _, actions = at(long, status, Observation(job="Running"), 999)
    assert actions == []


def test_suspension_stops_the_stall_clock() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), running({0: 1, 1: 1}), 0)
    suspended = spec(stallTimeoutSeconds=60, suspend=True, **CPU2)
    status, _ = at(suspended, status, running({0: 1, 1: 1}), 10)
    status, _ = at(suspended, status, Observation(job="Suspended"), 30)
    assert status.stages[0].progress_at is None
    status, _ = at(sp, status, Observation(job="Suspended"), 400)  # resumed
    status, actions = at(sp, status, running({0: 1, 1: 1}), 500)  # resumed: a fresh start-up grace
    assert not submits(actions) and status.stages[0].progress_at == NOW + 500


def test_a_lower_step_after_a_pod_restart_counts_as_progress() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), running({0: 12, 1: 12}), 0)
    status, actions = at(sp, status, running({0: 10, 1: 10}), 59)  # resumed from the step-10 checkpoint
    status, actions = at(sp, status, running({0: 10, 1: 10}), 100)
    assert not submits(actions) and status.stages[0].step == 10


def test_ranks_that_all_finished_are_not_a_stall() -> None:
    sp = spec(stallTimeoutSeconds=60, **CPU2)
    status, _ = at(sp, started(sp), running({0: 20, 1: 20}, "done"), 0)
    _, actions = at(sp, status, running({0: 20, 1: 20}, "done"), 500)
    assert actions == []


def test_failures_close_the_stage_run_with_the_reason() -> None:
    _, actions = step(spec(), started(), Observation(job="Failed", job_message="OOMKilled"))
    assert EndStageRun("prealign", "FAILED", "job demo-prealign failed: OOMKilled") in actions
    _, actions = step(spec(), started(), Observation(job="Failed", job_message="bad", job_exit_code=2))
    assert [a.status for a in actions if isinstance(a, EndStageRun)] == ["FAILED"]
    late = NOW - COMPLETE_GRACE_S - 1
    _, actions = step(spec(), started(), Observation(job="Succeeded", job_finished_at=late))
    assert [a.status for a in actions if isinstance(a, EndStageRun)] == ["FAILED"]
    _, actions = step(spec(), started(), Observation(job="Succeeded", complete=done("prealign")))
    assert not [a for a in actions if isinstance(a, EndStageRun)]  # the trainer closes its own run


def test_the_parent_run_carries_phase_stage_attempts_and_the_final_checkpoint() -> None:
    sp = spec(until="pretrain")
    status = started(sp)
    status, _ = step(sp, status, Observation(job="Failed", job_message="x"))
    tags = parent_run_tags(status)
    assert tags["eve.phase"] == "Running" and tags["eve.current_stage"] == "prealign"
    assert tags["eve.attempts"] == "prealign=2 pretrain=0" and tags["eve.final_checkpoint"] == ""
    status, _ = step(sp, status, Observation(complete=done("prealign")))
    status, _ = step(sp, status, Observation(complete=done("pretrain")))
    tags = parent_run_tags(status)
    assert tags["eve.phase"] == "Succeeded" and tags["eve.final_checkpoint"] == EXPORT.format("pretrain")
    assert parent_run_params(sp)["chain"] == "prealign -> pretrain"
