"""The budget: pure arithmetic on the store's money, and the one place that reserves it.

A submit is allowed only when ``spent + reserved + estimate ≤ budget``, checked inside the transaction that
reserves the estimate (``Store.begin_attempt``), so that concurrent submits can never together pass the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchgen.store import Money, Store

WARN_FRACTION = 0.8


@dataclass(frozen=True)
class Budget:
    """A hard cap in µUSD (``None``: no cap)."""

    cap_micros: int | None

    def fits(self, money: Money, estimate_micros: int) -> bool:
        """Whether an attempt costing ``estimate_micros`` may start with ``money`` already committed."""
        return (
            self.cap_micros is None or money.spent_micros + money.reserved_micros + estimate_micros <= self.cap_micros
        )

    def left_micros(self, money: Money) -> int | None:
        """What is neither spent nor reserved (``None`` without a cap)."""
        if self.cap_micros is None:
            return None
        return self.cap_micros - money.spent_micros - money.reserved_micros

    def past_warning(self, money: Money) -> bool:
        """Whether spending has reached the warning fraction (80 %) of the cap."""
        return self.cap_micros is not None and money.spent_micros >= WARN_FRACTION * self.cap_micros

    def reserve(
        self, store: Store, job_id: str, transport: str, estimate_micros: int, now: float, *, alone: str | None = None
    ) -> int | None:
        """Reserve the estimate and mark the job submitting, in one transaction; ``None`` when it does not fit (or,
        ``alone``, while its price class waits for its price: ``store.held``)."""
        return store.begin_attempt(
            job_id, transport, estimate_micros, lambda money: self.fits(money, estimate_micros), now, alone=alone
        )
