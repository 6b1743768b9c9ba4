"""The simulator's books: the truth every test of money checks.

Per API key: the balance, every charge (request id, payload hash, amount, time), every generation request seen, every
file uploaded to the storage, and the most generations in progress at once. A payload hash is the content hash of
the model and the body together: one body sent to two models is two requests. Amounts are micro-dollars, as
everywhere in batchgen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchgen.pricing import usd


@dataclass(frozen=True)
class Charge:
    """One billed generation."""

    request_id: str
    payload_hash: str
    amount_micros: int
    at: float


@dataclass(frozen=True)
class Seen:
    """One generation request as it arrived, and what became of it."""

    route: str
    payload_hash: str
    at: float
    status: int
    request_id: str | None


@dataclass(frozen=True)
class Upload:
    """One file put in the storage."""

    sha256: str
    size: int
    at: float


@dataclass
class Account:
    """One API key's balance and history."""

    balance_micros: int
    held_micros: int = 0  # the price of generations accepted and not yet settled
    charges: list[Charge] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    in_progress: int = 0
    peak_in_progress: int = 0

    @property
    def spent_micros(self) -> int:
        """Everything charged so far."""
        return sum(charge.amount_micros for charge in self.charges)

    def paid_twice(self) -> dict[str, int]:
        """Payload hashes charged more than once, with how many times."""
        counts = Counter(charge.payload_hash for charge in self.charges)
        return {digest: n for digest, n in counts.items() if n > 1}

    def posts_of(self, payload_hash: str) -> list[Seen]:
        """Every generation request made with this payload, in order."""
        return [seen for seen in self.requests if seen.payload_hash == payload_hash]

    def start(self) -> None:
        """A generation begins."""
        self.in_progress += 1
        self.peak_in_progress = max(self.peak_in_progress, self.in_progress)

    def finish(self) -> None:
        """A generation ends (completed, failed or dropped)."""
        self.in_progress -= 1

    def as_json(self) -> dict[str, Any]:
        """The account as plain JSON data (USD figures beside exact micro-dollars)."""
        return {
            "balance_usd": usd(self.balance_micros),
            "spent_usd": usd(self.spent_micros),
            "spent_micros": self.spent_micros,
            "charges": [vars(charge) for charge in self.charges],
            "requests": [vars(seen) for seen in self.requests],
            "uploads": [vars(upload) for upload in self.uploads],
            "in_progress": self.in_progress,
            "peak_in_progress": self.peak_in_progress,
            "paid_twice": self.paid_twice(),
        }
