"""An account: what every run on one API key shares (a PostgreSQL state): its name, its budget's periods, its pace.

Segmind bills and limits the account, not the run (``../shared/segmind-api.md``: one balance; 5 submits a minute
free, 50 Pro). The account is named by a hash of the key, never by the key. Pure functions here; the rows are
``pgstore``'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PERIODS = ("day", "week", "month")


def account_id(api_key: str) -> str:
    """The account's name in a shared state: 16 hex digits of a hash of its key (the key cannot be read back)."""
    return hashlib.sha256(f"batchgen account\n{api_key}".encode()).hexdigest()[:16]


def period_start(now: float, per: str | None) -> float:
    """When the budget period holding ``now`` began (UTC: midnight, Monday's midnight, the 1st); 0 for a fixed
    total (``per`` is None)."""
    if per is None:
        return 0.0
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "day":
        start = day
    elif per == "week":
        start = day - timedelta(days=day.weekday())
    elif per == "month":
        start = day.replace(day=1)
    else:
        raise ValueError(f"unknown budget period {per!r}: one of {', '.join(PERIODS)}")
    return start.timestamp()


def next_period(start: float, per: str | None) -> float | None:
    """When the period that began at ``start`` ends (``None`` for a fixed total)."""
    if per is None:
        return None
    begun = datetime.fromtimestamp(start, UTC)
    if per == "day":
        return (begun + timedelta(days=1)).timestamp()
    if per == "week":
        return (begun + timedelta(days=7)).timestamp()
    month = begun.replace(year=begun.year + begun.month // 12, month=begun.month % 12 + 1)
    return month.timestamp()


@dataclass(frozen=True)
class AccountMoney:
    """The account's ledger for the current period, in µUSD: ``cap`` is ``None`` without an account budget."""

    cap_micros: int | None
    per: str | None
    period_start: float
    settled_micros: int
    ambiguous_micros: int
    reserved_micros: int

    @property
    def spent_micros(self) -> int:
        """Settled and possibly billed: what counts against the cap."""
        return self.settled_micros + self.ambiguous_micros

    def fits(self, estimate_micros: int) -> bool:
        """The per-run invariant, account-wide: ``spent + reserved + estimate ≤ cap``."""
        return self.cap_micros is None or self.spent_micros + self.reserved_micros + estimate_micros <= self.cap_micros

    def left_micros(self) -> int | None:
        """What the account may still reserve in this period (``None``: no cap)."""
        return None if self.cap_micros is None else self.cap_micros - self.spent_micros - self.reserved_micros

    def describe_cap(self) -> str:
        """``$250.00 a week`` or ``$250.00 in all``."""
        amount = f"${self.cap_micros / 1e6:,.2f}" if self.cap_micros is not None else "no cap"
        return f"{amount} a {self.per}" if self.per else f"{amount} in all"
