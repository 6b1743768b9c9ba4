"""The command line: argparse, wiring, printing and exit codes. The only module that prints or exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from batchgen import __version__
from batchgen.errors import BatchgenError, ExitCode, ManifestError, UsageError
from batchgen.jobs import Job, expand
from batchgen.manifest import MAX_JOBS, Manifest, load_manifest
from batchgen.pricing import Plan, format_usd, make_plan, micros, usd
from batchgen.simulator import DEFAULT_KEY, FaultPlan, SimSettings, parse_script, running_simulator
from batchgen.simulator.faults import KINDS

EXIT_CODES = """\
exit codes:
  0    all done
  1    some jobs failed
  2    usage or manifest error
  3    stopped by the budget with jobs left
  4    stopped by the provider (auth, insufficient credits, model gone)
  130  interrupted
"""

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run batchgen with ``argv`` (default: the process's arguments) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ManifestError as exc:
        _print_problems(exc)
        return int(exc.exit_code)
    except BatchgenError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Run batches of paid text-to-video generations (Segmind Kling 3.0) overnight, "
        "within a hard budget, resumable after any failure.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_validate(commands)
    _add_plan(commands)
    _add_simulate(commands)
    return parser


def _add_command(commands: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(handler=handler)
    return command


def _add_max_jobs(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-jobs",
        type=int,
        default=MAX_JOBS,
        metavar="N",
        help=f"refuse a manifest that expands to more than N jobs (default {MAX_JOBS:,})",
    )


def _add_validate(commands: Any) -> None:
    command = _add_command(commands, "validate", "check manifests; print every problem as FILE:LINE:COL", _validate)
    command.add_argument("manifests", nargs="+", metavar="MANIFEST", help="YAML manifest files")
    _add_max_jobs(command)


def _add_plan(commands: Any) -> None:
    command = _add_command(commands, "plan", "list the jobs of a manifest and estimate their cost", _plan)
    command.add_argument("manifest", metavar="MANIFEST", help="YAML manifest file")
    command.add_argument("--budget", type=float, metavar="USD", help="budget to plan against (default: the manifest's)")
    command.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_max_jobs(command)


def _load(path: str, max_jobs: int) -> tuple[Manifest, list[Job]]:
    manifest = load_manifest(path, max_jobs=max_jobs)
    return manifest, expand(manifest, max_jobs=max_jobs)


def _plan_of(manifest: Manifest, jobs: list[Job], budget_usd: float | None) -> Plan:
    budget = budget_usd if budget_usd is not None else manifest.budget_usd
    pairs = [(job.id, job.payload) for job in jobs]
    return make_plan(pairs, manifest.model, manifest.price, None if budget is None else micros(budget))


def _validate(args: argparse.Namespace) -> int:
    problems = []
    for path in args.manifests:
        try:
            manifest, jobs = _load(path, args.max_jobs)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        plan = _plan_of(manifest, jobs, None)
        shots = len(manifest.shots)
        print(
            f"{path}: ok: {shots} shot{'s' * (shots != 1)}, {len(jobs)} job{'s' * (len(jobs) != 1)}, "
            f"{plan.total_seconds} s of video, est. {format_usd(plan.total_micros)}"
        )
    if problems:
        raise ManifestError(problems)
    return int(ExitCode.OK)


def _plan(args: argparse.Namespace) -> int:
    manifest, jobs = _load(args.manifest, args.max_jobs)
    plan = _plan_of(manifest, jobs, args.budget)
    if args.json:
        print(json.dumps(_plan_json(manifest, plan), indent=2))
    else:
        print(_plan_table(manifest, plan))
    return int(ExitCode.OK)


def _plan_json(manifest: Manifest, plan: Plan) -> dict[str, Any]:
    return {
        "manifest": manifest.file,
        "name": manifest.name,
        "model": manifest.model.slug,
        "jobs": [
            {
                "id": row.job_id,
                "duration_s": row.spec.seconds,
                "aspect_ratio": row.spec.aspect_ratio,
                "audio": row.spec.audio,
                "voice": row.spec.voice,
                "estimate_usd": usd(row.estimate_micros),
                "fits_budget": row.fits_budget,
            }
            for row in plan.rows
        ],
        "total": {
            "jobs": len(plan.rows),
            "seconds": plan.total_seconds,
            "estimate_usd": usd(plan.total_micros),
            "budget_usd": None if plan.budget_micros is None else usd(plan.budget_micros),
            "jobs_within_budget": plan.jobs_within_budget,
        },
    }


def _plan_table(manifest: Manifest, plan: Plan) -> str:
    width = max([len("job"), *(len(row.job_id) for row in plan.rows)])
    lines = [f"{'job':<{width}}  {'secs':>4}  {'aspect':<6}  {'audio':<5}  {'estimate':>9}"]
    for row in plan.rows:
        sound = "voice" if row.spec.voice else "yes" if row.spec.audio else "no"
        mark = "" if row.fits_budget else "  over budget"
        lines.append(
            f"{row.job_id:<{width}}  {row.spec.seconds:>4}  {row.spec.aspect_ratio:<6}  {sound:<5}  "
            f"{format_usd(row.estimate_micros):>9}{mark}"
        )
    lines.append("")
    lines.append(
        f"{len(plan.rows)} jobs, {plan.total_seconds} s of video, estimated {format_usd(plan.total_micros)} "
        f"({manifest.model.title})"
    )
    if plan.budget_micros is not None:
        lines.append(f"budget {format_usd(plan.budget_micros)}: {plan.jobs_within_budget} of {len(plan.rows)} jobs fit")
    return "\n".join(lines)


def _print_problems(error: ManifestError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    count = len(error.problems)
    print(f"batchgen: {count} problem{'s' * (count != 1)} found; nothing was run", file=sys.stderr)


def _add_simulate(commands: Any) -> None:
    command = _add_command(
        commands, "simulate", "serve the built-in simulator of Segmind's API on loopback until Ctrl-C", _simulate
    )
    command.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    command.add_argument("--latency-s", type=float, default=2.0, help="generation time in seconds (default 2)")
    command.add_argument("--jitter-s", type=float, default=0.0, help="± random spread of the generation time")
    command.add_argument("--credits", type=float, default=100.0, metavar="USD", help="starting balance per key")
    command.add_argument("--rpm", type=int, default=50, help="submits per minute per key (default 50, Pro)")
    command.add_argument("--ttl-s", type=float, default=3600.0, help="how long v2 requests can be polled")
    command.add_argument("--key", action="append", metavar="KEY", help=f"an accepted API key (default {DEFAULT_KEY})")
    command.add_argument("--v1-mode", choices=["bytes", "url", "base64"], default="bytes", help="how v1 answers")
    command.add_argument("--retry-after", action="store_true", help="add Retry-After to 429s (the real API does not)")
    command.add_argument("--video-size-mb", type=float, default=0.0, help="pad every video to this size")
    command.add_argument("--fault-rate", type=float, help="chance of some fault per request, shared by the kinds")
    command.add_argument(
        "--fault", action="append", default=[], metavar="KIND=RATE", help=f"a rate per kind: {', '.join(KINDS)}"
    )
    command.add_argument("--script", default="", help="scripted faults, e.g. submit:3=503,download:5=drop@0.4")
    command.add_argument("--slow-s", type=float, default=1.0, help="delay of a slow-first-byte fault")
    command.add_argument("--seed", type=int, default=0, help="seed of faults, ids and jitter")


def _simulate(args: argparse.Namespace) -> int:
    settings = SimSettings(
        keys=tuple(args.key or [DEFAULT_KEY]),
        credits_usd=args.credits,
        rpm=args.rpm,
        latency_s=args.latency_s,
        latency_jitter_s=args.jitter_s,
        ttl_s=args.ttl_s,
        v1_mode=args.v1_mode,
        retry_after=args.retry_after,
        slow_first_byte_s=args.slow_s,
        video_size_bytes=int(args.video_size_mb * 1024 * 1024),
        seed=args.seed,
    )
    faults = FaultPlan(
        rates=dict(_kind_rate(item) for item in args.fault),
        total_rate=args.fault_rate,
        seed=args.seed,
        script=parse_script(args.script),
    )
    ledger = asyncio.run(_serve(settings, faults, args.host, args.port))
    for key, account in ledger.items():
        print(
            f"{key}: {len(account['requests'])} generation requests, {len(account['charges'])} charged, "
            f"spent ${account['spent_usd']:.4f}, balance ${account['balance_usd']:.4f}, "
            f"peak in progress {account['peak_in_progress']}, payloads paid twice {len(account['paid_twice'])}"
        )
    return int(ExitCode.OK)


def _kind_rate(item: str) -> tuple[str, float]:
    kind, _, rate = item.partition("=")
    try:
        return kind, float(rate)
    except ValueError:
        raise UsageError(f"--fault takes KIND=RATE, e.g. rate_429=0.1 (got {item!r})") from None


async def _serve(settings: SimSettings, faults: FaultPlan, host: str, port: int) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_simulator(settings, faults, host, port) as simulator:
        print(f"simulator serving {simulator.base_url} (Ctrl-C stops it and prints the ledger)")
        print(f"  export SEGMIND_BASE_URL={simulator.base_url}")
        print(f"  export SEGMIND_API_KEY={settings.keys[0]}", flush=True)
        await stop.wait()
        return simulator.ledger()
