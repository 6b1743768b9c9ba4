"""The seam between the runner and a provider: what the runner asks of one, and what comes back.

A provider takes generation requests for its models (``submit`` then ``status``/``result``, or ``generate`` in one
call), serves their videos, keeps a request history, tells the balance, and stores uploaded files. Segmind's is
``client.Client``; a second provider is a new module implementing :class:`Provider` (and a simulator of it), with
the runner unchanged. Every failure is an :class:`AnswerError` whose ``Decision`` (``decisions.py``) says what it
means for the job, the run and the money.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from batchgen.decisions import Decision
from batchgen.errors import ProviderError
from batchgen.history import HistoryRow


class AnswerError(ProviderError):
    """An attempt ended on an answer (or a silence) of the provider; ``decision`` says what it means."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.message)


class Sink(Protocol):
    """Where downloaded bytes go (``outputs.PartFile``)."""

    def write(self, chunk: bytes) -> None: ...


@dataclass(frozen=True)
class Completed:
    """A finished generation: where its video is and what it cost (µUSD, when the provider says)."""

    request_id: str | None
    video_url: str | None
    cost_micros: int | None
    cost_note: str | None = None  # why a cost the provider reported cannot be used (the estimate stands in)


class Provider(Protocol):
    """What the runner asks of a provider (each call may raise :class:`AnswerError`)."""

    history_url: str | None  # None: the provider keeps no request history the runner can read
    reached_at: float | None  # when the provider last answered anything

    @property
    def host(self) -> str:
        """The provider's host, for messages."""
        ...

    @property
    def upload_host(self) -> str:
        """The host of the storage files are uploaded to, for messages."""
        ...

    async def submit(self, model: str, payload: Mapping[str, Any]) -> str:
        """Start a generation: its request id."""
        ...

    async def status(self, request_id: str) -> str:
        """QUEUED, PROCESSING or COMPLETED."""
        ...

    async def result(self, request_id: str) -> Completed | None:
        """The finished generation, or ``None`` while it is not."""
        ...

    async def generate(
        self, model: str, payload: Mapping[str, Any], sink: Sink, on_billed: Callable[[Completed], None]
    ) -> Completed:
        """Generate in one call, the video's bytes into ``sink`` (or a URL in the answer)."""
        ...

    async def download(self, url: str, sink: Sink) -> int:
        """Stream a video into ``sink``: its size."""
        ...

    async def credits(self) -> float:
        """The account's balance in USD."""
        ...

    async def upload(self, data_url: str) -> str:
        """Store a file (a ``data:`` URL): the URL requests can name it by."""
        ...

    async def history_get(self, request_id: str) -> HistoryRow | None:
        """The provider's record of one request, or ``None`` when it has none."""
        ...

    async def history_since(self, since: float, model: str) -> list[HistoryRow]:
        """Every request of ``model`` created since ``since`` (epoch)."""
        ...
