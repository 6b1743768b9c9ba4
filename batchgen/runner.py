"""The scheduler: jobs → saved, verified videos, under a concurrency cap, a rate limit and a hard budget.

One loop, five kinds of task:

- the **submitter** takes pending jobs in manifest order; for each it waits for a free slot (concurrency), a rate
  token (submits per minute; a 429 closes the gate for everyone until its reset time) and a budget reservation
  (one transaction with the ``submitting`` mark), then POSTs in a task of its own;
- each submitted job is **polled** on its own schedule (``polling.py``: every interval, and often across the window
  in which jobs finish once the run has seen some finish; bounded parallel GETs); a job's slot is freed when the
  provider says it finished (v2 submits; in a v1 run, requests adopted from the history or left by a v2 run);
- a bounded pool of **downloaders** streams videos to ``.part``;
- v1: the POST itself waits for the video; its slot is held for the whole call;
- the **placer** takes every video received (downloaded or in a v1 answer) while its previous batch was being
  placed, checks them, makes them durable and renames them together in a thread, then marks them done in one
  transaction (group commit); file work in threads always runs to its end, even through a stop.

Stops (a signal, 401/403/404-model/410, 406, the deadline) close the submitter first; what is in flight is
finished or parked in the state, never dropped. Progress goes out through ``on_event``; this module never prints.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

from batchgen.budget import Budget
from batchgen.canonical import canonical_json
from batchgen.decisions import Decision, StopReason, attempt_outcome, match_history, stop_reason
from batchgen.errors import BatchgenError, ExitCode, JobGone, ProtocolError, StateError
from batchgen.history import HistoryRow
from batchgen.images import ImageProblem, data_url, refs_in, with_urls
from batchgen.journal import read_requests
from batchgen.models import Model, known_models, load_model
from batchgen.outputs import (
    PartFile,
    RunDir,
    RunLog,
    compare,
    hash_file,
    job_log,
    place_videos,
    probe_video,
    write_json,
)
from batchgen.polling import PollSchedule
from batchgen.pricing import clip_spec, format_dollars, format_usd
from batchgen.provider import AnswerError, Completed, Provider
from batchgen.store import AttemptRow, ImageRow, JobRow, Money, Store
from batchgen.verify import find_bad_videos

T = TypeVar("T")
RATE_WINDOW_S = 60.0
HISTORY_SKEW_S = 2.0  # the provider's clock may differ from ours by this much
HISTORY_RETRY_S = 300.0  # after the request history failed to answer, how long before it is asked again
CREDITS_RETRY_S = 1.0  # between two tries of the first call, the balance, when the host could not be reached


@dataclass(frozen=True)
class RunSettings:
    """How a run behaves; every duration in seconds, money in µUSD."""

    concurrency: int = 4
    rpm: int = 5
    budget_micros: int | None = None
    transport: str = "v2"
    max_attempts: int = 5
    poll_interval_s: float = 5.0
    poll_parallel: int = 16
    max_polls_per_s: float = 50.0  # all jobs together, between the windows where jobs finish
    downloaders: int = 4
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    deadline: float | None = None  # epoch seconds
    history_lag_s: float = 120.0  # how long a request may take to show in the provider's request history
    check_credits: bool = True
    unreachable_s: float = 120.0  # the API's host not reached for this long (connections failing): the run stops
    unreachable_pause_s: float = 5.0  # submits wait this long after a connection to the API's host failed
    credits_tries: int = 3  # the balance asked this often (a second apart) before an unreachable host stops the run
    max_unreadable_polls: int = 6  # a request's status unreadable this often in a row: asked elsewhere, or given up
    poll_give_up_s: float = 3600.0  # no usable status answer this long (5xx, silence): asked elsewhere, or given up
    heartbeat_s: float = 10.0  # how often the run tells its state it is alive (the state's owner)
    submit: bool = True  # False: only follow, download and repair what is paid (``batchgen verify --repair``)
    seed: int | None = None


# What an event is about; ``budget`` is the warning at 80 % of the budget, ``billed_twice`` a job submitted again
# while an earlier attempt of it may have been billed (both are notified: ``notify.py``).
EventKind = Literal[
    "submit",
    "submitted",
    "done",
    "retry",
    "failed",
    "skipped",
    "lost",
    "ambiguous",
    "info",
    "warning",
    "budget",
    "billed_twice",
    "stop",
]


@dataclass(frozen=True)
class Event:
    """One thing that happened, for progress displays and notifications."""

    kind: EventKind
    job_id: str | None
    message: str


@dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    exit_code: ExitCode
    counts: dict[str, int]
    money: Money
    stop_message: str | None = None
    stop_reason: StopReason | None = None  # why it stopped with jobs left (exit 3, 4, 130)


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread`` that always runs ``function`` to its end and returns its result, for file work that
    must not be dropped (a plain ``to_thread`` cancelled before its thread starts never runs: videos left unplaced,
    logs unwritten). A cancel that arrives meanwhile is delivered again at the caller's next ``await``."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    cancelled = False
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        task = asyncio.current_task()
        if task is not None:
            task.cancel()
    return work.result()


def _image_bytes(row: ImageRow) -> bytes:
    """A local image's bytes, read again at upload time: :class:`ImageProblem` when it is gone or changed since the
    jobs were made from it (they name its old content)."""
    try:
        data = Path(row.path).read_bytes()
    except OSError as exc:
        raise ImageProblem(f"the image {row.path} cannot be read any more ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != row.sha256:
        raise ImageProblem(
            f"the image {row.path} changed since its jobs were made: run the manifest again to make jobs of the new one"
        )
    return data


def backoff_s(attempt: int, base_s: float, cap_s: float, draw: float) -> float:
    """Exponential backoff with full jitter: ``draw × min(cap, base × 2^(attempt-1))``, ``draw`` in [0, 1)."""
    return draw * min(cap_s, base_s * 2.0 ** max(0, attempt - 1))


@dataclass
class _Stop:
    kind: str | None = None  # interrupt, provider, credits, error
    message: str | None = None
    reason: StopReason | None = None  # finer than kind: auth, unreachable... (or the deadline, which is no stop)
    submits_closed: bool = False
    hard: bool = False


class Slots:
    """The concurrency cap: a counter that re-attached jobs may fill past the cap, and waiters."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.used < self.cap)
            self.used += 1

    def take(self) -> None:
        """Take a slot without waiting (a re-attached job)."""
        self.used += 1

    async def release(self) -> None:
        """Give a slot back."""
        async with self._changed:
            self.used -= 1
            self._changed.notify_all()


