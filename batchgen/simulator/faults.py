"""Which fault, if any, the simulator injects into a request: by seeded rates or by a script.

A fault is decided per route and per request number (``submit`` #3, ``download`` #5...), from a random stream seeded
by ``(seed, route, number)``: the same seed gives the same faults in the same order, whatever the interleaving of
concurrent requests. A script ("the 3rd submit answers 503, the 5th download breaks at 40 %") takes precedence.

Routes: ``submit`` (v1 and v2 POST), ``status`` and ``result`` (v2 GETs), ``download`` (the video), ``credits``,
``upload`` (the storage's POST).

Two kinds are *opt-in* (``OPT_IN``): ``stall_download`` (a download that sends one byte per ``stall_gap_s``) and
``junk_status`` (a status or result GET answered 200 with an HTML page). A ``total_rate`` alone never draws them, so a
seed gives the same faults it gave before they existed; they come only with their own rate in ``rates``, or by script.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from batchgen.errors import UsageError


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    ``kind``: ``status`` (answer ``status`` with an error body), ``drop`` (close the connection: a submit after it
    was accepted and charged, a download after the fraction ``at``), ``short`` (a download whose body ends at ``at``
    of its ``Content-Length``), ``fail`` (the generation ends FAILED), ``slow`` (a slow first byte), ``stall`` (a
    download whose headers promise the whole file, then one byte per ``stall_gap_s``), ``junk`` (a status or result
    GET answered 200 with ``text/html``, as a proxy in the way does).
    """

    kind: str
    status: int = 0
    at: float = 0.5


# Which faults each route can suffer, under the name of their rate.
ROUTE_FAULTS: dict[str, dict[str, Fault]] = {
    "submit": {
        "rate_429": Fault("status", 429),
        "rate_500": Fault("status", 500),
        "rate_502": Fault("status", 502),
        "rate_504": Fault("status", 504),
        "drop_submit": Fault("drop"),
        "fail_job": Fault("fail"),
        "slow_first_byte": Fault("slow"),
    },
    "status": {
        "rate_500": Fault("status", 500),
        "rate_502": Fault("status", 502),
        "slow_first_byte": Fault("slow"),
        "junk_status": Fault("junk"),
    },
    "result": {"rate_500": Fault("status", 500), "rate_504": Fault("status", 504), "junk_status": Fault("junk")},
    "download": {
        "drop_download": Fault("drop"),
        "short_body": Fault("short"),
        "slow_first_byte": Fault("slow"),
        "stall_download": Fault("stall"),
    },
    "credits": {},
    "upload": {
        "rate_500": Fault("status", 500),
        "rate_502": Fault("status", 502),
        "drop_upload": Fault("drop"),
        "slow_first_byte": Fault("slow"),
    },
}
KINDS = sorted({name for faults in ROUTE_FAULTS.values() for name in faults})
# Kinds added after seeds were written down: drawn only when ``rates`` names them (see FaultPlan), never by a
# ``total_rate`` alone, so that an old seed still gives its old faults.
OPT_IN = frozenset({"stall_download", "junk_status"})
# The routes a scripted kind can happen on, for the kinds that only make sense on some.
SCRIPT_ROUTES = {"stall": ("download",), "junk": ("status", "result")}


@dataclass
class FaultPlan:
    """Fault rates, a seed, and an optional script ``{(route, n): Fault}`` (n counts from 1).

    ``rates`` name a rate (0-1) per kind (see ``KINDS``); ``total_rate``, when set instead, is the chance that a
    request suffers some fault, shared evenly among the kinds its route can suffer (a kind given the rate 0 in
    ``rates`` is left out).

    The ``OPT_IN`` kinds (``stall_download``, ``junk_status``) are never part of the ``total_rate`` share: they are
    drawn only at the rate ``rates`` gives them (beside the share, after it), or by script. So adding them changed no
    seed's sequence of faults, and ``FaultPlan(total_rate=R)`` injects exactly what it did before they existed.
    """

    rates: dict[str, float] = field(default_factory=dict)
    total_rate: float | None = None
    seed: int = 0
    script: dict[tuple[str, int], Fault] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)  # faults handed out, by kind name

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(KINDS)
        if unknown:
            raise UsageError(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
        rates = [*self.rates.values(), *([self.total_rate] if self.total_rate is not None else [])]
        if any(not 0 <= rate <= 1 for rate in rates):
            raise UsageError("fault rates are between 0 and 1")

    def next(self, route: str) -> Fault | None:
        """The fault of the next request on ``route`` (and count it)."""
        self.counts[route] += 1
        number = self.counts[route]
        if (route, number) in self.script:
            fault = self.script[(route, number)]
            self.injected[f"scripted {fault.kind}"] += 1
            return fault
        draw = random.Random(f"{self.seed}:{route}:{number}").random()
        for rate, name, fault in self._rates_of(route):
            if draw < rate:
                self.injected[name] += 1
                return fault
            draw -= rate
        return None

    def _rates_of(self, route: str) -> list[tuple[float, str, Fault]]:
        faults = ROUTE_FAULTS[route]
        choices = [(self.rates.get(name, 0.0), name, fault) for name, fault in faults.items()]
        if self.total_rate is not None:  # shared evenly, less the kinds given a rate of 0 and the opt-in ones
            kinds = [
                (name, fault) for name, fault in faults.items() if self.rates.get(name) != 0 and name not in OPT_IN
            ]
            shared = [(self.total_rate / len(kinds), name, fault) for name, fault in kinds]
            opted = [choice for choice in choices if choice[1] in OPT_IN and choice[0] > 0]
            if not opted:  # exactly the old arithmetic, so that old seeds draw the old faults
                return shared
            choices = shared + opted
        total = sum(rate for rate, _, _ in choices)
        return [(rate / total, name, fault) for rate, name, fault in choices] if total > 1 else choices


_SCRIPT_ITEM = re.compile(
    r"^(submit|status|result|download|credits|upload):(\d+)=(\d{3}|drop|short|fail|slow|stall|junk)(?:@([0-9.]+))?$"
)


def parse_script(text: str) -> dict[tuple[str, int], Fault]:
    """``submit:3=503,download:5=drop@0.4,download:6=stall,status:2=junk`` → the script of a :class:`FaultPlan`."""
    script: dict[tuple[str, int], Fault] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _SCRIPT_ITEM.match(item)
        if not match:
            raise UsageError(
                f"bad fault script item {item!r}: write ROUTE:N=WHAT[@FRACTION], "
                "e.g. submit:3=503 or download:5=drop@0.4"
            )
        route, number, what, at = match.groups()
        if route not in SCRIPT_ROUTES.get(what, (route,)):
            raise UsageError(f"bad fault script item {item!r}: {what} happens on {' or '.join(SCRIPT_ROUTES[what])}")
        fault = Fault("status", int(what)) if what.isdigit() else Fault(what)
        script[(route, int(number))] = Fault(fault.kind, fault.status, float(at) if at else 0.5)
    return script
