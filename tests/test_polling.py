"""The per-job poll schedule: every interval until jobs have been seen finishing, then often across their window."""

from __future__ import annotations

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


def test_often_across_the_window_and_every_interval_around_it() -> None:
    schedule = PollSchedule(1.0, random.Random(7))
    for duration in (10.0, 12.0, 11.0, 10.5, 11.5):
        schedule.observe(duration)
    assert schedule.window() == (10.0, 12.0)
    times = _times(schedule, 1000.0, 16.0)
    before = [t for t in times if t < 10.0]
    inside = [t for t in times if 10.0 <= t < 12.0]
    after = [t for t in times if t >= 12.0]
    assert 8 <= len(before) <= 13  # every ~1 s, and the last one lands on the window's start
    assert inside[0] == 10.0 and len(inside) == STEPS_IN_WINDOW
    assert all(abs((b - a) - 0.1) < 1e-6 for a, b in pairwise(inside))  # a twentieth of 2 s
    assert all(0.8 <= b - a <= 1.2 for a, b in pairwise(after))


def test_the_window_follows_the_recent_durations() -> None:
    schedule = PollSchedule(5.0)
    for _ in range(SAMPLES):
        schedule.observe(180.0)
    for _ in range(SAMPLES):
        schedule.observe(60.0)  # the provider got faster: the old durations are forgotten
    assert schedule.window() == (60.0, 60.0)


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