class RateGate:
    """At most ``rpm`` submits in any 60 s, and a pause for everyone after a 429."""

    def __init__(self, rpm: int, clock: Callable[[], float]) -> None:
        self.rpm = rpm
        self.clock = clock
        self.sent: collections.deque[float] = collections.deque()
        self.paused_until = 0.0

    async def acquire(self) -> None:
        """Wait until a submit may go, and count it."""
        while True:
            now = self.clock()
            while self.sent and self.sent[0] <= now - RATE_WINDOW_S:
                self.sent.popleft()
            wait = max(
                self.paused_until - now, (self.sent[0] + RATE_WINDOW_S - now) if len(self.sent) >= self.rpm else 0
            )
            if wait <= 0:
                self.sent.append(now)
                return
            await asyncio.sleep(wait)

    def pause(self, until: float) -> None:
        """Close the gate until ``until`` (epoch seconds)."""
        self.paused_until = max(self.paused_until, until)


class _PaceStore(Protocol):
    def take_submit(self, rpm: int) -> float: ...

    def pause_submits(self, seconds: float) -> None: ...


class SharedPace(RateGate):
    """The account's pace, kept in a shared state: at most ``rpm`` submits in any 60 s by this run and every other
    run of the account together, and a 429's pause for all of them."""

    def __init__(self, store: _PaceStore, rpm: int, clock: Callable[[], float]) -> None:
        super().__init__(rpm, clock)
        self.store = store

    async def acquire(self) -> None:
        while True:
            wait = self.store.take_submit(self.rpm)
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, RATE_WINDOW_S))

    def pause(self, until: float) -> None:
        super().pause(until)
        self.store.pause_submits(until - self.clock())


