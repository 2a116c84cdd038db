"""Goodput segments kept by the pure core (decide) from the heartbeats and the job status."""

from __future__ import annotations

import pytest

from eve_operator.pipeline import (
    Beat, Observation, PipelineStatus, StageComplete, decide, pipeline_goodput, stage_goodput,
)
from eve_operator.spec import PipelineSpec

T0 = 1_000_000.0


def spec() -> PipelineSpec:
    return PipelineSpec.model_validate({"output": "s3://ckpt/eve", "maxAttempts": 3})


def beat(rank: int, step: int, at: float, *, started: float, loop: float, start_step: int, step_s: float,
         data_s: float = 0.0, ckpt_s: float = 0.0) -> Beat:
    return Beat(rank, step, at, "train", started, loop, start_step,
                (("checkpoint", ckpt_s), ("data", data_s), ("step", step_s)))


def test_a_stage_with_a_node_loss_is_accounted_from_its_segments() -> None:
    sp = spec()
    d = decide("demo", sp, PipelineStatus(), Observation(), T0)  # attempt 1 submitted at T0
    status = d.status
    # attempt 1 runs: processes up at +20 / +25, loop at +40, step 10 at +140
    beats = (beat(0, 10, T0 + 140, started=T0 + 20, loop=T0 + 40, start_step=0, step_s=80, data_s=5, ckpt_s=10),
             beat(1, 10, T0 + 139, started=T0 + 25, loop=T0 + 40, start_step=0, step_s=80))
    status = decide("demo", sp, status, Observation("Running", beats=beats), T0 + 141).status
    seg = status.stages[0].segments[0]
    assert (seg.attempt, seg.submitted_at, seg.started_at, seg.loop_at, seg.step) == (1, T0, T0 + 25, T0 + 40, 10)
    assert (seg.step_s, seg.data_s, seg.checkpoint_s) == (80, 5, 10)
    # the node is lost: the job fails at +150, seen at +155; attempt 2 is submitted
    status = decide("demo", sp, status, Observation("Failed", "pod lost", T0 + 150, beats=beats), T0 + 155).status
    assert status.stages[0].attempt == 2 and status.stages[0].segments[0].ended_at == T0 + 150
    assert status.stages[0].segments[1].submitted_at == T0 + 155
    # attempt 2 resumes from step 6 and finishes step 20; its export verifies at +300
    beats2 = tuple(Beat(r, 20, T0 + 295, "done", T0 + 165, T0 + 180, 6, (("step", 112.0),)) for r in (0, 1))
    status = decide("demo", sp, status, Observation("Succeeded", job_finished_at=T0 + 296, beats=beats2,
                                                    complete=StageComplete("s3://x/export")), T0 + 300).status
    stage = status.stages[0]
    assert stage.state == "Succeeded" and stage.segments[1].ended_at == T0 + 300
    g = stage_goodput(stage, T0 + 10_000)
    assert g.wall == 300 and g.unaccounted == pytest.approx(0)
    assert g.redone_steps == 4 and g.lost == pytest.approx(80 * 4 / 10 + 10)  # 4 steps + 10 s after the last beat
    assert g.productive == pytest.approx(48 + 112) and g.restart == 5 and g.queued == 25 + 10
    # the pipeline: prealign's 300 s, then pretrain (submitted at +300) queued ever since
    later = pipeline_goodput(status, T0 + 400)
    assert later.wall == 400 and later.queued == 35 + 100 and later.productive == pytest.approx(160)


def test_a_pod_restarted_in_place_opens_a_new_segment_in_the_same_attempt() -> None:
    sp = spec()
    status = decide("demo", sp, PipelineStatus(), Observation(), T0).status
    first = (beat(0, 4, T0 + 60, started=T0 + 10, loop=T0 + 20, start_step=0, step_s=40),)
    status = decide("demo", sp, status, Observation("Running", beats=first), T0 + 61).status
    again = (beat(0, 6, T0 + 120, started=T0 + 80, loop=T0 + 90, start_step=4, step_s=20),)
    status = decide("demo", sp, status, Observation("Running", beats=again), T0 + 121).status
    segs = status.stages[0].segments
    assert [(s.attempt, s.submitted_at is not None, s.start_step) for s in segs] == [(1, True, 0), (1, False, 4)]
    g = stage_goodput(status.stages[0], T0 + 121)
    assert g.restarts == 1 and g.restart == pytest.approx(20) and g.unaccounted == pytest.approx(0)
