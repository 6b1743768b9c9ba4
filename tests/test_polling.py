"""The per-job poll schedule: every interval until jobs have been seen finishing, then often across their window."""

from __future__ import annotations

import heapq
import random
from itertools import pairwise

from batchgen.polling import MIN_SAMPLES, MIN_STEP_S, SAMPLES, STEPS_IN_WINDOW, PollSchedule


def _times(schedule: PollSchedule, submitted: float, until: float) -> list[float]:
    times, now = [], submitted
    while now < submitted + until:
        now = schedule.next_at(submitted, now)
        times.append(round(now - submitted, 6))
    return times


def test_every_interval_until_enough_jobs_finished() -> None:
    schedule = PollSchedule(1.0, random.Random(7))
    for _ in range(MIN_SAMPLES - 1):
        schedule.observe(3.0)
    gaps = [b - a for a, b in pairwise([0.0, *_times(schedule, 100.0, 10.0)])]
    assert schedule.window() is None
    assert all(0.8 <= gap <= 1.2 for gap in gaps)  # the interval, jittered ± 20 %


def test_halfway_to_the_window_often_across_it_and_doubling_after_it() -> None:
    schedule = PollSchedule(1.0, random.Random(7))
    for duration in (10.0, 12.0, 11.0, 10.5, 11.5):
        schedule.observe(duration)
    assert schedule.window() == (10.0, 12.0)
    times = _times(schedule, 1000.0, 16.0)
    before = [t for t in times if t < 10.0]
    inside = [t for t in times if 10.0 <= t < 12.0]
    after = [t for t in times if t >= 12.0]
    assert before[:3] == [5.0, 7.5, 8.75] and len(before) == 4  # halfway each time, until an interval is longer
    assert 0.8 <= before[3] - before[2] <= 1.2
    assert inside[0] == 10.0 and len(inside) == STEPS_IN_WINDOW
    assert all(abs((b - a) - 0.1) < 1e-6 for a, b in pairwise(inside))  # a twentieth of 2 s
    gaps = [round(b - a, 6) for a, b in pairwise([inside[-1], *after])]
    assert gaps[:5] == [0.1, 0.1, 0.1, 0.2, 0.4]  # twice as far from the end each time...
    assert all(0.8 <= gap <= 1.2 for gap in gaps[6:])  # ...up to the interval


def test_a_realistic_job_is_asked_far_fewer_times_and_seen_as_soon() -> None:
    rng = random.Random(1)
    durations = [rng.uniform(160.0, 190.0) for _ in range(SAMPLES)]
    polls, late = [], []
    for _ in range(500):
        schedule = PollSchedule(5.0, random.Random(2))  # one job's life at a time: each with its own clock
        for duration in durations:
            schedule.observe(duration)
        finish, now, count = rng.uniform(160.0, 190.0), 0.0, 0
        while now < finish:
            now, count = schedule.next_at(0.0, now), count + 1
        polls.append(count)
        late.append(now - finish)
    assert max(polls) <= 30 and sum(polls) / len(polls) < 20  # every 5 s from the submit: ~40 on average
    assert max(late) <= 30.0 / STEPS_IN_WINDOW + 1e-6


def test_a_job_slower_than_any_seen_is_seen_about_as_late_as_it_is_slow() -> None:
    schedule = PollSchedule(60.0, random.Random(5))
    for _ in range(MIN_SAMPLES):
        schedule.observe(100.0)  # a window of one instant
    now = 100.0
    while now < 103.0:  # the job finishes 3 s after the window
        now = schedule.next_at(0.0, now)
    assert now - 103.0 <= 3.0 + 1e-6  # not up to a minute later


def test_the_window_follows_the_recent_durations() -> None:
    schedule = PollSchedule(5.0)
    assert schedule.median() is None
    for _ in range(SAMPLES):
        schedule.observe(180.0)
    for _ in range(SAMPLES):
        schedule.observe(60.0)  # the provider got faster: the old durations are forgotten
    assert schedule.window() == (60.0, 60.0) and schedule.median() == 60.0


def test_a_narrow_window_is_not_polled_in_a_tight_loop() -> None:
    for seed in range(500):  # some seeds put a jittered poll a moment before the window's start
        schedule = PollSchedule(1.0, random.Random(seed))
        for _ in range(MIN_SAMPLES):
            schedule.observe(2.0)
        times = _times(schedule, 0.0, 2.1)
        assert len(times) < 25 and all(b - a >= MIN_STEP_S - 1e-6 for a, b in pairwise(times)), (seed, times)


def test_many_in_flight_stretch_the_interval_to_fifty_polls_a_second() -> None:
    schedule = PollSchedule(5.0, random.Random(3))
    few = [schedule.next_at(0.0, 0.0, in_flight=64) for _ in range(200)]
    many = [schedule.next_at(0.0, 0.0, in_flight=2000) for _ in range(200)]
    assert min(few) >= 4.0 and max(few) <= 6.0
    assert min(many) >= 32.0 and max(many) <= 48.0  # 2,000 jobs / 50 polls a second = every 40 s


def test_a_wave_in_its_window_at_once_shares_the_cap() -> None:
    # 500 jobs submitted together, all in their 30 s window at once: a twentieth of it (1.5 s) each would be 333
    # polls a second; the cap is 50.
    schedule = PollSchedule(5.0, random.Random(11), max_polls_per_s=50)
    for duration in (160.0, 190.0, 175.0, 170.0, 180.0):
        schedule.observe(duration)
    polls = [(160.0 + n * 0.002, n) for n in range(500)]  # each job's first poll in the window
    heapq.heapify(polls)
    asked: list[float] = []
    while polls and polls[0][0] < 190.0:
        now, job = heapq.heappop(polls)
        asked.append(now)
        heapq.heappush(polls, (schedule.next_at(0.0, now, in_flight=500), job))
    per_second = [sum(1 for t in asked if second <= t < second + 1) for second in range(165, 189)]
    assert max(per_second) <= 60 and min(per_second) >= 35  # the cap, after the first seconds' handouts
    lone = PollSchedule(5.0, random.Random(11), max_polls_per_s=50)
    for duration in (160.0, 190.0, 175.0, 170.0, 180.0):
        lone.observe(duration)
    assert lone.next_at(0.0, 170.0) == 171.5  # one job alone: a twentieth of the window
