"""Goodput accounting and the checkpoint-interval advice (eve_contract.goodput): pure functions."""

from __future__ import annotations

import math

import pytest

from eve_contract.goodput import PARTS, Goodput, Segment, account, advise, expected_goodput, young_daly_steps


def test_one_clean_attempt_splits_every_part():
    # submitted at 0, every process up at 30, loop from 50, last beat at 1050, ended at 1060
    seg = Segment(submitted_at=0, started_at=30, loop_at=50, start_step=0, step=100, beat_at=1050, ended_at=1060,
                  step_s=800, data_s=40, checkpoint_s=60, eval_s=20)
    g = account([seg], now=5000)
    assert (g.queued, g.starting, g.productive, g.data, g.checkpoint, g.eval) == (30, 20, 800, 40, 60, 20)
    assert g.other == pytest.approx(1000 - 920 + 10)  # untimed loop time + the end after the last beat
    assert (g.lost, g.restart, g.redone_steps, g.restarts) == (0, 0, 0, 0)
    assert g.wall == 1060 and g.unaccounted == pytest.approx(0)
    assert g.goodput == pytest.approx(800 / 1060)


def test_a_running_attempt_counts_until_now():
    seg = Segment(submitted_at=0, started_at=10, loop_at=20, start_step=0, step=5, beat_at=70, step_s=40)
    g = account([seg], now=100)
    assert g.wall == 100 and g.other == pytest.approx(10 + 30)  # loop 50 - 40 timed, then 30 since the beat
    assert g.unaccounted == pytest.approx(0)


def test_a_queued_attempt_is_all_queued():
    g = account([Segment(submitted_at=10)], now=70)
    assert (g.wall, g.queued, g.productive) == (60, 60, 0)


def test_a_restart_loses_the_redone_steps_and_the_gap():
    # attempt 1: steps 0 -> 10 in 100 s of step time; killed at 160 (last beat 150)
    a1 = Segment(submitted_at=0, started_at=5, loop_at=10, start_step=0, step=10, beat_at=150, ended_at=160,
                 step_s=100, data_s=10, checkpoint_s=20)
    # attempt 2 submitted at 170, resumes from the step-6 checkpoint, finishes step 20
    a2 = Segment(submitted_at=170, started_at=180, loop_at=200, start_step=6, step=20, beat_at=350, ended_at=355,
                 step_s=140, data_s=5)
    g = account([a1, a2], now=10_000)
    assert g.redone_steps == 4 and g.restarts == 1
    assert g.lost == pytest.approx(40 + 10)  # 4 of attempt 1's 10 steps, and the 10 s after its last beat
    assert g.productive == pytest.approx(60 + 140)
    assert g.restart == pytest.approx(10)  # ended 160, next submitted 170
    assert g.queued == pytest.approx(5 + 10) and g.starting == pytest.approx(5 + 20)
    assert g.checkpoint == 20 and g.data == 15
    assert g.wall == 355 and g.unaccounted == pytest.approx(0)


def test_several_restarts_count_each_segments_own_redone_steps():
    a1 = Segment(submitted_at=0, started_at=0, loop_at=0, start_step=0, step=7, beat_at=70, ended_at=70, step_s=70)
    a2 = Segment(submitted_at=80, started_at=80, loop_at=90, start_step=5, step=9, beat_at=130, ended_at=130,
                 step_s=40)
    a3 = Segment(submitted_at=140, started_at=140, loop_at=150, start_step=8, step=12, beat_at=190, ended_at=190,
                 step_s=40)
    g = account([a1, a2, a3], now=1e9)
    assert g.redone_steps == 2 + 1 and g.lost == pytest.approx(20 + 10)
    assert g.productive == pytest.approx(50 + 30 + 40) and g.restarts == 2 and g.restart == 20
    assert g.unaccounted == pytest.approx(0)


def test_a_pod_restarted_in_place_is_a_segment_without_submission():
    a1 = Segment(submitted_at=0, started_at=10, loop_at=20, start_step=0, step=4, beat_at=60, step_s=40)
    again = Segment(started_at=75, loop_at=85, start_step=4, step=8, beat_at=125, ended_at=130, step_s=40)
    g = account([a1, again], now=1e9)
    assert g.restart == 15 and g.restarts == 1 and g.redone_steps == 0  # resumed at the step it reached
    assert g.queued == 10 and g.starting == 10 + 10 and g.wall == 130
    assert g.unaccounted == pytest.approx(0)


def test_inconsistent_clocks_show_as_unaccounted_not_as_a_part():
    # the trainer's timers claim more than the loop lasted (clock skew between machines)
    seg = Segment(submitted_at=0, started_at=0, loop_at=0, start_step=0, step=1, beat_at=10, ended_at=10, step_s=12)
    g = account([seg], now=1e9)
    assert g.wall == 10 and g.productive == 12 and g.unaccounted == pytest.approx(-2)


def test_total_line_and_metrics():
    a = Goodput(wall=100, productive=60, queued=10, lost=30, redone_steps=3, restarts=1)
    b = Goodput(wall=50, productive=45, checkpoint=5)
    t = Goodput.total([a, b])
    assert (t.wall, t.productive, t.redone_steps) == (150, 105, 3) and t.goodput == pytest.approx(0.7)
    assert t.line() == "goodput 70% of 2m30s: queued 10s, productive 1m45s, checkpoint 5s, lost 30s " \
                       "(3 steps redone, 1 restart)"
    m = t.metrics()
    assert m["goodput/fraction"] == pytest.approx(0.7) and {f"goodput/{p}_s" for p in PARTS} <= set(m)
    assert Goodput().line() == "goodput -"


def test_young_daly_interval_and_advice():
    # C = 60 s, M = 100 h / 10 nodes = 10 h: sqrt(2 * 60 * 36000) = 2078 s = 208 steps of 10 s
    assert young_daly_steps(60, 10, 36000) == round(math.sqrt(2 * 60 * 36000) / 10)
    advice = advise(configured_steps=1000, save_s=60, step_s=10, mtbf_node_hours=100, nodes=10)
    assert advice is not None and advice.optimal_steps == 208 and advice.far and advice.ratio > 2
    assert "checkpoint.every_steps=208" in advice.message()
    near = advise(configured_steps=300, save_s=60, step_s=10, mtbf_node_hours=100, nodes=10)
    assert near is not None and not near.far and "consider" not in near.message()
    assert advise(configured_steps=50, save_s=60, step_s=10, mtbf_node_hours=100, nodes=10).far  # < 0.5x
    assert advise(configured_steps=5, save_s=1, step_s=1, mtbf_node_hours=0, nodes=4) is None
    # the optimum maximises the first-order expected goodput
    best = expected_goodput(208 * 10, 60, 36000)
    assert best > expected_goodput(100 * 10, 60, 36000) and best > expected_goodput(400 * 10, 60, 36000)
    assert young_daly_steps(0.001, 10, 36000) == 1  # never below one step
