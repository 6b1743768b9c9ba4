"""When to ask the provider about a submitted v2 job: each job on its own schedule, from its expected finish.

Until the run has seen a few jobs finish, every job is asked every ``interval`` (jittered, so that jobs submitted
together do not poll together). After that, the durations of the last 200 finished jobs say in which window jobs
finish (shortest to longest): a job is asked halfway to its window's start each time (an ``interval`` apart at
least), at the window's start, twenty times across it, and after it twice as far from its end each time (an
``interval`` apart at most). A finished job is then seen within a twentieth of the window instead of up to a whole
interval later (the makespan); the approach costs a few polls instead of one an interval (5 s interval,
generations of 160-190 s: ~16 polls a job instead of ~40); a job slower than any seen is seen about as late as it
is slow, not up to an interval late.

Outside windows the interval stretches with the number of jobs in flight, so that they are asked at most
``max_polls_per_s`` times a second all together (by default 50; 2,000 in flight: each every 40 s); across windows
the polls are handed out at most as often, in turn (jobs submitted together finish together: 500 in their 30 s
window at once are each asked about every 10 s, not every 1.5 s). Many jobs in flight cost the provider and this
machine no more than fifty polls a second outside windows and fifty across them (about 5 % of a core here each).
"""

from __future__ import annotations

import bisect
import random
from collections import deque

SAMPLES = 200  # the most recent durations kept
MIN_SAMPLES = 5  # durations seen before the window is trusted
STEPS_IN_WINDOW = 20
MIN_STEP_S = 0.005
JITTER = 0.2  # ± share of an interval
MAX_POLLS_PER_S = 50.0


class PollSchedule:
    """The next poll time of a job, from its submit time and the durations this run has seen (seconds)."""

    def __init__(
        self, interval_s: float, rng: random.Random | None = None, max_polls_per_s: float = MAX_POLLS_PER_S
    ) -> None:
        self.interval_s = interval_s
        self.max_polls_per_s = max_polls_per_s
        self.random = rng or random.Random()
        self._recent: deque[float] = deque(maxlen=SAMPLES)
        self._sorted: list[float] = []
        self._next_free = 0.0  # the earliest time of the next in-window poll handed out, max_polls_per_s apart

    def observe(self, duration_s: float) -> None:
        """A job was seen finished ``duration_s`` after its submit."""
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent[0])]
        self._recent.append(duration_s)
        bisect.insort(self._sorted, duration_s)

    def median(self) -> float | None:
        """The median recent duration, once any was seen."""
        return self._sorted[len(self._sorted) // 2] if self._sorted else None

    def window(self) -> tuple[float, float] | None:
        """The shortest and the longest recent duration, once enough were seen."""
        if len(self._sorted) < MIN_SAMPLES:
            return None
        return self._sorted[0], self._sorted[-1]

    def next_at(self, submitted_at: float, now: float, in_flight: int = 1) -> float:
        """When to ask next about a job submitted at ``submitted_at`` (epoch seconds), asked last at ``now``, with
        ``in_flight`` jobs being followed."""
        interval = max(self.interval_s, in_flight / self.max_polls_per_s)
        later = now + interval * (1 + self.random.uniform(-JITTER, JITTER))
        window = self.window()
        if window is None:
            return later
        start, end = submitted_at + window[0], submitted_at + window[1]
        if now < start:
            # halfway to the window's start, at least an interval on, at the start itself at the latest; a jittered
            # poll just short of the start is not followed by one at the start a moment later
            return max(min(max(later, now + (start - now) / 2), start), now + MIN_STEP_S)
        step = max(MIN_STEP_S, (window[1] - window[0]) / STEPS_IN_WINDOW)
        if now < end:
            # the polls across windows are handed out max_polls_per_s a second at most: jobs submitted together
            # finish together, and a wave of them in its window at once queues for the cap instead of passing it
            at = max(min(later, now + step), self._next_free)
            self._next_free = at + 1 / self.max_polls_per_s
            return at
        # past the window: each poll twice as far from its end as the last, an interval apart at most
        return min(later, now + max(step, now - end))
