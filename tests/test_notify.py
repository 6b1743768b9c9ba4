"""Notifications: the events a run POSTs (end, stops, 80 % of the budget, possibly billed twice) as a loopback
webhook receives them from the real CLI, what they never carry (the key, prompts unless asked), a dead or hanging
URL that changes nothing in the run, and the event building as a table."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.errors import UsageError
from batchgen.notify import (
    Notifier,
    NotifySettings,
    RunFacts,
    build_event,
    check_notify_url,
    event_text,
    format_wall,
    origin_of,
)
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.faults import Fault, FaultPlan
from batchgen.simulator.server import SimSettings
from batchgen.store import STATES, Money
from tests.conftest import batch_manifest
from tests.runs import cli_env, run_cli_async, start_cli

PROMPT = "Clip number"  # every prompt of batch_manifest starts so


class Hooks:
    """A webhook on loopback: records every POST (path, headers, JSON body); answers ``status``, or never with
    ``hang``."""

    def __init__(self, status: int = 200, *, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        app = web.Application()
        app.router.add_post("/{path:.*}", self.hook)
        self.server = TestServer(app, host="127.0.0.1")

    async def hook(self, request: web.Request) -> web.Response:
        self.received.append((request.path, dict(request.headers), await request.read()))
        if self.hang:
            await asyncio.Event().wait()
        return web.Response(status=self.status, text="ok")

    def url(self, path: str = "services/T0/B0/secret-token") -> str:
        return str(self.server.make_url(f"/{path}"))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        bodies = [json.loads(body) for _, _, body in self.received]
        return [event for event in bodies if kind is None or event["kind"] == kind]


@pytest.fixture
async def make_hooks():
    """Start webhooks on loopback (closed after the test)."""
    started: list[Hooks] = []

    async def make(status: int = 200, *, hang: bool = False) -> Hooks:
        hooks = Hooks(status, hang=hang)
        await hooks.server.start_server()
        started.append(hooks)
        return hooks

    yield make
    for hooks in started:
        await hooks.server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_args(path: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.02", "--no-progress", *extra)


# --- the CLI against the simulator, a webhook on loopback ----------------------------------------------------


async def test_the_end_event_has_the_counts_and_money_and_no_key(
    make_sim, make_hooks, write_manifest, tmp_path
) -> None:
    sim, hooks = await make_sim(), await make_hooks()
    path, out = write_manifest(batch_manifest(3, extra="budget: 10\n")), tmp_path / "out"
    done = await run_cli_async(*_run_args(path, out, "--notify", hooks.url()), env=cli_env(sim))
    assert done.code == 0, done.stderr
    (end,) = hooks.events()
    assert (end["kind"], end["run"], end["exit_code"]) == ("finished", "batch", 0)
    assert end["counts"]["done"] == 3 and end["total"] == 3
    assert end["money"] == {"spent_usd": 1.512, "budget_usd": 10.0, "left_usd": 8.488, "possibly_billed_usd": 0.0}
    assert end["gallery"] == str((out / "index.html").absolute()) and (out / "index.html").exists()
    assert end["manifest"] == str(path)
    assert end["text"] == end["content"]
    assert end["text"].startswith("batchgen batch: finished (3 done)\n$1.512 spent of $10.000 ($8.488 left), ")
    for _, headers, body in hooks.received:  # the key went to the provider, never to a notify URL
        assert DEFAULT_KEY not in json.dumps(headers) and DEFAULT_KEY.encode() not in body
        assert not {"x-api-key", "authorization"} & {name.lower() for name in headers}
        assert PROMPT.encode() not in body


async def test_budget_warning_and_stop_events_arrive(make_sim, make_hooks, write_manifest, tmp_path) -> None:
    sim, hooks = await make_sim(), await make_hooks()
    path, out = write_manifest(batch_manifest(4, extra="budget: 1.1\n")), tmp_path / "out"  # two clips fit
    done = await run_cli_async(*_run_args(path, out, "--notify", hooks.url()), env=cli_env(sim))
    assert done.code == 3, done.stderr
    assert sorted(event["kind"] for event in hooks.events()) == ["budget", "stopped"]  # each in its own task
    (warning,), (stop,) = hooks.events("budget"), hooks.events("stopped")
    assert warning["text"].startswith("batchgen batch: 80 % of the budget is spent")
    assert (stop["reason"], stop["exit_code"], stop["counts"]["done"], stop["counts"]["skipped"]) == ("budget", 3, 2, 2)
    assert stop["money"]["spent_usd"] == 1.008 and stop["money"]["left_usd"] == pytest.approx(0.092)
    assert stop["text"].startswith("batchgen batch: stopped: the budget is spent (2 done, 2 skipped)")


async def test_a_refused_key_is_an_auth_stop(make_sim, make_hooks, write_manifest, tmp_path) -> None:
    sim, hooks = await make_sim(), await make_hooks()
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    done = await run_cli_async(*_run_args(path, out, "--notify", hooks.url()), env=cli_env(sim, key="not-the-key"))
    assert done.code == 4, done.stderr
    (stop,) = hooks.events()
    assert (stop["kind"], stop["reason"], stop["exit_code"]) == ("stopped", "auth", 4)
    assert "the provider refused the key" in stop["message"]
    assert "not-the-key" not in json.dumps(stop) and "not-the-key" not in json.dumps(hooks.received[0][1])


async def test_an_interrupted_run_says_so(make_sim, make_hooks, write_manifest, tmp_path) -> None:
    sim, hooks = await make_sim(SimSettings(latency_s=30)), await make_hooks()
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    process = await start_cli(*_run_args(path, out, "--notify", hooks.url()), env=cli_env(sim))
    async with asyncio.timeout(30):
        while "→ submitted" not in ((out / "run.log").read_text() if (out / "run.log").exists() else ""):
            await asyncio.sleep(0.02)
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130
    (stop,) = hooks.events()
    assert (stop["kind"], stop["reason"], stop["exit_code"]) == ("stopped", "interrupted", 130)


@pytest.mark.parametrize("prompts", [False, True])
async def test_possibly_billed_twice_carries_the_prompt_only_when_asked(
    make_sim, make_hooks, write_manifest, tmp_path, prompts: bool
) -> None:
    sim = await make_sim(faults=FaultPlan(script={("submit", 1): Fault("drop")}))  # accepted, its answer lost
    hooks = await make_hooks()
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    extra = (
        "--history-url",
        "off",
        "--backoff-base-s",
        "0",
        "--notify",
        hooks.url(),
        *(["--notify-prompts"] if prompts else []),
    )
    done = await run_cli_async(*_run_args(path, out, *extra), env=cli_env(sim))
    assert done.code == 0, done.stderr
    assert sorted(event["kind"] for event in hooks.events()) == ["billed_twice", "finished"]
    (twice,) = hooks.events("billed_twice")
    assert twice["job"]["id"].startswith("clip-0-") and "possibly billed twice" in twice["text"]
    assert twice["money"]["possibly_billed_usd"] == 0.504
    if prompts:
        assert twice["job"]["prompt"] == "Clip number 0 of a test batch"
        assert '"Clip number 0 of a test batch"' in twice["text"]
    else:
        assert "prompt" not in twice["job"]
        assert all(PROMPT.encode() not in body for _, _, body in hooks.received)


async def test_a_dead_notify_url_changes_nothing_and_is_logged(write_manifest, tmp_path) -> None:
    path, out = write_manifest(batch_manifest(3, extra="budget: 1.1\n")), tmp_path / "out"
    dead = f"http://127.0.0.1:{_closed_port()}/hook/secret-token"
    args = _run_args(path, out, "--simulate", "--sim-latency-s", "0", "--notify", dead)
    done = await run_cli_async(*args, env=cli_env(None))
    assert done.code == 3, done.stderr  # the budget's exit, as without notifications
    assert f"{out}: 2 done, 1 skipped; spent $1.008" in done.stdout
    log = (out / "run.log").read_text()
    for kind in ("budget", "stopped"):
        line = f"notify {dead.split('/hook')[0]}/…: the {kind} event was not delivered after 3 tries"
        assert line in log and f"batchgen: warning: {line}" in done.stderr
    assert "secret-token" not in log and "secret-token" not in done.stderr  # a webhook's path is its secret


async def test_notify_urls_are_checked_before_anything_runs(write_manifest, tmp_path) -> None:
    path = write_manifest(batch_manifest(1))
    done = await run_cli_async(*_run_args(path, tmp_path / "out", "--simulate", "--notify", "ftp://x/y"), env={})
    assert done.code == 2 and "--notify 'ftp://x/y': not an http(s) URL" in done.stderr
    assert not (tmp_path / "out").exists()


async def test_the_manifests_notify_urls_and_no_notify(make_sim, make_hooks, write_manifest, tmp_path) -> None:
    sim, hooks = await make_sim(), await make_hooks()
    path = write_manifest(batch_manifest(1, extra=f"notify: ['{hooks.url('from-manifest')}']\n"))
    done = await run_cli_async(*_run_args(path, tmp_path / "a"), env=cli_env(sim))
    assert done.code == 0 and [p for p, _, _ in hooks.received] == ["/from-manifest"]
    done = await run_cli_async(*_run_args(path, tmp_path / "b", "--no-notify"), env=cli_env(sim))
    assert done.code == 0 and len(hooks.received) == 1


# --- the Notifier against a webhook that fails -----------------------------------------------------------------


async def _deliver(urls: list[str], settings: NotifySettings, wait_s: float | None = None) -> list[str]:
    problems: list[str] = []
    async with Notifier(urls, problems.append, settings) as notifier:
        notifier.send({"kind": "finished", "text": "t"})
        await notifier.finish(wait_s)
    return problems


async def test_a_5xx_is_tried_again_and_a_4xx_is_not(make_hooks) -> None:
    failing, missing = await make_hooks(503), await make_hooks(404)
    problems = await _deliver([failing.url(), missing.url()], NotifySettings(tries=3, backoff_s=0))
    assert (len(failing.received), len(missing.received)) == (3, 1)
    assert set(problems) == {
        f"notify {origin_of(failing.url())}: the finished event was not delivered after 3 tries: HTTP 503",
        f"notify {origin_of(missing.url())}: the finished event was not delivered after 1 try: HTTP 404",
    }


async def test_a_hanging_webhook_times_out_and_the_end_abandons_it(make_hooks) -> None:
    hooks = await make_hooks(hang=True)
    problems = await _deliver([hooks.url()], NotifySettings(timeout_s=0.05, tries=2, backoff_s=0))
    assert problems == [
        f"notify {origin_of(hooks.url())}: the finished event was not delivered after 2 tries: no answer within 0.05 s"
    ]
    abandoned = await _deliver([hooks.url()], NotifySettings(timeout_s=10), wait_s=0.05)
    assert abandoned == [
        f"notify {origin_of(hooks.url())}: the finished event was abandoned (after waiting 0.05 s for it)"
    ]


# --- the event as data ---------------------------------------------------------------------------------------


def _facts(budget_micros: int | None = 10_000_000, **counts: int) -> RunFacts:
    all_counts = {state: counts.get(state, 0) for state in STATES}
    money = Money(spent_micros=2_520_000, reserved_micros=0, settled_micros=2_016_000, ambiguous_micros=504_000)
    return RunFacts("night", "/m.yaml", "/out/index.html", all_counts, money, budget_micros, 4000)


@pytest.mark.parametrize(
    ("kind", "options", "first_line"),
    [
        ("finished", {"exit_code": 0}, "batchgen night: finished (5 done)"),
        ("finished", {"exit_code": 1}, "batchgen night: finished, with failures (5 done)"),
        (
            "stopped",
            {"exit_code": 4, "reason": "credits"},
            "batchgen night: stopped: the account is out of credits (5 done)",
        ),
        (
            "stopped",
            {"exit_code": 4, "reason": "unreachable"},
            "batchgen night: stopped: the provider cannot be reached (5 done)",
        ),
        ("budget", {}, "batchgen night: 80 % of the budget is spent (5 done)"),
        ("billed_twice", {"job_id": "a-1"}, "batchgen night: a-1 submitted again, possibly billed twice (5 done)"),
    ],
)
def test_event_text_first_line(kind, options, first_line) -> None:
    assert event_text(kind, _facts(done=5), **options).split("\n")[0] == first_line


def test_event_text_second_line_money_wall_time_gallery_and_a_cut_prompt() -> None:
    second = event_text("budget", _facts(done=5)).split("\n")[1]
    assert second == "$2.520 spent of $10.000 ($7.480 left), 1 h 06 min · /out/index.html"
    assert event_text("budget", _facts(None)).split("\n")[1].startswith("$2.520 spent, 1 h 06 min")
    text = event_text("billed_twice", _facts(), job_id="a-1", prompt="word\n" * 100)
    assert text.split("\n")[1].startswith('"word word') and '…" · $2.520' in text and len(text) < 400


def test_build_event_fields_per_kind() -> None:
    end = build_event("stopped", _facts(done=5), at=0, exit_code=3, reason="budget", message="m")
    assert (end["exit_code"], end["reason"], end["message"], end["at"]) == (3, "budget", "m", "1970-01-01T00:00:00Z")
    assert end["money"] == {"spent_usd": 2.52, "budget_usd": 10.0, "left_usd": 7.48, "possibly_billed_usd": 0.504}
    twice = build_event("billed_twice", _facts(), at=0, job_id="a-1")
    assert twice["job"] == {"id": "a-1"} and "exit_code" not in twice and "reason" not in twice
    assert build_event("billed_twice", _facts(), at=0, job_id="a-1", prompt="p")["job"] == {"id": "a-1", "prompt": "p"}
    # a prompt saying @everyone pings nobody on Discord
    assert build_event("billed_twice", _facts(), at=0, job_id="a-1", prompt="@everyone")["allowed_mentions"] == {
        "parse": []
    }


@pytest.mark.parametrize("url", ["http://192.168.1.20:8080/hook", "https://hooks.slack.com/services/T/B/X"])
def test_http_and_https_urls_are_taken(url: str) -> None:
    assert check_notify_url(url) == url


@pytest.mark.parametrize("url", ["ftp://host/x", "hooks.slack.com/x", "http://", "mailto:me@example.com", ""])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError, match="not an http"):
        check_notify_url(url)


def test_origin_of_leaves_the_secret_path_out_and_wall_time_reads() -> None:
    assert origin_of("https://user:pw@hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"
    assert origin_of("http://[::1]:8080/t") == "http://[::1]:8080/…"
    assert [format_wall(s) for s in (0.4, 59, 133, 3600 * 2 + 300)] == ["0 s", "59 s", "2 min 13 s", "2 h 05 min"]


async def test_a_redirect_is_not_followed_and_is_said(make_hooks) -> None:
    from aiohttp import web

    from tests.runs import serving

    target = await make_hooks()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(target.url())

    app = web.Application()
    app.router.add_post("/hook", moved)
    async with serving(app) as url:
        problems = await _deliver([f"{url}/hook"], NotifySettings(tries=2, backoff_s=0))
    assert target.received == []  # nothing sent on to another host
    (problem,) = problems
    assert "HTTP 302, a redirect to http://127.0.0.1:" in problem and "not followed" in problem
