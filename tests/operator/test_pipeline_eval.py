"""spec.eval in the pure state machine: every transition of an evaluation job, as data; the spec and
CLI keys that set it; the job it becomes."""

from __future__ import annotations

from typing import Any

import pytest

from eve_operator.pipeline import (
    COMPLETE_GRACE_S, EndStageRun, EvalObservation, Observation, PipelineStatus, StageComplete, StopJob, SubmitEval,
    SubmitJob, decide,
)
from eve_operator.spec import PipelineSpec, parse_gate

NOW = 1_000_000.0
EXPORT = "s3://ckpt/eve/demo/{}/export"
POPE = {"pope": {"accuracy": 0.85, "f1": 0.84, "yes_ratio": 0.5}}


def spec(eval_: dict[str, Any] | None = None, **extra: Any) -> PipelineSpec:
    ev = {"data": {"pope": "s3://bench/pope"}, **(eval_ or {})}
    return PipelineSpec.model_validate({"output": "s3://ckpt/eve", "maxAttempts": 2, "eval": ev, **extra})


def step(sp: PipelineSpec, status: PipelineStatus, obs: Observation = Observation(), now: float = NOW):
    d = decide("demo", sp, status, obs, now)
    return d.status, d.actions


def of(kind: type, actions: list) -> list:
    return [a for a in actions if isinstance(a, kind)]


def reasons(actions: list) -> list[str]:
    return [a.reason for a in actions if hasattr(a, "reason") and not isinstance(a, StopJob | EndStageRun)]


def through(sp: PipelineSpec, stage: str) -> tuple[PipelineStatus, list]:
    """Run the chain until `stage`'s export verifies; the status and actions of that pass."""
    status, actions = step(sp, PipelineStatus())
    for name in sp.chain():
        status, actions = step(sp, status, Observation(complete=StageComplete(EXPORT.format(name))))
        if name == stage:
            return status, actions
    raise AssertionError(stage)


def scored(scores: dict | None = POPE, job: str = "Succeeded", **kw: Any) -> Observation:
    return Observation(evals={"sft": EvalObservation(job, job_finished_at=NOW, scores=scores, **kw)})


# -- the spec -------------------------------------------------------------------------------------


def test_eval_defaults_to_the_last_stage_and_mode_before() -> None:
    sp = spec()
    assert sp.eval_after() == ["sft"] and sp.eval is not None and sp.eval.mode == "before"
    assert spec(until="pretrain").eval_after() == ["pretrain"]
    assert spec({"after": "pretrain,sft"}).eval_after() == ["pretrain", "sft"]