class Runner:
    """Runs the jobs of one run directory to the end, or to a clean stop."""

    def __init__(
        self,
        store: Store,
        run_dir: RunDir,
        client: Provider,
        settings: RunSettings,
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.time,
        catalogue: Callable[[str], Model] = load_model,
    ) -> None:
        self.store = store
        self.catalogue = catalogue  # the models, as data: a slug → its request schema, prices, typical time
        self.run_dir = run_dir
        self.client = client
        self.settings = settings
        self.budget = Budget(settings.budget_micros)
        self.on_event = on_event or (lambda event: None)
        self.clock = clock
        self.random = random.Random(settings.seed)
        self.slots = Slots(settings.concurrency)
        shared_pace = store.shared and store.account is not None
        self.rate = (
            SharedPace(cast(_PaceStore, store), settings.rpm, clock) if shared_pace else RateGate(settings.rpm, clock)
        )
        self.stop = _Stop()
        self.posting: set[str] = set()
        self.watching: dict[str, JobRow] = {}
        self.generated: set[str] = set()  # watched jobs the provider says are generated: their slot is free already
        self.downloading: set[str] = set()
        self.checking = True  # the look at the done videos a run takes at its start is not over yet
        self.past_ttl: set[str] = set()  # submitted jobs followed through the request history
        self.polls = PollSchedule(settings.poll_interval_s, self.random, settings.max_polls_per_s)
        self._poll_limit = asyncio.Semaphore(settings.poll_parallel)
        self.warned_budget = False
        self._said_twice: set[str] = set()  # jobs said to be submitted again while possibly billed, in this run
        self._history_down_until = 0.0
        self.budget_skips = 0
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._timers: list[asyncio.TimerHandle] = []
        self._downloads: asyncio.Queue[str] = asyncio.Queue()
        self._placing: asyncio.Queue[tuple[str, PartFile, asyncio.Future[None]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._log = RunLog(run_dir.run_log)
        self._started_at = clock()
        self._prices = store.prices_seen()  # per price class, the highest cost the provider told in this state
        # The classes whose price the provider told in this run: one told in an earlier run may have changed since.
        self._confirmed: set[str] = set()
        self._above = 1.0  # the most the provider charged over an estimate, as a factor (for classes not told yet)
        self._poll_failures: dict[str, int] = {}  # unreadable status answers in a row, per watched job
        self._last_heard: dict[str, float] = {}  # per watched job, when a poll last got a usable answer
        self._history_trouble = store.get_meta("history_trouble") is not None  # status says so until it answers
        self._heard_at = clock()  # when the state last heard this process is alive (its heartbeat)
        self._uploads: dict[str, asyncio.Lock] = {}  # one upload at a time per image content
        self._upload_failures: dict[str, int] = {}  # per job, its failed uploads in a row

    # --- the whole run ------------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Run until every job is finished or the run is stopped; the state says what is left."""
        try:
            self._resume()
            await self._continue_downloads()
            for job in self.store.jobs(["lost"]):
                if self.store.mine(job):
                    await self._from_history(job.id)
            if self.settings.check_credits and self.settings.submit:
                await self._check_credits()
            workers = [asyncio.create_task(self._download_loop()) for _ in range(self.settings.downloaders)]
            workers.append(asyncio.create_task(self._place_loop()))
            workers.append(asyncio.create_task(self._heartbeat()))
            self._spawn(self._check_videos(), "check videos")
            for worker in workers:
                worker.add_done_callback(self._collect)  # a worker that dies stops the run, loudly
            try:
                await self._submitting()
                await self._drain()
            finally:
                for worker in workers:
                    worker.cancel()
                for timer in self._timers:
                    timer.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                await self._cancel_tasks()
        finally:
            self._log.close()
            self._journal_read()
        if self._failure is not None:
            raise self._failure
        return self._result()

    def request_stop(self) -> None:
        """A signal: the first stops submitting and parks what is in flight; the second stops at once."""
        if self.stop.kind == "interrupt":
            self.stop.hard = True
        self._stop("interrupt", "interrupted: what is in flight is parked in the state", "interrupted")

    def _stop(self, kind: str, message: str, reason: StopReason) -> None:
        if self.stop.kind is None or kind == "interrupt":
            self.stop.kind, self.stop.message, self.stop.reason = kind, message, reason
            self._event("stop", None, f"! {message}")
        self.stop.submits_closed = True
        self._stopped.set()
        self._notify()

    def _result(self) -> RunResult:
        counts = self.store.counts()
        money = self.store.money()
        if self.stop.kind == "interrupt":
            code = ExitCode.INTERRUPTED
        elif self.stop.kind in ("provider", "credits"):
            code = ExitCode.PROVIDER
        elif counts["skipped"] or counts["pending"]:
            code = ExitCode.BUDGET
        elif counts["failed"] or counts["lost"]:
            code = ExitCode.JOBS_FAILED
        else:
            code = ExitCode.OK
        reason = self.stop.reason or ("budget" if code == ExitCode.BUDGET else None)
        return RunResult(code, counts, money, self.stop.message, reason if code != ExitCode.OK else None)

    async def _heartbeat(self) -> None:
        """Tell the state this process still runs the directory; one that was taken over stops (a run paused for
        longer than an owner may be silent, say a laptop asleep, finds another process in charge)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            self.store.heartbeat(self.clock())
            self._heard_at = self.clock()
            if self.store.shared:
                await self._take_over()

    async def _take_over(self) -> None:
        """Jobs in flight of workers gone (their lease ran out): this worker carries them on as a resume would."""
        now = self.clock()
        taken = self.store.take_over(now)
        if not taken:
            return
        self._event("warning", None, f"! took over {len(taken)} job(s) in flight from a worker that is gone")
        self._recover(now, [job.id for job in taken if job.state == "submitting"])
        for job in taken:
            if job.state == "submitted":
                self._reattach(job, now)
            elif job.state == "downloading":
                await self._carry_on_download(job)
        self._notify()

    def _recover(self, now: float, job_ids: list[str]) -> None:
        for job_id in self.store.recover(now, job_ids):
            self._event("ambiguous", job_id, "? stopped between the submit and its answer: possibly billed")
            self._write_job_log(job_id)

    def _reattach(self, job: JobRow, now: float) -> None:
        if job.id in self.watching:
            return
        self._watch(job, now)
        self.slots.take()
        self._event("info", job.id, f"↻ re-attached to request {job.request_id}")

    def _resume(self) -> None:
        """Invariant 4: restart is just reading the state."""
        now = self.clock()
        previous = self.store.took_over
        if previous is not None:
            self._event(
                "warning", None, f"! took over this directory from a run that is gone ({previous.describe(now)})"
            )
        taken = self.store.take_over(now)  # every job in flight, or a shared state's of workers gone
        self._recover(now, [job.id for job in taken if job.state == "submitting"])
        if not self.store.shared:  # other workers' downloads and requests are theirs: only a lone owner's are here
            self._adopt_from_journal(now)
            self.run_dir.remove_stale_parts()
            self._refresh_logs()
        for job in self.store.jobs(["submitted"]):
            if self.store.mine(job):
                self._reattach(job, now)

    def _adopt_from_journal(self, now: float) -> None:
        """Requests ``run.log`` names that the state does not know: it lost rows (a damaged WAL, a restored copy). A
        job the state has as pending carries on with its request instead of being paid for again; any other is
        said, for ``reconcile``. Only the log written since the state last read it is read (a state rolled back
        reads from where it was then: what it lost is in that part)."""
        journal = read_requests(self.run_dir.run_log, int(self.store.get_meta("run_log_offset", 0)))
        known = self.store.owned_request_ids() if journal.requests else set()
        for job_id, request_id in journal.requests.items():
            if request_id in known:
                continue
            try:
                job = self.store.job(job_id)
            except StateError:
                self._event("warning", job_id, f"! run.log names request {request_id} for a job the state lacks")
                continue
            if self.store.adopt_request(job_id, request_id, self._reservation(job), self.settings.transport, now):
                self._event(
                    "warning",
                    job_id,
                    f"! the state had lost request {request_id} (run.log names it): carried on with it, not submitted "
                    "again",
                )
                self._write_job_log(job_id)
            else:
                self._event(
                    "warning",
                    job_id,
                    f"! run.log names request {request_id}, which the state lost; the job is {job.state}: "
                    "`batchgen reconcile` compares with the provider's books",
                )
        self.store.set_meta(run_log_offset=journal.end)

    def _journal_read(self) -> None:
        """The state knows every request this run logged: the next start reads the log from here."""
        if self.store.shared:
            return
        with contextlib.suppress(OSError, StateError):
            self.store.set_meta(run_log_offset=self.run_dir.run_log.stat().st_size)

    async def _continue_downloads(self) -> None:
        """Paid clips a stop caught between the provider and ``done``: placed already (a stop between the rename and
        the state), to download again (v2), or lost unless the request history has them (a v1 answer)."""
        for job in self.store.jobs(["downloading"]):
            if self.store.mine(job):
                await self._carry_on_download(job)

    async def _carry_on_download(self, job: JobRow) -> None:
        """A paid clip between the provider and ``done``: its video placed already, else downloaded again."""
        if not (self.run_dir.video(job.id).exists() and await self._adopt_placed(job)):
            await self._download_again(job)

    async def _download_again(self, job: JobRow) -> None:
        """A paid clip to download (again): from its URL, one the provider names afresh, else it is lost."""
        if job.video_url or await self._fresh_video_url(job):
            self._queue_download(job.id, 0)
        else:
            message = f"paid (request {job.request_id}), but its video is gone and no URL for it can be had"
            self.store.mark_lost(job.id, message, self.clock())
            self._event("lost", job.id, f"! lost: {message}")
            self._write_job_log(job.id)

    async def _check_videos(self) -> None:
        """Every done job's video still there, of its recorded size (a cheap look, not a hash: ``batchgen verify``
        reads them whole); one missing or changed is downloaded again, never paid again. Beside the first submits:
        the look at 100,000 files (~0.5 s) runs in a thread."""
        problems = await _in_thread(find_bad_videos, self.store.reopen, self.run_dir.root)
        for video, problem in problems:
            with contextlib.suppress(OSError):
                self.run_dir.video(video.job_id).unlink(missing_ok=True)
            self.store.redownload(video.job_id, problem, self.clock())
            self._event("warning", video.job_id, f"! {problem}: downloading it again (paid: not paid again)")
            await self._download_again(self.store.job(video.job_id))
        self.checking = False
        self._notify()

    async def _adopt_placed(self, job: JobRow) -> bool:
        """A video placed (checked and durable) by a run stopped before marking its job done: done now."""
        video = self.run_dir.video(job.id)
        try:
            probe = await asyncio.to_thread(probe_video, video)
            sha256, size = await asyncio.to_thread(hash_file, video)
        except (ProtocolError, OSError):
            with contextlib.suppress(OSError):  # a directory there: the download's placing says so, cleanly
                video.unlink(missing_ok=True)
            return False
        warnings = compare(probe, clip_spec(job.payload, self.catalogue(job.model)))
        path = str(video.relative_to(self.run_dir.root))
        self.store.mark_done_many([(job.id, path, sha256, {**probe, "bytes": size}, warnings)], self.clock())
        self._event("done", job.id, f"← done: {path}, {size:,} bytes (placed before the last stop)")
        self._write_job_log(job.id)
        return True

    def _refresh_logs(self) -> None:
        """Rewrite the logs a stop left older than their job (killed between a change and its log)."""
        since = self.store.get_meta("previous_started_at", 0.0)  # what earlier runs finished has its log
        changed = self.store.jobs(["done", "failed", "lost"], updated_since=since)
        if not changed:
            return
        written = {entry.name: entry.stat().st_mtime for entry in os.scandir(self.run_dir.logs)}
        for job in changed:
            if written.get(f"{job.id}.json", 0.0) < job.updated_at:
                self._write_job_log(job.id)

    async def _check_credits(self) -> None:
        """The balance against the estimate of what is left; the first word with the provider, so a host that cannot
        be reached at all (a typo in the base URL, no network) stops the run here, in seconds."""
        todo = sum(job.estimate_micros for job in self.store.jobs(["pending"]) if job.in_manifest)
        if not todo and not self._busy():
            return  # nothing to ask the provider for
        for tries_left in range(self.settings.credits_tries - 1, -1, -1):
            try:
                balance = await self.client.credits()
                break
            except AnswerError as exc:
                if exc.decision.cause == "unreachable" and tries_left:
                    await asyncio.sleep(CREDITS_RETRY_S)
                    continue
                if exc.decision.cause == "unreachable":
                    tries = self.settings.credits_tries
                    self._stop("provider", self._unreachable_message(exc.decision, f"{tries} tries"), "unreachable")
                elif exc.decision.action == "stop_run":
                    message = f"the provider refused the key: {exc.decision.message}"
                    self._stop("provider", message, stop_reason(exc.decision))
                else:
                    self._event("warning", None, f"! could not read the account balance: {exc.decision.message}")
                return
        if todo and balance * 1_000_000 < todo:
            self._event(
                "warning",
                None,
                f"! the balance ({format_dollars(balance)}) is below the estimate of what is left ({format_usd(todo)})",
            )

    # --- submitting ---------------------------------------------------------------------------------------

    async def _submitting(self) -> None:
        """Run the submit loop until it ends or a stop closes it (it may be waiting for a slot or a token)."""
        if not self.settings.submit:
            return
        submitter = asyncio.create_task(self._submit_loop(), name="submitter")
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait({submitter, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not submitter.done():
                submitter.cancel()
            await asyncio.gather(submitter, stopped, return_exceptions=True)
        error = None if submitter.cancelled() else submitter.exception()
        if error is not None:
            raise error  # a bug: let it surface

    async def _submit_loop(self) -> None:
        while not self.stop.submits_closed:
            held = self._held_classes()
            job = self.store.next_pending(self.clock(), held=held)
            if job is None:
                if not self._busy() and self.store.earliest_pending() is None and not self.store.others_busy():
                    return
                until = self.store.earliest_pending(held=held)
                if self.store.shared:  # other workers change the run too (and may go): look again every heartbeat
                    beat = self.clock() + self.settings.heartbeat_s
                    until = beat if until is None else min(until, beat)
                await self._wait_for_change(until)
                continue
            ambiguous = self.store.unresolved_ambiguous(job.id) if self.client.history_url else None
            if ambiguous is not None and not await self._resolve_ambiguous(job, ambiguous):
                continue
            # Images are uploaded before the attempt begins: an upload spends nothing, and a stop or a kill while
            # it goes on leaves no attempt that might have been billed.
            if await self._images_ready(job) and not self.stop.submits_closed:
                await self._submit_one(job)

    async def _resolve_ambiguous(self, job: JobRow, attempt: AttemptRow) -> bool:
        """Before paying again for a submit whose answer was lost, look for it in the provider's request history.

        Found: adopt its request id (no new POST). Not found yet: wait for the history's lag. FAILED there: it was
        not billed; submit again. Not found after the lag: submit again, reported as possibly billed twice.
        True when the job should be submitted now.
        """
        if self.clock() < self._history_down_until:
            self._event(
                "warning", job.id, "! the request history is unreachable: submitting again, possibly billed twice"
            )
            return True
        try:
            rows = await self.client.history_since(attempt.started_at - HISTORY_SKEW_S, job.model)
        except AnswerError as exc:
            # Not asked again for a while: each ambiguous job would otherwise wait for the same timeout.
            self._history_down_until = self.clock() + HISTORY_RETRY_S
            self._history_failed(job.id, exc.decision, "submitting again, possibly billed twice")
            return True
        self._history_answered()
        now = self.clock()
        found = match_history(
            rows,
            body=canonical_json(self._sent_payload(job)),
            owned=self.store.owned_request_ids(),
            started_at=attempt.started_at,
            ended_at=attempt.ended_at or now,
            now=now,
            skew_s=HISTORY_SKEW_S,
            lag_s=self.settings.history_lag_s,
        )
        if found.verdict == "wait":
            self.store.defer(job.id, attempt.started_at + self.settings.history_lag_s, now)
            self._event("info", job.id, "? not in the provider's request history yet: looking again later")
            return False
        if found.verdict == "failed":
            message = f"the provider's request history says {found.request_id} FAILED: not billed"
            self.store.close_ambiguous(
                job.id, attempt.id, billed=False, message=message, now=now, request_id=found.request_id
            )
        elif found.verdict == "resubmit":
            message = (
                f"not in the provider's request history after {self.settings.history_lag_s:g} s: "
                "submitted again, possibly billed twice"
            )
            self.store.close_ambiguous(job.id, attempt.id, billed=None, message=message, now=now)
        if found.verdict != "adopt":
            self._event("retry", job.id, f"↻ {message}")
            return True
        assert found.row is not None
        return await self._adopt(job, attempt, found.row)

    async def _adopt(self, job: JobRow, attempt: AttemptRow, row: HistoryRow) -> bool:
        now = self.clock()
        if row.status != "COMPLETED" and self.settings.transport == "v1":
            self.store.defer(job.id, now + self.settings.poll_interval_s, now)  # v1 has no status to poll
            return False
        self.store.adopt(job.id, attempt.id, row.request_id, now)
        self._event("submitted", job.id, f"→ found request {row.request_id} in the provider's history: adopted")
        if row.status == "COMPLETED" and row.generation_url:
            self.store.mark_completed(job.id, row.cost_micros, row.generation_url, now)
            self._note_price(job, row.cost_micros)
            self._settled(job.id)
            self._queue_download(job.id, 0)
        else:
            self._watch(self.store.job(job.id), now)
            self.slots.take()
        self._write_job_log(job.id)
        self._notify()
        return False

    async def _from_history(self, job_id: str) -> bool:
        """A paid clip the run lost track of (a forgotten v2 request, a v1 answer lost): fetch it by its request
        id from the history; True when it is there to download, without paying again."""
        request_id = self.store.job(job_id).request_id
        if not request_id or not self.client.history_url:
            return False
        try:
            row = await self.client.history_get(request_id)
        except AnswerError as exc:
            self._history_failed(job_id, exc.decision, f"request {request_id} stays lost for now")
            return False
        self._history_answered()
        if row is None or row.status != "COMPLETED" or not row.generation_url:
            return False
        self.store.recovered(job_id, row.generation_url, row.cost_micros, self.clock())
        self._note_price(self.store.job(job_id), row.cost_micros)
        self._event("info", job_id, f"↻ request {request_id} found in the provider's history: downloading it")
        self._queue_download(job_id, 0)
        return True

    def _history_failed(self, job_id: str, decision: Decision, consequence: str) -> None:
        """The request history could not be read: said in run.log, on stderr, and in ``status`` (the state's meta)."""
        trouble = (
            decision.message
            if decision.cause == "unreadable"
            else f"the request history could not be read: {decision.message}"
        )
        self._history_trouble = True
        self.store.set_meta(history_trouble={"at": self.clock(), "message": trouble})
        self._event("warning", job_id, f"! {trouble}: {consequence}")

    def _history_answered(self) -> None:
        if self._history_trouble:
            self._history_trouble = False
            self.store.set_meta(history_trouble=None)

    def _held_classes(self) -> list[str]:
        """Price classes whose jobs wait: while a job of a class whose price the provider has not told in this run is
        in flight (or possibly billed and not yet found), every such class waits, so that one clip at most is ever
        bought at a price nobody has seen (invariant 9; the table may be wrong: a manifest's ``pricing:``, a price
        change since an earlier run). Without a budget there is no cap to keep, and nothing waits."""
        if not self._capped():
            return []
        unconfirmed = self.store.classes_in_flight() - self._confirmed
        if unconfirmed and self.store.shared:
            self._learn_prices()
            unconfirmed -= self._confirmed
        if not unconfirmed:
            return []
        return sorted(self.store.pending_classes() - self._confirmed)

    def _capped(self) -> bool:
        """Whether a cap holds the run (its budget, or its account's): without one, no price is worth waiting for."""
        return self.budget.cap_micros is not None or self.store.capped()

    def _learn_prices(self) -> None:
        """A shared state: what the provider told the account's runs and workers (before this one began too: the
        account has one price list, and a class it knows holds nobody back)."""
        for price_class, cost in self.store.prices_seen().items():
            self._prices[price_class] = max(cost, self._prices.get(price_class, 0))
            self._confirmed.add(price_class)
        self._above = max(self._above, self.store.price_factor())  # a kind of clip not told yet reserves that much more

    def _reservation(self, job: JobRow) -> int:
        """What a submit reserves: the estimate, or the highest price the provider charged for the class if more;
        for a class not told yet, the estimate scaled by the most the provider has charged above one."""
        estimate = round(job.estimate_micros * self._above) if job.price_class not in self._prices else 0
        return max(job.estimate_micros, estimate, self._prices.get(job.price_class, 0))

    def _note_price(self, job: JobRow, cost_micros: int | None, note: str | None = None) -> None:
        """The provider told what a job cost: the class's price is known, and one above the reservation is said (as
        is a figure that is no price: ``note``)."""
        if note is not None:
            self._event("warning", job.id, f"! {note}: counted at its estimate, {format_usd(self._reservation(job))}")
        if cost_micros is None:
            return
        reserved = self._reservation(job)
        self._prices[job.price_class] = max(cost_micros, self._prices.get(job.price_class, 0))
        self._confirmed.add(job.price_class)
        if job.estimate_micros:
            self._above = max(self._above, cost_micros / job.estimate_micros)
        if cost_micros > reserved:
            self._event(
                "warning",
                job.id,
                f"! charged {format_usd(cost_micros)}, above the {format_usd(reserved)} it was estimated at: the "
                f"provider's price is above the table; jobs like it ({job.price_class}) now reserve "
                f"{format_usd(cost_micros)}",
            )

    async def _submit_one(self, job: JobRow) -> None:
        await self.slots.acquire()
        if self.store.shared and job.price_class not in self._confirmed:
            self._learn_prices()  # another run may have been told its price meanwhile: reserve that
        reservation = self._reservation(job)
        # Said before a rate token is spent on it (the account's pace is every run's: a refused job takes none).
        run_fits = self.budget.fits(self.store.money(), reservation)
        if not run_fits or not self.store.account_fits(reservation):
            await self.slots.release()
            await self._over_budget(job, reservation, None if not run_fits else self.store.refusal)
            return
        # A shared state: a price nobody has told this worker yet is bought once for the whole account at a time.
        alone = (
            job.price_class if self.store.shared and self._capped() and job.price_class not in self._confirmed else None
        )
        try:
            await self.rate.acquire()
            if self.stop.submits_closed or self._past_deadline():
                await self.slots.release()
                return
            attempt = self.budget.reserve(
                self.store, job.id, self.settings.transport, reservation, self.clock(), alone=alone
            )
        except JobGone as exc:  # another worker (or `batchgen retry`) changed it meanwhile: the next one
            await self.slots.release()
            self._event("info", job.id, f"- {exc}")
            return
        except BaseException:
            await self.slots.release()
            raise
        if attempt is None and self.store.held:
            await self.slots.release()
            await self._wait_for_change(self.clock() + self.settings.heartbeat_s)  # its class's price, first
            return
        if attempt is None:
            await self.slots.release()
            await self._over_budget(job, reservation, self.store.refusal)
            return
        self._say_billed_twice(job)
        self._event("submit", job.id, f"→ submit (attempt {job.attempts_used + 1})")
        self.posting.add(job.id)
        post = self._post_v2(job) if self.settings.transport == "v2" else self._post_v1(job)
        self._spawn(post, f"post {job.id}")

    def _say_billed_twice(self, job: JobRow) -> None:
        """A job submitted again while an earlier attempt of it may have been billed: said once a run (the row read
        again, as the request history may have cleared the mark since ``job`` was read)."""
        if (
            job.possibly_billed_twice
            and job.id not in self._said_twice
            and self.store.job(job.id).possibly_billed_twice
        ):
            self._said_twice.add(job.id)
            self._event(
                "billed_twice",
                job.id,
                "? submitted again while an earlier attempt may have been billed: possibly billed twice",
            )

    async def _over_budget(self, job: JobRow, reservation: int, refusal: str | None = None) -> None:
        money = self.store.money()
        if money.reserved_micros and self.budget.fits(Money(money.spent_micros, 0), reservation):
            # It may fit once an attempt in flight releases its reservation: wait for one to end, then ask again (a
            # shared run's reservations may be another worker's, whose ends this one does not hear: a bounded wait).
            await self._wait_for_change(self.clock() + self.settings.heartbeat_s if self.store.shared else None)
            return
        left = self.budget.left_micros(money) or 0
        reason = refusal or f"over budget: needs {format_usd(reservation)}, {format_usd(max(0, left))} left"
        self.store.mark_skipped(job.id, reason, self.clock())
        self.budget_skips += 1
        self._event("skipped", job.id, f"- skipped: {reason}")

    def _past_deadline(self) -> bool:
        deadline = self.settings.deadline
        if deadline is None:
            return False
        median = self.polls.median()
        expected = self._typical_generation_s() if median is None else median
        if self.clock() + expected <= deadline:
            return False
        if not self.store.shared:  # a worker's deadline is its own: the others submit what is left
            for job in self.store.jobs(["pending"]):
                self.store.mark_skipped(job.id, "deadline: a job started now would not finish in time", self.clock())
        self.stop.submits_closed = True  # not a stop of the run: what is in flight finishes
        self.stop.reason = self.stop.reason or "deadline"
        self._event("stop", None, "stopped submitting: the deadline is near")
        return True

    def _typical_generation_s(self) -> float:
        """The longest typical generation time of the models of the jobs still to submit."""
        models = {job.model for job in self.store.jobs(["pending"])}
        return max(
            (self.catalogue(slug).typical_generation_s for slug in models if slug in known_models()), default=0.0
        )

    def _sent_payload(self, job: JobRow) -> dict[str, Any]:
        """The payload as the provider received it: each local image as the URL the storage gave it."""
        sent: dict[str, Any] = with_urls(job.payload, self.catalogue(job.model).request_schema, self.store.image_url)
        return sent

    async def _images_ready(self, job: JobRow) -> bool:
        """Upload the job's local images the storage does not have yet (each content once); whether the job can be
        submitted now. A failed upload uses no attempt: the job waits and tries again (up to ``max_attempts``
        times, then fails, nothing spent), or the run stops when the storage refuses the key."""
        try:
            for sha in refs_in(job.payload, self.catalogue(job.model).request_schema):
                await self._upload(job, sha)
        except AnswerError as exc:
            self._upload_failed(job, exc.decision)
            return False
        self._upload_failures.pop(job.id, None)
        return True

    async def _upload(self, job: JobRow, sha: str) -> None:
        """Upload the image ``sha`` unless the state has its URL already (its bytes read again and checked)."""
        async with self._uploads.setdefault(sha, asyncio.Lock()):
            row = self.store.image(sha)
            if row is not None and row.url:
                return
            if row is None:
                raise AnswerError(Decision("fail_job", "no", f"the state has no local image {sha[:12]}: run again"))
            try:
                data = await _in_thread(_image_bytes, row)
            except ImageProblem as exc:
                raise AnswerError(Decision("fail_job", "no", str(exc))) from None
            url = await self.client.upload(data_url(data, row.mime))
            self.store.image_uploaded(sha, url, self.clock())
            self._event("info", job.id, f"↑ uploaded {row.path} ({row.size:,} bytes): {url}")

    def _upload_failed(self, job: JobRow, decision: Decision) -> None:
        now = self.clock()
        where = f"the storage at {self.client.upload_host}"
        if decision.action == "stop_run":
            self._stop("provider", f"{where} refused the upload: {decision.message}", stop_reason(decision))
            return
        tries = self._upload_failures[job.id] = self._upload_failures.get(job.id, 0) + 1
        if decision.action == "fail_job" or tries >= self.settings.max_attempts:
            times = "" if decision.action == "fail_job" else f" after {tries} tries"
            reason = f"its image could not be uploaded to {where}{times} (nothing was spent): {decision.message}"
            self.store.mark_failed_unsent(job.id, reason, now)
            self._event("failed", job.id, f"! failed: {reason}")
        else:
            wait = backoff_s(tries, self.settings.backoff_base_s, 60.0, self.random.random())
            until = max(now + wait, decision.pause_until or 0.0)
            self.store.defer(job.id, until, now)
            self._event("retry", job.id, f"↻ upload to {where} failed, again in {until - now:.1f}s: {decision.message}")
        self._write_job_log(job.id)
        self._notify()

    def _hold_lease(self) -> None:
        """Before a POST of a shared state: the job is surely still this worker's. Heard from within two heartbeats
        (a third of the lease) it is; else (the process was paused: a laptop asleep, a stopped process) a heartbeat
        now renews the lease, or says another worker took the job over, and this one stops without sending."""
        if self.store.shared and self.clock() - self._heard_at > 2 * self.settings.heartbeat_s:
            self.store.heartbeat(self.clock())
            self._heard_at = self.clock()

    async def _post_v2(self, job: JobRow) -> None:
        self._hold_lease()
        try:
            request_id = await self.client.submit(job.model, self._sent_payload(job))
        except AnswerError as exc:
            self.posting.discard(job.id)
            await self._attempt_failed(job, exc.decision)
            return
        now = self.clock()
        self.store.mark_submitted(job.id, request_id, now)
        self.posting.discard(job.id)
        self._watch(self.store.job(job.id), self.polls.next_at(now, now, len(self.watching) + 1))
        self._event("submitted", job.id, f"→ submitted: request {request_id}")
        self._notify()

    async def _post_v1(self, job: JobRow) -> None:
        self._hold_lease()
        part = PartFile(self.run_dir.video(job.id))
        billed: list[Completed] = []
        posted_at = self.clock()

        def on_billed(completed: Completed) -> None:
            now = self.clock()
            self.store.mark_billed_v1(job.id, completed.request_id or "", completed.cost_micros, now)
            if completed.request_id:
                self._event("submitted", job.id, f"→ billed: request {completed.request_id}")
            self._note_price(job, completed.cost_micros, completed.cost_note)
            self.polls.observe(now - posted_at)  # the answer's head: the generation is over
            billed.append(completed)

        try:
            completed = await self.client.generate(job.model, self._sent_payload(job), part, on_billed)
        except AnswerError as exc:
            part.discard()
            await self._v1_answered(job)
            if billed:
                await self._paid_but_unreadable(job, exc.decision.message)
            else:
                await self._attempt_failed(job, exc.decision, slot_held=False)
            return
        except BaseException:
            part.discard()
            await self._v1_answered(job)
            raise
        await self._v1_answered(job)
        self._settled(job.id)
        if completed.video_url:
            part.discard()
            self.store.set_video_url(job.id, completed.video_url, self.clock())
            self._queue_download(job.id, 0)
            return
        self.downloading.add(job.id)
        try:
            await self._finish_video(job.id, part)
        except ProtocolError as exc:
            await self._paid_but_unreadable(job, str(exc))
        finally:
            self.downloading.discard(job.id)
            self._notify()

    async def _v1_answered(self, job: JobRow) -> None:
        """The v1 POST is over (answered or not): its slot is free."""
        self.posting.discard(job.id)
        await self.slots.release()
        self._notify()

    async def _paid_but_unreadable(self, job: JobRow, message: str) -> None:
        """A v1 answer billed but broken mid-body: fetched again through the request history, else lost."""
        reason = f"paid (request {self.store.job(job.id).request_id}), but the video in the answer broke: {message}"
        self.store.mark_lost(job.id, reason, self.clock())
        if not await self._from_history(job.id):
            self._event("lost", job.id, f"! lost: {reason}")
        self._write_job_log(job.id)
        self._notify()

    async def _attempt_failed(self, job: JobRow, decision: Decision, *, slot_held: bool = True) -> None:
        """End the open attempt as ``attempt_outcome`` says, and free its slot."""
        now = self.clock()
        current = self.store.job(job.id)
        out = attempt_outcome(decision, current.attempts_used, self.settings.max_attempts, current.request_id)
        if out.pause_until is not None:
            self.rate.pause(out.pause_until)
        if out.unreachable:  # nothing was sent: no attempt of the job's, the host's outage
            self.rate.pause(now + self.settings.unreachable_pause_s)
            self._unreachable(decision)
        if out.stop is not None:
            self._stop(out.stop, f"stopped by the provider: {decision.message}", stop_reason(decision))
        wait = 0.0
        if out.backoff:
            draw = self.random.random()
            wait = backoff_s(current.attempts_used, self.settings.backoff_base_s, self.settings.backoff_cap_s, draw)
        not_before = max(now + wait, out.pause_until or 0.0)
        self.store.end_attempt(
            job.id,
            money=out.money,
            outcome=out.outcome,
            next_state=out.next_state,
            status=decision.status,
            message=out.message,
            backoff_s=wait if out.next_state == "pending" else None,
            not_before=not_before if out.next_state == "pending" else 0.0,
            refund_attempt=out.refund,
            now=now,
        )
        if out.next_state == "lost":
            if not await self._from_history(job.id):
                self._event("lost", job.id, f"! lost: request {current.request_id}")
        elif out.next_state == "failed":
            self._event("failed", job.id, f"! failed: {out.message}")
        else:
            glyph = "?" if out.money == "ambiguous" else "↻"
            again = max(not_before, self.rate.paused_until) - now
            self._event("retry", job.id, f"{glyph} retry in {again:.1f}s: {decision.message}")
        if slot_held:
            await self.slots.release()
        self._write_job_log(job.id)
        self._notify()

    def _unreachable(self, decision: Decision) -> None:
        """A connection to the API's host failed. When it has not answered anything for ``unreachable_s`` (since the
        run began, if it never did), the run stops, once, naming the host: not N attempts per job."""
        now = self.clock()
        since = self.client.reached_at if self.client.reached_at is not None else self._started_at
        if now - since >= self.settings.unreachable_s:
            self._stop("provider", self._unreachable_message(decision, f"for {now - since:.0f} s"), "unreachable")

    def _unreachable_message(self, decision: Decision, how_long: str) -> str:
        return (
            f"cannot reach the provider at {self.client.host} ({how_long}; last: {decision.message}): check the base "
            "URL and the network, then run again to resume"
        )

    # --- polling (v2) -------------------------------------------------------------------------------------

    def _watch(self, job: JobRow, first_poll_at: float) -> None:
        """Follow a submitted job until it finishes, in a small task of its own on the job's own poll schedule
        (every run polls: a v1 run may hold submitted requests too, adopted from the history or left by a v2 run)."""
        self.watching[job.id] = job
        self._spawn(self._follow(job.id, first_poll_at), f"poll {job.id}")

    async def _follow(self, job_id: str, at: float) -> None:
        while True:
            await asyncio.sleep(max(0.0, at - self.clock()))
            job = self.watching.get(job_id)
            if job is None:
                return
            await self._poll_one(job, self._poll_limit)
            if job_id not in self.watching:
                return
            now = self.clock()
            at = self.polls.next_at(job.submitted_at or now, now, len(self.watching))

    async def _poll_one(self, job: JobRow, limit: asyncio.Semaphore) -> None:
        async with limit:
            try:
                if job.id in self.past_ttl:
                    completed = await self._poll_history(job)
                else:
                    completed = None
                    if await self.client.status(job.request_id or "") == "COMPLETED":
                        await self._generation_over(job)
                        completed = await self.client.result(job.request_id or "")
            except AnswerError as exc:
                await self._poll_failed(job, exc.decision)
                return
        self._poll_failures.pop(job.id, None)
        self._last_heard[job.id] = self.clock()
        if completed is None:
            return
        self.past_ttl.discard(job.id)
        await self._generation_over(job)
        del self.watching[job.id]
        self.generated.discard(job.id)
        now = self.clock()
        self.store.mark_completed(job.id, completed.cost_micros, completed.video_url, now)
        self._note_price(job, completed.cost_micros, completed.cost_note)
        self._settled(job.id)
        if completed.video_url is None:
            self.store.download_failed(job.id, "the provider completed the job but named no video URL", 0, True, now)
            self._event("failed", job.id, "! failed: completed without a video URL")
            self._write_job_log(job.id)
        else:
            self._queue_download(job.id, 0)
        self._notify()

    async def _generation_over(self, job: JobRow) -> None:
        """The provider says a watched job is generated: its slot is free for the next submit at once (the result's
        GET that follows is no generation), and its duration tells the poll schedule when jobs finish. Once a job."""
        if job.id in self.generated:
            return
        self.generated.add(job.id)
        if job.submitted_at is not None:
            self.polls.observe(self.clock() - job.submitted_at)
        await self.slots.release()

    async def _poll_failed(self, job: JobRow, decision: Decision) -> None:
        """A poll that did not say COMPLETED: a FAILED generation or a forgotten request ends the attempt;
        anything else (no answer, 5xx, 429, junk) leaves the request with the provider, asked again at its next poll."""
        if decision.action == "stop_run":
            self._stop("provider", f"stopped by the provider: {decision.message}", stop_reason(decision))
        elif decision.action == "lost" and self.client.history_url and job.id not in self.past_ttl:
            # Past its TTL the status endpoints forget a request; the history keeps it: follow it there.
            self.past_ttl.add(job.id)
            self._event("info", job.id, f"↻ request {job.request_id} past its TTL: following it in the history")
        elif decision.action in ("lost", "fail_job") or decision.status == 422:
            await self._stop_watching(job, decision)
        elif decision.cause == "unreachable" and job.id not in self.past_ttl:
            self._unreachable(decision)  # the API host's outage, not this request's: the run stops if it lasts
        else:
            await self._poll_trouble(job, decision)

    async def _stop_watching(self, job: JobRow, decision: Decision) -> None:
        """A watched job's attempt ends as ``decision`` says."""
        self.watching.pop(job.id, None)
        slot_held = job.id not in self.generated
        self.generated.discard(job.id)
        await self._attempt_failed(job, decision, slot_held=slot_held)

    async def _poll_trouble(self, job: JobRow, decision: Decision) -> None:
        """A poll got no usable answer: asked again at the next poll, the problem shown by ``status``. After
        ``max_unreadable_polls`` answers in a row it cannot read (junk, a host without the key), or nothing usable for
        ``poll_give_up_s`` (5xx, silence: an outage of the status endpoint is waited out that long), the request is
        followed in the request history instead; when that cannot tell either, the attempt ends ``lost``, the answer
        quoted (only ``retry --lost`` pays again)."""
        now = self.clock()
        failures = self._poll_failures.get(job.id, 0) + (decision.cause == "unreadable")
        self._poll_failures[job.id] = failures
        silent_s = now - self._last_heard.setdefault(job.id, now)
        where = "request history" if job.id in self.past_ttl else "status endpoint"
        if failures < self.settings.max_unreadable_polls and silent_s < self.settings.poll_give_up_s:
            self.store.note_problem(job.id, f"the {where}: {decision.message}", now)
            return
        self._poll_failures.pop(job.id, None)
        self._last_heard[job.id] = now
        trouble = (
            f"the {where} could not be read {failures} times in a row (last: {decision.message})"
            if failures >= self.settings.max_unreadable_polls
            else f"the {where} gave no usable answer for {silent_s:.0f} s (last: {decision.message})"
        )
        if self.client.history_url and job.id not in self.past_ttl:
            self.past_ttl.add(job.id)
            self._event("warning", job.id, f"! request {job.request_id}: {trouble}: following it in the history")
            return
        lost = Decision("lost", "unknown", f"gave up on request {job.request_id}: {trouble}", decision.status)
        await self._stop_watching(job, lost)

    async def _poll_history(self, job: JobRow) -> Completed | None:
        """A request past the status endpoints' TTL, followed by its row in the request history."""
        row = await self.client.history_get(job.request_id or "")
        if row is None:
            raise AnswerError(Decision("lost", "unknown", "the request history does not know it either", 404))
        if row.status == "FAILED":
            raise AnswerError(Decision("retry", "no", "the request history says it FAILED", 422))
        if row.status != "COMPLETED":
            return None
        return Completed(row.request_id, row.generation_url, row.cost_micros)

    # --- downloading --------------------------------------------------------------------------------------

    def _queue_download(self, job_id: str, delay_s: float) -> None:
        self.downloading.add(job_id)
        if delay_s <= 0:
            self._downloads.put_nowait(job_id)
        else:
            self._timers.append(asyncio.get_running_loop().call_later(delay_s, self._downloads.put_nowait, job_id))

    async def _download_loop(self) -> None:
        while True:
            job_id = await self._downloads.get()
            try:
                await self._download(job_id)
            finally:
                self._notify()

    async def _download(self, job_id: str) -> None:
        job = self.store.job(job_id)
        url = job.video_url or ""
        if job.download_failures:
            url = await self._fresh_video_url(job) or url
        part = PartFile(self.run_dir.video(job_id))
        try:
            await self.client.download(url, part)
        except AnswerError as exc:
            part.discard()
            self._download_failed(job, exc.decision.message, permanent=exc.decision.action == "fail_job")
            return
        except BaseException:
            part.discard()
            raise
        try:
            await self._finish_video(job_id, part)
        except ProtocolError as exc:
            self._download_failed(job, str(exc), permanent=False)

    async def _fresh_video_url(self, job: JobRow) -> str | None:
        """Where the provider says a paid clip is now, asked again after a failed download: a video URL can expire
        (signed URLs), or name a process that is gone (a simulator of an earlier run). ``None`` when it cannot say."""
        if not job.request_id:
            return None
        url = None
        with contextlib.suppress(AnswerError):
            completed = await self.client.result(job.request_id)
            url = completed.video_url if completed else None
        if url is None and self.client.history_url:
            with contextlib.suppress(AnswerError):
                row = await self.client.history_get(job.request_id)
                url = row.generation_url if row else None
        if url is not None and url != job.video_url:
            self.store.set_video_url(job.id, url, self.clock())
        return url

    async def _finish_video(self, job_id: str, part: PartFile) -> None:
        """Hand a received video to the placer; return once it is checked, placed and its job done (invariant 3).
        ``ProtocolError`` when it is no video."""
        part.close()
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._placing.put_nowait((job_id, part, finished))
        await finished

    async def _place_loop(self) -> None:
        """Group commit: the videos received while one batch is being placed make the next batch, placed with one
        sync (off the loop) and marked done in one transaction."""
        while True:
            batch = [await self._placing.get()]
            while not self._placing.empty():
                batch.append(self._placing.get_nowait())
            try:
                results = await _in_thread(place_videos, [part for _, part, _ in batch], self.run_dir.posters)
            except BaseException as exc:
                for _, _, finished in batch:
                    if finished.done():  # its waiter was cancelled
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        finished.cancel()
                    else:
                        finished.set_exception(exc)
                raise
            placed = []
            for (job_id, part, finished), result in zip(batch, results, strict=True):
                if isinstance(result, ProtocolError):
                    if not finished.done():
                        finished.set_exception(result)
                    continue
                job = self.store.job(job_id)
                warnings = compare(result, clip_spec(job.payload, self.catalogue(job.model)))
                path = str(part.final.relative_to(self.run_dir.root))
                placed.append((job_id, path, part, result, warnings, finished))
            self.store.mark_done_many(
                [
                    (job_id, path, part.sha256, {**probe, "bytes": part.size}, w)
                    for job_id, path, part, probe, w, _ in placed
                ],
                self.clock(),
            )
            for job_id, path, part, _, warnings, finished in placed:
                self.downloading.discard(job_id)
                note = f" ({'; '.join(warnings)})" if warnings else ""
                self._event("done", job_id, f"← done: {path}, {part.size:,} bytes{note}")
                if not finished.done():
                    finished.set_result(None)
            await self._write_job_logs([job_id for job_id, *_ in placed])

    def _download_failed(self, job: JobRow, message: str, *, permanent: bool) -> None:
        failures = job.download_failures + 1
        give_up = permanent or failures >= self.settings.max_attempts
        wait = backoff_s(failures, self.settings.backoff_base_s, self.settings.backoff_cap_s, self.random.random())
        self.store.download_failed(job.id, message, self.clock() + wait, give_up, self.clock())
        if give_up:
            self.downloading.discard(job.id)
            self._event("failed", job.id, f"! failed: the paid clip could not be downloaded: {message}")
            self._write_job_log(job.id)
        else:
            self._event("retry", job.id, f"↻ download again in {wait:.1f}s: {message}")
            self._queue_download(job.id, wait)

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self.posting or self.watching or self.downloading or self.checking)

    async def _drain(self) -> None:
        """Wait for what is in flight: all of it normally; only the POSTs under way after a stop."""
        while True:
            parked = self.stop.kind in ("interrupt", "provider")
            if not (self.posting if parked else self._busy()) or self.stop.hard:
                return
            await self._wait_for_change(None)

    def _notify(self) -> None:
        """Wake every task waiting for a change; later waiters wait for the next one."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self, until: float | None) -> None:
        """Sleep until the next change (or until ``until``, epoch seconds); callers check their condition first."""
        changed = self._changed
        timeout = None if until is None else max(0.0, until - self.clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._collect)

    def _collect(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._failure is None:
            self._failure = error
            message = f"stopped: {error}" if isinstance(error, BatchgenError) else f"stopped by a bug: {error!r}"
            self._stop("error", message, "error")  # run() raises the error itself once everything is parked
            self.stop.hard = True

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _settled(self, job_id: str) -> None:
        if not self.warned_budget and self.budget.past_warning(self.store.money()):
            self.warned_budget = True
            spent = format_usd(self.store.money().spent_micros)
            self._event(
                "budget", None, f"! 80 % of the budget is spent ({spent} of {format_usd(self.budget.cap_micros or 0)})"
            )

    def _write_job_log(self, job_id: str) -> None:
        log = job_log(self.store.job(job_id), self.store.attempts(job_id))
        write_json(self.run_dir.logs / f"{job_id}.json", log, durable=False)

    async def _write_job_logs(self, job_ids: list[str]) -> None:
        """Several jobs' logs, read here and written off the loop."""
        logs = [(job_id, job_log(self.store.job(job_id), self.store.attempts(job_id))) for job_id in job_ids]

        def write() -> None:
            for job_id, log in logs:
                write_json(self.run_dir.logs / f"{job_id}.json", log, durable=False)

        await _in_thread(write)

    def _event(self, kind: EventKind, job_id: str | None, message: str) -> None:
        """One state change: a line of run.log (glyphs → ← ↻ ! ?), and the progress callback."""
        self._log.line(job_id or "-", message)
        self.on_event(Event(kind, job_id, message))