@pytest.mark.parametrize("ev,expected", [
    ({"after": ["sft"]}, "eval.after=sft: this pipeline runs prealign -> pretrain"),
    ({"gate": "textvqa.accuracy >= 0.5"}, "textvqa is not evaluated"),
    ({"gate": "pope.f1 => 0.8"}, "is not of the form"),
    ({"mode": "after"}, "before"),
    ({"data": {}}, "names no benchmark"),
])
def test_bad_eval_specs_name_the_key(ev: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        spec(ev, until="pretrain")


def test_gates_compare_as_written() -> None:
    g = parse_gate(" pope.adversarial/f1>=0.8 ")
    assert (g.bench, g.metric, g.op, g.threshold) == ("pope", "adversarial/f1", ">=", 0.8)
    assert g.passes(0.8) and not g.passes(0.79) and str(g) == "pope.adversarial/f1 >= 0.8"
    assert parse_gate("pope.yes_ratio < 0.7").passes(0.5)


def test_cli_keys_set_spec_eval() -> None:
    from eve_operator.cli.submit_args import parse_submit

    _, sp = parse_submit(["stage=prealign", "output=s3://bkt/x", "eval.data.pope=s3://bkt/pope", "eval.after=pretrain,sft",
                          "eval.mode=beside", "eval.gate=pope.f1 >= 0.8", "eval.max_new_tokens=16"])
    assert sp.eval is not None and sp.eval.data == {"pope": "s3://bkt/pope"} and sp.eval.mode == "beside"
    assert sp.eval_after() == ["pretrain", "sft"] and sp.eval.gate == ["pope.f1 >= 0.8"]
    assert sp.eval.max_new_tokens == 16
    from eve_trainer.config import ConfigError

    with pytest.raises(ConfigError, match="eval.mode"):
        parse_submit(["stage=prealign", "output=s3://bkt/x", "eval.data.pope=s3://bkt/pope", "eval.mode=later"])
    with pytest.raises(ConfigError, match="eval.data.<bench>"):
        parse_submit(["stage=prealign", "output=s3://bkt/x", "eval.gate=pope.f1>0.5"])


def test_the_eval_job_runs_eve_eval_on_the_export_like_a_stage() -> None:
    from eve_operator.jobspec import build_eval_job_spec

    sp = spec({"maxNewTokens": 16, "batchSize": 4}, resources={"nodes": 2, "gpusPerNode": 8},
              s3={"endpointUrl": "http://s3:8333", "credentialsSecret": "creds"})
    job = build_eval_job_spec("demo", sp, SubmitEval("sft", 1, "demo-eval-sft", EXPORT.format("sft")))
    assert job.command == ["eve-eval", EXPORT.format("sft"), "bench=pope", "pope.data=s3://bench/pope",
                           "max_new_tokens=16", "batch_size=4", "endpoint_url=http://s3:8333"]
    assert job.pod_command[:2] == ["eve-launch", "--"] and job.world_size == 16
    assert job.secret_env["AWS_ACCESS_KEY_ID"] == ("creds", "AWS_ACCESS_KEY_ID")


# -- mode before: the next stage waits for the scores and the gate ---------------------------------


def test_a_verified_export_in_eval_after_submits_its_evaluation_and_holds_the_next_stage() -> None:
    sp = spec({"after": "pretrain"})
    status, actions = through(sp, "pretrain")
    assert of(SubmitEval, actions) == [SubmitEval("pretrain", 1, "demo-eval-pretrain", EXPORT.format("pretrain"))]
    assert not of(SubmitJob, actions) and status.stage("sft").state == "Pending"
    assert status.phase == "Running" and "evaluating the pretrain export before sft starts" in status.message
    assert [e.state for e in status.evals] == ["Submitted"]
    # while it runs, nothing else happens
    running = Observation(evals={"pretrain": EvalObservation("Running")})
    status, actions = step(sp, status, running)
    assert status.evals[0].state == "Running" and reasons(actions) == ["EvalRunning"]
    status, actions = step(sp, status, running)
    assert actions == [] and status.stage("sft").attempt == 0


def test_scores_in_start_the_next_stage_from_the_evaluated_export() -> None:
    sp = spec({"after": "pretrain", "gate": "pope.f1 >= 0.8"})
    status, _ = through(sp, "pretrain")
    obs = Observation(evals={"pretrain": EvalObservation("Succeeded", scores=POPE)})
    status, actions = step(sp, status, obs)
    ev = status.evals[0]
    assert ev.state == "Succeeded" and ev.scores == POPE and ev.gate == "passed"
    assert of(SubmitJob, actions) == [SubmitJob("sft", 1, "demo-sft", EXPORT.format("pretrain"), None)]
    assert reasons(actions) == ["EvalSucceeded", "StageSubmitted"] and "pope accuracy 0.850 f1 0.840" in ev.message


def test_a_gate_that_fails_stops_the_chain_with_a_clear_status() -> None:
    sp = spec({"after": "pretrain", "gate": ["pope.f1 >= 0.9"]})
    status, _ = through(sp, "pretrain")
    status, actions = step(sp, status, Observation(evals={"pretrain": EvalObservation("Succeeded", scores=POPE)}))
    assert status.phase == "Failed" and status.failure is not None and status.failure.failure_class == "permanent"
    assert status.message == "gate failed on the pretrain export: pope.f1 = 0.84, not >= 0.9; stage sft not started"
    assert status.evals[0].gate == "pope.f1 = 0.84, not >= 0.9" and not of(SubmitJob, actions)
    assert reasons(actions) == ["GateFailed", "PipelineFailed"]


def test_a_gate_on_a_score_that_is_not_there_fails() -> None:
    sp = spec({"gate": "pope.recall >= 0.5"})
    status, _ = through(sp, "sft")
    status, _ = step(sp, status, scored())
    assert status.phase == "Failed" and "pope.recall is not among the scores" in status.message


def test_the_pipeline_succeeds_once_the_last_evaluation_is_in() -> None:
    sp = spec()
    status, actions = through(sp, "sft")
    assert status.phase == "Running" and of(SubmitEval, actions) and status.current_stage == "sft"
    status, actions = step(sp, status, scored())
    assert status.phase == "Succeeded" and reasons(actions) == ["EvalSucceeded", "PipelineSucceeded"]
    assert "final checkpoint s3://ckpt/eve/demo/sft/export; pope accuracy 0.850" in status.message


# -- mode beside: the next stage starts at once -----------------------------------------------------


def test_beside_starts_the_next_stage_and_the_evaluation_together() -> None:
    sp = spec({"after": "pretrain", "mode": "beside"})
    status, actions = through(sp, "pretrain")
    assert [type(a).__name__ for a in actions if isinstance(a, SubmitJob | SubmitEval)] == ["SubmitEval", "SubmitJob"]
    # scores arrive while sft runs: sft goes on
    obs = Observation("Running", evals={"pretrain": EvalObservation("Succeeded", scores=POPE)})
    status, actions = step(sp, status, obs)
    assert status.evals[0].state == "Succeeded" and not of(SubmitJob, actions) and status.phase == "Running"


def test_beside_a_failed_gate_stops_the_stage_that_already_runs() -> None:
    sp = spec({"after": "pretrain", "mode": "beside", "gate": "pope.accuracy > 0.9"})
    status, _ = through(sp, "pretrain")
    obs = Observation("Running", evals={"pretrain": EvalObservation("Succeeded", scores=POPE)})
    status, actions = step(sp, status, obs)
    assert status.phase == "Failed" and status.stage("sft").state == "Failed"
    assert of(StopJob, actions)[0].job_name == "demo-sft"
    assert of(EndStageRun, actions)[0].status == "KILLED"
    assert status.message.endswith("stage sft stopped")


def test_beside_the_last_stage_waits_for_the_evaluation_still_running() -> None:
    sp = spec({"after": "pretrain", "mode": "beside"})
    status, _ = through(sp, "pretrain")
    status, _ = step(sp, status, Observation(complete=StageComplete(EXPORT.format("sft")),
                                             evals={"pretrain": EvalObservation("Running")}))
    assert status.phase == "Running" and "evaluating" in status.message
    status, actions = step(sp, status, Observation(evals={"pretrain": EvalObservation("Succeeded", scores=POPE)}))
    assert status.phase == "Succeeded" and "PipelineSucceeded" in reasons(actions)


# -- the evaluation job's own failures ----------------------------------------------------------------


def test_a_failed_evaluation_job_is_retried_then_fails_the_pipeline() -> None:
    sp = spec()
    status, _ = through(sp, "sft")
    status, actions = step(sp, status, scored(None, "Failed", job_message="rank 0 exited with code 1",
                                              job_exit_code=1))
    assert of(SubmitEval, actions) == [SubmitEval("sft", 2, "demo-eval-sft-r2", EXPORT.format("sft"))]
    assert "EvalRetry" in reasons(actions)
    status, actions = step(sp, status, scored(None, "Failed", job_exit_code=1))
    assert status.phase == "Failed" and status.failure is not None and status.failure.failure_class == "transient"
    assert "(attempt 2 of 2)" in status.message


def test_exit_code_2_of_the_evaluation_fails_at_once() -> None:
    sp = spec()
    status, _ = through(sp, "sft")
    status, actions = step(sp, status, scored(None, "Failed", job_message="no questions.jsonl", job_exit_code=2))
    assert status.phase == "Failed" and status.failure is not None and status.failure.exit_code == 2
    assert "failed permanently" in status.message and not of(SubmitEval, actions)


def test_a_lost_evaluation_job_is_created_again_and_one_without_scores_times_out() -> None:
    sp = spec()
    status, _ = through(sp, "sft")
    status, actions = step(sp, status, scored(None, "Absent"))
    assert of(SubmitEval, actions) == [SubmitEval("sft", 1, "demo-eval-sft", EXPORT.format("sft"))]
    status, actions = step(sp, status, scored(None, "Succeeded"))
    assert status.evals[0].message == "job succeeded; waiting for its scores" and not actions
    status, actions = step(sp, status, scored(None, "Succeeded"), now=NOW + COMPLETE_GRACE_S + 1)
    assert of(SubmitEval, actions)[0].attempt == 2


def test_the_status_round_trips_with_its_evaluations() -> None:
    sp = spec()
    status, _ = through(sp, "sft")
    status, _ = step(sp, status, scored())
    again = PipelineStatus.model_validate(status.model_dump(by_alias=True))
    assert again.evals == status.evals and again.evals[0].job_name == "demo-eval-sft"
